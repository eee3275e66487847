"""What ``upload_image`` sends to ComfyUI: checked bytes under a safe name.

The bytes come either from a local file inside the folders the user allowed (vetted by
``outputs.check_readable_file``) or from the client as base64. Either way they must
decode as an image and fit under the size limit, and the name ComfyUI gets is a plain
file name whose extension matches the image's real format. Errors are ``ValueError``s
whose message says what to change (``UploadInputError``, or those of ``outputs`` and
``images``). Nothing here imports MCP or does network I/O.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from comfy_mcp import images, outputs

__all__ = [
    "UploadInputError",
    "decode_base64",
    "prepare",
    "read_allowed_file",
    "reply_name",
    "upload_name",
]

_MAX_NAME_BYTES = 200
_DATA_URL = re.compile(r"^data:[^,]{0,100};base64,", re.IGNORECASE)
# Characters Windows refuses in file names (ComfyUI may run there), beside separators.
_WINDOWS_RESERVED = re.compile(r'[<>:"|?*]')
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)]
)
_SUFFIXES = {
    "png": (".png",), "jpeg": (".jpg", ".jpeg"), "mpo": (".jpg", ".jpeg"),
    "webp": (".webp",), "gif": (".gif",), "bmp": (".bmp",), "tiff": (".tif", ".tiff"),
    "avif": (".avif",),
}
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class UploadInputError(ValueError):
    """Raised when the upload arguments or bytes cannot be used; the message says why."""


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Decode client-sent image bytes: plain or URL-safe base64, or a ``data:`` URL.

    Whitespace (line breaks every 76 characters) is ignored. The encoded length is
    checked against ``max_bytes`` before anything is decoded.
    """
    compact = "".join(_DATA_URL.sub("", text.strip(), count=1).split())
    if len(compact) > (max_bytes + 2) // 3 * 4 + 3:
        raise UploadInputError(
            f"data is over the upload limit of {_size(max_bytes)} (about "
            f"{_size(len(compact) * 3 // 4)} once decoded); send a smaller or compressed "
            "image or raise COMFY_MCP_UPLOAD_MAX_MB"
        )
    if not compact:
        raise UploadInputError("data is empty; send the image bytes as base64")
    alphabet = b"-_" if ("-" in compact or "_" in compact) else None
    padded = compact + "=" * (-len(compact) % 4)
    try:
        blob = base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise UploadInputError(
            "data is not valid base64; send the image file's bytes base64-encoded "
            "(a 'data:image/png;base64,...' URL also works)"
        ) from None
    if len(blob) > max_bytes:
        raise UploadInputError(
            f"data decodes to {_size(len(blob))}, over the upload limit of "
            f"{_size(max_bytes)}; send a smaller or compressed image or raise "
            "COMFY_MCP_UPLOAD_MAX_MB"
        )
    return blob


def read_allowed_file(path: str, roots: Sequence[Path], max_bytes: int) -> tuple[bytes, str]:
    """The bytes and base name of a local file inside ``roots``, at most ``max_bytes``.

    Containment, symlinks, file type and size are checked by
    ``outputs.check_readable_file``; the file is then opened without following a link
    that appeared since, and read no further than the limit.
    """
    try:
        resolved = outputs.check_readable_file(path, roots, max_bytes=max_bytes)
    except outputs.InputFileError:
        raise
    except (OSError, RuntimeError) as exc:  # a name too long, an unknown ~user
        raise UploadInputError(f"{_short(path)} cannot be used as a path ({_why(exc)})") from None
    try:
        fd = os.open(resolved, _OPEN_FLAGS)
    except OSError as exc:
        raise outputs.InputFileError(f"{_short(path)} cannot be read ({_why(exc)})") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise outputs.NotAFileError(f"{_short(path)} is not a regular file")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise outputs.InputTooLargeError(
            f"{_short(path)} is over the upload limit of {_size(max_bytes)}; make it smaller "
            "or raise COMFY_MCP_UPLOAD_MAX_MB"
        )
    return data, resolved.name


def upload_name(requested: str | None, data: bytes) -> str:
    """A plain file name for ComfyUI, checked against the image the bytes hold.

    Raises ``images.ImageError`` when ``data`` is not an image. Folders, control and
    invisible characters, characters Windows refuses and leading dots are removed; the
    extension is made to match the real format (``photo.png`` holding a JPEG is sent as
    ``photo.jpg``); an empty result becomes ``upload``.
    """
    kind, _, _ = images.probe(data)
    name = (requested or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if char.isprintable())
    name = _WINDOWS_RESERVED.sub("_", name).strip().lstrip(".").rstrip(". ")
    suffixes = _SUFFIXES.get(kind, (f".{kind}",))
    stem, suffix = _split_suffix(name)
    if suffix.lower() not in suffixes:
        stem = name if suffix.lower() not in _ALL_SUFFIXES else stem
        suffix = suffixes[0]
    stem = _trim(stem, _MAX_NAME_BYTES - len(suffix)) or "upload"
    if stem.split(".")[0].rstrip().upper() in _WINDOWS_DEVICES:
        stem = "_" + stem
    return stem + suffix


def reply_name(reply: Any) -> str:
    """The LoadImage value for ComfyUI's upload reply: ``subfolder/name`` or ``name``.

    The name ComfyUI chose is used, never ours: it renames on a collision (B29).
    """
    if not isinstance(reply, Mapping) or not isinstance(reply.get("name"), str) or not (
        reply["name"]
    ):
        raise UploadInputError(
            f"ComfyUI accepted the upload but its reply names no file ({str(reply)[:200]}); "
            "check that COMFYUI_URL points at ComfyUI itself"
        )
    name = reply["name"]
    subfolder = reply.get("subfolder")
    if isinstance(subfolder, str) and subfolder.strip("/\\"):
        return f"{subfolder.strip('/')}/{name}"
    return name


_ALL_SUFFIXES = frozenset(s for group in _SUFFIXES.values() for s in group)


def _split_suffix(name: str) -> tuple[str, str]:
    suffix = PurePosixPath(name).suffix if name else ""
    return (name[: -len(suffix)], suffix) if suffix else (name, "")


def _trim(text: str, max_bytes: int) -> str:
    return text.encode("utf-8", "ignore")[:max_bytes].decode("utf-8", "ignore").strip()


def _short(path: str) -> str:
    return repr(path if len(path) <= 120 else path[:117] + "...")


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count:,} bytes"


def prepare(
    path: str | None,
    data: str | None,
    filename: str | None,
    *,
    roots: Sequence[Path],
    max_bytes: int,
) -> tuple[bytes, str]:
    """The bytes and name to upload, from exactly one of ``path`` or base64 ``data``."""
    if bool(path) == bool(data):
        raise UploadInputError(
            "give exactly one of path (a local image file) or data (the image bytes, base64)"
        )
    if data:
        blob, name = decode_base64(data, max_bytes), filename
    else:
        assert path is not None
        blob, local_name = read_allowed_file(path, roots, max_bytes)
        name = filename or local_name
    return blob, upload_name(name, blob)
