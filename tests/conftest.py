from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# -- the real CPU ComfyUI (scripts/comfyui_cpu.py) ---------------------------------------------

import sys  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import comfyui_cpu  # noqa: E402

from comfy_mcp.config import Settings  # noqa: E402

CHECKPOINT = "tiny-sd15-random.safetensors"


@pytest.fixture(scope="session")
def comfy_install() -> comfyui_cpu.Install:
    """ComfyUI 0.3.75 in a cached venv, with a generated random-weight checkpoint."""
    return comfyui_cpu.ensure_installed()


@pytest.fixture(scope="session")
def comfyui(
    comfy_install: comfyui_cpu.Install, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[comfyui_cpu.Server]:
    """A real ComfyUI server on a free loopback port, for the whole test session."""
    data_dir = tmp_path_factory.mktemp("comfyui-data")
    with comfyui_cpu.start_server(comfy_install, data_dir=data_dir) as server:
        yield server


@pytest.fixture
def real_settings(comfyui: comfyui_cpu.Server, tmp_path: Path) -> Settings:
    return Settings(comfyui_url=comfyui.url, output_dir=tmp_path / "out", wait_limit=120,
                    db_path=tmp_path / "history.sqlite3")


@pytest.fixture
async def real_client(real_settings: Settings) -> AsyncIterator[object]:
    """An MCP client talking in memory to comfy-mcp, which talks to the real ComfyUI."""
    from mcp import Client

    from comfy_mcp.server import build_server

    async with Client(build_server(real_settings), raise_exceptions=True) as client:
        yield client
