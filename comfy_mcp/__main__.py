from comfy_mcp.cli import main

main()
