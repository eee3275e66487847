from __future__ import annotations

import os
import threading
from pathlib import Path, PurePosixPath

import pytest

from comfy_mcp.outputs import (
    InputNotFoundError,
    InputTooLargeError,
    NotAFileError,
    OutsideAllowedFoldersError,
    UnsafePathError,
    check_readable_file,
    safe_relative_path,
    save_output,
)

# -- safe_relative_path -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("subfolder", "filename", "expected"),
    [
        pytest.param("", "ComfyUI_00001_.png", "ComfyUI_00001_.png", id="top-level"),
        pytest.param("video/ltx", "ltx_00001_.png", "video/ltx/ltx_00001_.png", id="posix"),
        pytest.param("video\\ltx", "ltx_00001_.png", "video/ltx/ltx_00001_.png", id="windows"),
        pytest.param("2026-05-01", "shot_00001_.png", "2026-05-01/shot_00001_.png", id="date"),
        pytest.param("a//b/", "x.png", "a/b/x.png", id="empty-parts"),
        pytest.param("", "a..b.png", "a..b.png", id="dots-inside-name"),
        pytest.param("ünïcødé", "画像.png", "ünïcødé/画像.png", id="unicode"),
    ],
)
def test_safe_relative_path(subfolder: str, filename: str, expected: str) -> None:
    assert safe_relative_path(subfolder, filename) == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("subfolder", "filename", "field", "reason"),
    [
        pytest.param("", "../../etc/passwd", "filename", "separator", id="B17-filename-dotdot"),
        pytest.param("", "/etc/passwd", "filename", "separator", id="B17-filename-absolute"),
        pytest.param("../../home/u/.ssh", "a.png", "subfolder", "'..'", id="B17-subfolder"),
        pytest.param("", "a\x00.png", "filename", "NUL", id="B17-nul"),
        pytest.param("C:\\Windows", "a.png", "subfolder", "absolute", id="B17-drive"),
        pytest.param("video/../..", "a.png", "subfolder", "'..'", id="dotdot-later"),
        pytest.param("..\\..\\x", "a.png", "subfolder", "'..'", id="dotdot-backslash"),
        pytest.param("/etc", "a.png", "subfolder", "absolute", id="subfolder-absolute"),
        pytest.param("\\\\server\\share", "a.png", "subfolder", "absolute", id="unc"),
        pytest.param("c:relative", "a.png", "subfolder", "absolute", id="drive-relative"),
        pytest.param("", "C:evil.png", "filename", "':'", id="filename-drive"),
        pytest.param("", "a.png:stream", "filename", "':'", id="ads-stream"),
        pytest.param("", "", "filename", "empty", id="empty-filename"),
        pytest.param("", ".", "filename", "'.'", id="dot-filename"),
        pytest.param("", "..", "filename", "'..'", id="dotdot-filename"),
        pytest.param("./video", "a.png", "subfolder", "'.'", id="dot-subfolder"),
        pytest.param("", "a\\b.png", "filename", "separator", id="filename-backslash"),
        pytest.param("", "a\nb.png", "filename", "control", id="newline"),
        pytest.param("", "a\x1b[31m.png", "filename", "control", id="escape"),
        pytest.param("a\x7f", "a.png", "subfolder", "control", id="delete-char"),
        pytest.param("", "NUL.png", "filename", "device", id="windows-device"),
        pytest.param("con", "a.png", "subfolder", "device", id="windows-device-folder"),
        pytest.param("", "x" * 252 + ".png", "filename", "256 bytes", id="long-filename"),
        pytest.param("é" * 128, "a.png", "subfolder", "256 bytes", id="long-subfolder-utf8"),
    ],
)
def test_unsafe_names_refused(subfolder: str, filename: str, field: str, reason: str) -> None:
    with pytest.raises(UnsafePathError, match=reason) as caught:
        safe_relative_path(subfolder, filename)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_longest_names_accepted() -> None:
    name = "x" * 251 + ".png"
    folder = "é" * 127
    assert safe_relative_path(folder, name) == PurePosixPath(folder, name)


# -- save_output ------------------------------------------------------------------------


def test_save_creates_root_and_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "does" / "not" / "exist"
    path = save_output(root, "video\\ltx", "ltx_00001_.png", b"frame")
    assert path == root.resolve() / "video" / "ltx" / "ltx_00001_.png"
    assert path.read_bytes() == b"frame"
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())


def test_save_never_overwrites(tmp_path: Path) -> None:
    first = save_output(tmp_path, "", "a.png", b"one")
    second = save_output(tmp_path, "", "a.png", b"two")
    third = save_output(tmp_path, "", "a.png", b"three")
    assert [first.name, second.name, third.name] == ["a.png", "a-1.png", "a-2.png"]
    assert [p.read_bytes() for p in (first, second, third)] == [b"one", b"two", b"three"]


def test_identical_resave_dedupes(tmp_path: Path) -> None:
    first = save_output(tmp_path, "s", "a.png", b"same")
    save_output(tmp_path, "s", "a.png", b"other")
    assert save_output(tmp_path, "s", "a.png", b"same") == first
    assert save_output(tmp_path, "s", "a.png", b"other").name == "a-1.png"
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["a-1.png", "a.png"]


@pytest.mark.parametrize(
    ("subfolder", "filename", "reason"),
    [
        ("", "CLAUDE.md", "saves only media files"),
        ("", "run.sh", "saves only media files"),
        ("", "clip", "files without an extension"),
        ("", ".bashrc.png", "hidden names"),
        (".claude", "x.png", "hidden names"),
        ("", "evil\u202egnp.exe.png", "direction-changing"),
        ("\u2066..\u2069", "x.png", "direction-changing"),
        ("", "x.png. ", "ends with a dot or a space"),
        ("/".join("d" * 9), "x.png", "over 8 folders deep"),
        ("", "\ud800.png", "invisible"),
    ],
)
def test_hostile_names_refused(subfolder: str, filename: str, reason: str) -> None:
    with pytest.raises(UnsafePathError, match=reason):
        safe_relative_path(subfolder, filename)


def test_numbered_name_stays_within_limit(tmp_path: Path) -> None:
    name = "x" * 251 + ".png"
    save_output(tmp_path, "", name, b"1")
    second = save_output(tmp_path, "", name, b"2")
    assert len(second.name.encode()) <= 255
    assert second.name.endswith("-1.png")
    assert second.read_bytes() == b"2"


def test_existing_folder_symlink_inside_root_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    path = save_output(tmp_path, "alias", "a.png", b"data")
    assert path == tmp_path.resolve() / "real" / "a.png"


def test_symlinked_subfolder_escape_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "video").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside") as caught:
        save_output(root, "video/ltx", "a.png", b"data")
    assert caught.value.field == "subfolder"
    assert list(outside.iterdir()) == []  # not even the "ltx" folder was created


def test_dangling_symlink_subfolder_refused(tmp_path: Path) -> None:
    (tmp_path / "gone").symlink_to(tmp_path.parent / "nowhere-at-all")
    with pytest.raises(UnsafePathError):
        save_output(tmp_path, "gone", "a.png", b"data")


def test_subfolder_that_is_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "video").write_bytes(b"not a folder")
    with pytest.raises(UnsafePathError, match="not a folder"):
        save_output(tmp_path, "video", "a.png", b"data")


def test_symlinked_target_file_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").symlink_to(victim)
    path = save_output(root, "", "a.png", b"keep me")  # same bytes, but via a link
    assert path.name == "a-1.png"
    assert victim.read_bytes() == b"keep me"
    assert (root / "a.png").is_symlink()


def test_unsafe_names_never_touch_disk(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError):
        save_output(tmp_path / "root", "../escape", "a.png", b"data")
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "root").exists()


def test_concurrent_saves_keep_every_file(tmp_path: Path) -> None:
    results: list[Path] = []

    def save(number: int) -> None:
        results.append(save_output(tmp_path, "batch", "a.png", f"image {number}".encode()))

    threads = [threading.Thread(target=save, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 16
    contents = {path.read_bytes() for path in results}
    assert contents == {f"image {n}".encode() for n in range(16)}


# -- check_readable_file ----------------------------------------------------------------


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"x" * 100)
    return folder


def test_readable_file_accepted(allowed: Path) -> None:
    assert check_readable_file(allowed / "cat.png", [allowed], max_bytes=100) == (
        allowed.resolve() / "cat.png"
    )


def test_relative_path_looked_up_in_roots(tmp_path: Path, allowed: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    path = check_readable_file("cat.png", [other, allowed], max_bytes=1000)
    assert path == allowed.resolve() / "cat.png"


def test_missing_file(allowed: Path) -> None:
    with pytest.raises(InputNotFoundError, match="does not exist"):
        check_readable_file(allowed / "dog.png", [allowed], max_bytes=1000)


def test_folder_is_not_a_file(allowed: Path) -> None:
    (allowed / "sub").mkdir()
    with pytest.raises(NotAFileError, match="folder"):
        check_readable_file(allowed / "sub", [allowed], max_bytes=1000)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_not_a_file(allowed: Path) -> None:
    os.mkfifo(allowed / "pipe")
    with pytest.raises(NotAFileError, match="not a regular file"):
        check_readable_file(allowed / "pipe", [allowed], max_bytes=1000)


def test_outside_allowed_folders_lists_them(tmp_path: Path, allowed: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"s")
    with pytest.raises(OutsideAllowedFoldersError, match=str(allowed.resolve())):
        check_readable_file(secret, [allowed], max_bytes=1000)


@pytest.mark.parametrize("path", ["../secret.png", "../../etc/passwd", "/etc/passwd"])
def test_traversal_refused(allowed: Path, path: str) -> None:
    with pytest.raises(OutsideAllowedFoldersError):
        check_readable_file(path, [allowed], max_bytes=10_000_000)


def test_symlink_out_of_root_refused(tmp_path: Path, allowed: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"s")
    (allowed / "link.png").symlink_to(secret)
    with pytest.raises(OutsideAllowedFoldersError):
        check_readable_file(allowed / "link.png", [allowed], max_bytes=1000)


def test_missing_outside_file_reports_outside(tmp_path: Path, allowed: Path) -> None:
    # Errors must not reveal whether files outside the allowed folders exist.
    with pytest.raises(OutsideAllowedFoldersError):
        check_readable_file(tmp_path / "nothing.png", [allowed], max_bytes=1000)


def test_no_allowed_folders(allowed: Path) -> None:
    with pytest.raises(OutsideAllowedFoldersError, match="none configured"):
        check_readable_file(allowed / "cat.png", [], max_bytes=1000)


def test_too_large_gives_size_and_limit(allowed: Path) -> None:
    (allowed / "big.png").write_bytes(b"x" * 3 * 1024 * 1024)
    with pytest.raises(InputTooLargeError, match=r"3\.0 MiB .*over the limit of 1\.0 MiB"):
        check_readable_file(allowed / "big.png", [allowed], max_bytes=1024 * 1024)


def test_nul_in_path_refused(allowed: Path) -> None:
    with pytest.raises(InputNotFoundError, match="NUL"):
        check_readable_file(f"{allowed}/cat\x00.png", [allowed], max_bytes=1000)
