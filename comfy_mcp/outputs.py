"""Save ComfyUI outputs into the user's folder, and vet local files before upload.

Every ``filename`` and ``subfolder`` that ComfyUI reports is treated as untrusted: a
hostile or buggy server must not make us write outside the output folder, follow a
symlink out of it, or replace a file the user already has. Paths are checked with the
same rules on every OS, so a Windows server's ``video\\ltx`` maps to ``video/ltx``
everywhere, and names Windows cannot hold are refused everywhere.

Errors, all ``ValueError``::

    OutputPathError
      UnsafePathError              a name would leave its folder or cannot be a file name
      OutputConflictError          no free numbered name was found for a new file
      InputFileError               a file asked for upload cannot be used
        InputNotFoundError         the file does not exist
        NotAFileError              it exists but is a folder, device or socket
        OutsideAllowedFoldersError it lies outside every allowed folder
        InputTooLargeError         it is bigger than the limit
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

__all__ = [
    "MAX_COMPONENT_BYTES",
    "InputFileError",
    "InputNotFoundError",
    "InputTooLargeError",
    "NotAFileError",
    "OutputConflictError",
    "OutputPathError",
    "OutsideAllowedFoldersError",
    "UnsafePathError",
    "check_readable_file",
    "safe_relative_path",
    "save_output",
]

logger = logging.getLogger(__name__)

MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 8
# What a generation may put on the user's disk: media, plus plain data some nodes write.
# Anything else (scripts, CLAUDE.md, configs) stays on the ComfyUI server.
SAVED_SUFFIXES = frozenset(
    ".png .jpg .jpeg .webp .gif .bmp .tif .tiff .avif .apng"
    " .mp4 .webm .mov .mkv .avi .m4v .flac .mp3 .wav .ogg .opus .m4a .aac"
    " .glb .gltf .obj .ply .stl .latent .txt .json .csv".split()
)
# Unicode categories that hide or reorder what a name shows: format (bidi overrides,
# zero-width), surrogates, private use, unassigned.
_INVISIBLE = frozenset({"Cf", "Cs", "Co", "Cn"})
"""Longest file or folder name (UTF-8 bytes) that common file systems accept."""

_MAX_COPIES = 10_000
_DRIVE = re.compile(r"^[A-Za-z]:")
# Device names Windows resolves in any folder, whatever the extension ("NUL.png").
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{prefix}{digit}" for prefix in ("COM", "LPT") for digit in "123456789¹²³"]
)
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


class OutputPathError(ValueError):
    """Base class of every error raised by this module."""


class UnsafePathError(OutputPathError):
    """Raised when a name from ComfyUI would escape its folder or is not a usable name."""

    def __init__(self, field: str, value: str, problem: str) -> None:
        super().__init__(
            f"{field} {value!r} refused: {problem}. Only plain relative names such as "
            f"'video/ltx' (subfolder) and 'ComfyUI_00001_.png' (filename) are saved"
        )
        self.field = field
        self.value = value


class OutputConflictError(OutputPathError):
    """Raised when every numbered variant of an output name is already taken."""


class InputFileError(OutputPathError):
    """Base class for a local file that cannot be uploaded."""


class InputNotFoundError(InputFileError):
    """Raised when the file asked for does not exist."""


class NotAFileError(InputFileError):
    """Raised when the path names a folder, device, socket or pipe, not a regular file."""


class OutsideAllowedFoldersError(InputFileError):
    """Raised when the file, once symlinks are resolved, lies outside every allowed folder."""


class InputTooLargeError(InputFileError):
    """Raised when the file is larger than the limit."""


def safe_relative_path(subfolder: str, filename: str) -> PurePosixPath:
    """Join a ComfyUI ``subfolder`` and ``filename`` into a checked relative path.

    Backslashes in ``subfolder`` are folder separators (Windows servers report
    ``video\\ltx``) and empty parts are dropped, so ``("video\\ltx", "a.png")`` gives
    ``video/ltx/a.png``. Raises ``UnsafePathError`` naming the field for ``..`` or ``.``
    parts, absolute or drive paths, control characters, ``:``, Windows device names,
    parts over 255 bytes, an empty filename, or a filename containing a separator.
    """
    if _DRIVE.match(subfolder):
        raise UnsafePathError("subfolder", subfolder, "it is an absolute Windows path")
    if subfolder.startswith(("/", "\\")):
        raise UnsafePathError("subfolder", subfolder, "it is an absolute path")
    parts = [part for part in subfolder.replace("\\", "/").split("/") if part]
    if len(parts) > MAX_DEPTH:
        raise UnsafePathError("subfolder", subfolder, f"it is over {MAX_DEPTH} folders deep")
    for part in parts:
        _check_component("subfolder", subfolder, part)
    if not filename:
        raise UnsafePathError("filename", filename, "it is empty")
    if "/" in filename or "\\" in filename:
        raise UnsafePathError(
            "filename", filename, "it contains a path separator; folders go in subfolder"
        )
    _check_component("filename", filename, filename)
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in SAVED_SUFFIXES:
        raise UnsafePathError("filename", filename, f"comfy-mcp saves only media files, not "
                              f"{suffix or 'files without an extension'}; it stays on the "
                              "ComfyUI server")
    return PurePosixPath(*parts, filename)


def _check_component(field: str, value: str, part: str) -> None:
    if part in (".", ".."):
        raise UnsafePathError(field, value, f"it contains a {part!r} part")
    if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in part):
        raise UnsafePathError(field, value, "it contains a NUL or other control character")
    if any(unicodedata.category(char) in _INVISIBLE for char in part):
        raise UnsafePathError(field, value, "it contains invisible or direction-changing "
                              "characters that would disguise the name")
    if part.startswith("."):
        raise UnsafePathError(field, value, "hidden names (starting with '.') are not saved")
    if part.endswith((".", " ")):
        raise UnsafePathError(field, value, "it ends with a dot or a space")
    if ":" in part:
        raise UnsafePathError(field, value, "it contains ':' (a drive or Windows stream)")
    if part.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        raise UnsafePathError(field, value, f"{part!r} is a reserved Windows device name")
    size = len(part.encode("utf-8", "surrogatepass"))
    if size > MAX_COMPONENT_BYTES:
        raise UnsafePathError(
            field, value, f"a name is {size} bytes long, over the {MAX_COMPONENT_BYTES} limit"
        )


def save_output(root: Path, subfolder: str, filename: str, data: bytes) -> Path:
    """Write ``data`` to ``root/subfolder/filename`` without ever replacing a file.

    ``root`` and missing subfolders are created. A subfolder that is a symlink is
    followed only if it stays inside ``root``. If the name is taken by a file with the
    same bytes, that file's path is returned (re-saving is idempotent); otherwise the
    first free name among ``name-1.ext``, ``name-2.ext``... is used. The file appears
    complete or not at all: it is written under a temporary name and hard-linked into
    place, which fails instead of overwriting if another writer got there first.

    Returns the path written (or found), under the resolved ``root``. The symlink check
    guards against names from ComfyUI, not against a local user racing us on the disk.
    """
    relative = safe_relative_path(subfolder, filename)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    real_root = root.resolve(strict=True)
    folder = _make_folders(real_root, relative.parts[:-1], subfolder)
    return _store(folder, relative.name, data)


def _make_folders(real_root: Path, parts: Sequence[str], subfolder: str) -> Path:
    """Create ``parts`` under ``real_root`` one by one, never following a link out of it."""
    folder = real_root
    for part in parts:
        candidate = folder / part
        if candidate.is_symlink() or candidate.exists():
            resolved = candidate.resolve()
            if not resolved.is_relative_to(real_root):
                problem = f"{candidate} links to {resolved}, outside {real_root}"
                raise UnsafePathError("subfolder", subfolder, problem)
            if not resolved.is_dir():
                raise UnsafePathError(
                    "subfolder", subfolder, f"{candidate} exists and is not a folder"
                )
            folder = resolved
        else:
            candidate.mkdir(exist_ok=True)
            folder = candidate
    if not folder.resolve().is_relative_to(real_root):
        raise UnsafePathError("subfolder", subfolder, f"it leads outside {real_root}")
    return folder


def _store(folder: Path, name: str, data: bytes) -> Path:
    temporary = _write_temporary(folder, data)
    try:
        for number in range(_MAX_COPIES):
            target = folder / _numbered(name, number)
            if _same_content(target, data):
                logger.debug("%s already holds these bytes", target)
                return target
            if _claim(temporary, target, data):
                return target
    finally:
        temporary.unlink(missing_ok=True)
    raise OutputConflictError(
        f"{folder} already holds {name!r} and {_MAX_COPIES - 1} numbered copies; "
        "clean the folder or choose another output folder"
    )


def _write_temporary(folder: Path, data: bytes) -> Path:
    # A fixed-length name: the output name may already be at the length limit.
    path = folder / f".comfy-mcp-{secrets.token_hex(8)}.tmp"
    _write_exclusive(path, data)
    return path


def _write_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` (failing if it exists) and write ``data`` to disk."""
    fd = os.open(path, _OPEN_FLAGS, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _claim(temporary: Path, target: Path, data: bytes) -> bool:
    """Give ``target`` the bytes of ``temporary`` unless the name is taken. True if done."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        return False
    except OSError as exc:
        # No hard links on this file system (FAT, some network shares): exclusive create
        # still never clobbers, but a crash could leave a partial file behind.
        logger.debug("hard link failed (%s); writing %s directly", exc, target)
        try:
            _write_exclusive(target, data)
        except FileExistsError:
            return False
    return True


def _same_content(path: Path, data: bytes) -> bool:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
        return False
    return path.read_bytes() == data


def _numbered(name: str, number: int) -> str:
    """``name`` for 0, else ``stem-<number><suffix>``, trimmed to the length limit."""
    if number == 0:
        return name
    path = PurePosixPath(name)
    stem, suffix = path.stem, path.suffix
    tail = f"-{number}{suffix}"
    room = MAX_COMPONENT_BYTES - len(tail.encode("utf-8", "surrogatepass"))
    trimmed = stem.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    return f"{trimmed}{tail}"


def check_readable_file(
    path: str | Path,
    allowed_roots: Sequence[Path],
    *,
    max_bytes: int,
) -> Path:
    """Vet a local file the assistant wants to upload; return its resolved path.

    ``~`` is expanded. A relative path is looked up in each allowed folder in turn (the
    server's working directory means nothing to the user). After symlinks are resolved
    the path must be a regular file inside one of ``allowed_roots`` and at most
    ``max_bytes`` long. Containment is checked before existence, so the errors reveal
    nothing about files outside the allowed folders. Read at most ``max_bytes`` from the
    result: the file can still change after this check.
    """
    if "\x00" in str(path):
        raise InputNotFoundError(f"{path!r} contains a NUL character; check the name")
    roots = [Path(root).expanduser().resolve() for root in allowed_roots]
    try:
        resolved = _locate(Path(path).expanduser(), roots)
    except RuntimeError:  # "~someone" with no such user
        raise InputNotFoundError(f"{path} names an unknown home folder; check the name") from None
    except OSError as exc:  # a name too long for the file system, and the like
        raise InputNotFoundError(f"{str(path)[:80]!r}… cannot be a file here ({exc.strerror})"
                                 ) from None
    if not any(resolved.is_relative_to(root) for root in roots):
        listed = ", ".join(str(root) for root in roots) or "none configured"
        raise OutsideAllowedFoldersError(
            f"{path} is outside the folders files may be read from ({listed}); "
            "copy it into one of them first"
        )
    try:
        info = resolved.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise InputNotFoundError(f"{path} does not exist; check the name") from None
    except OSError as exc:
        raise InputFileError(f"{path} cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise NotAFileError(f"{path} is {kind}; give the path of a file")
    if info.st_size > max_bytes:
        raise InputTooLargeError(
            f"{path} is {_describe_size(info.st_size)}, over the limit of "
            f"{_describe_size(max_bytes)}; make the file smaller first"
        )
    if not os.access(resolved, os.R_OK):
        raise InputFileError(f"{path} is not readable by this server (permission denied)")
    return resolved


def _locate(path: Path, roots: Sequence[Path]) -> Path:
    if path.is_absolute():
        return path.resolve()
    candidates = [(root / path).resolve() for root in roots]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    # Not found anywhere: report against the first folder, or refuse if there is none.
    return candidates[0] if candidates else path.resolve()


def _describe_size(size: int) -> str:
    if size < 1024:
        return f"{size:,} bytes"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit} ({size:,} bytes)"
