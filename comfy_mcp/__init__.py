"""comfy-mcp: an MCP server that lets an AI assistant make images with ComfyUI."""

__version__ = "0.1.0"
