from __future__ import annotations

import io
import random
import resource
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from comfy_mcp.images import (
    MAX_SHEET_IMAGES,
    ContactSheetError,
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    Preview,
    PreviewBudgetError,
    contact_sheet,
    fit_result,
    image_tokens,
    make_preview,
    probe,
)

# -- helpers ----------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: the worst case for any compressor."""
    pixels = random.Random(seed).randbytes(width * height * 3)
    return Image.frombytes("RGB", (width, height), pixels)


def solid(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def decoded(preview: Preview) -> Image.Image:
    assert preview.mime_type == "image/jpeg"
    image = Image.open(io.BytesIO(preview.data))
    assert image.format == "JPEG"
    assert image.size == (preview.width, preview.height)
    return image


def png_header(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- probe ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF"])
def test_probe_formats(fmt: str) -> None:
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("Pillow built without AVIF")
    assert probe(encode(solid(300, 200), fmt)) == (fmt.lower(), 300, 200)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello world", id="text"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", id="pdf"),
        pytest.param(b'{"images": []}', id="json"),
        pytest.param(random.Random(1).randbytes(4096), id="random"),
        pytest.param(b"\x00\x00\x00\x18ftypmp42" + bytes(64), id="mp4"),
        # Formats Pillow knows but we do not decode (EPS would run Ghostscript).
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", id="eps"),
        pytest.param(encode(solid(32, 32), "ICO"), id="ico"),
        pytest.param(encode(solid(32, 32), "PPM"), id="ppm"),
    ],
)
def test_non_images_refused(data: bytes) -> None:
    with pytest.raises(NotAnImageError, match="image"):
        probe(data)
    with pytest.raises(NotAnImageError):
        make_preview(data)


def test_truncated_png_probes_but_does_not_preview() -> None:
    data = encode(noise(256, 256))
    truncated = data[: len(data) // 2]
    assert probe(truncated) == ("png", 256, 256)
    with pytest.raises(CorruptImageError, match="damaged or incomplete"):
        make_preview(truncated)


@pytest.mark.parametrize(
    "side",
    [
        pytest.param(9_000, id="over-our-limit"),
        pytest.param(10_000, id="over-pillow-warning"),
        pytest.param(100_000, id="over-pillow-error"),
    ],
)
def test_decompression_bomb_header(side: int) -> None:
    data = png_header(side, side)
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="too large"):
        probe(data)
    with pytest.raises(ImageTooLargeError):
        make_preview(data)
    assert time.perf_counter() - started < 1.0
    assert peak_rss_mib() - rss_before < 100


# -- make_preview -----------------------------------------------------------------------


def test_preview_tokens() -> None:
    assert image_tokens(1568, 1568) == 3136
    assert image_tokens(29, 28) == 2
    preview = make_preview(encode(solid(56, 84)))
    assert preview.tokens == 2 * 3


@pytest.mark.parametrize(
    ("size", "max_edge", "expected"),
    [
        pytest.param((2000, 1000), 1568, (1568, 784), id="landscape"),
        pytest.param((1000, 3000), 1568, (523, 1568), id="portrait"),
        pytest.param((1024, 1024), 1568, (1024, 1024), id="no-upscale"),
        pytest.param((100, 50), 1568, (100, 50), id="small"),
        pytest.param((1024, 768), 512, (512, 384), id="custom-edge"),
        pytest.param((5000, 3), 1568, (1568, 1), id="sliver"),
    ],
)
def test_preview_size(size: tuple[int, int], max_edge: int, expected: tuple[int, int]) -> None:
    preview = make_preview(encode(solid(*size)), max_edge=max_edge)
    assert (preview.width, preview.height) == expected
    assert (preview.source_width, preview.source_height) == size
    decoded(preview)


def test_preview_keeps_pixels() -> None:
    image = Image.new("RGB", (400, 200), (255, 0, 0))
    image.paste((0, 0, 255), (200, 0, 400, 200))
    preview = decoded(make_preview(encode(image), max_edge=100))
    assert preview.size == (100, 50)
    assert close_to(preview.getpixel((10, 25)), (255, 0, 0), 30)
    assert close_to(preview.getpixel((90, 25)), (0, 0, 255), 30)


def test_large_jpeg_uses_draft() -> None:
    data = encode(solid(4000, 3000), "JPEG")
    preview = make_preview(data)
    assert (preview.width, preview.height) == (1568, 1176)
    assert (preview.source_width, preview.source_height) == (4000, 3000)


def rgba_png() -> bytes:
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (32, 0, 64, 64))
    return encode(image)


def palette_png(transparent: bool) -> bytes:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    return encode(image, transparency=1) if transparent else encode(image)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(rgba_png(), (128, 128, 128), id="RGBA-transparent-on-grey"),
        pytest.param(encode(Image.new("LA", (64, 64), (255, 0))), (128, 128, 128), id="LA"),
        pytest.param(palette_png(True), (128, 128, 128), id="P-transparent"),
        pytest.param(palette_png(False), (0, 200, 0), id="P"),
        pytest.param(
            encode(solid(64, 64, (255, 0, 0)), transparency=(255, 0, 0)),
            (128, 128, 128),
            id="RGB-colour-key",
        ),
        pytest.param(encode(Image.new("1", (64, 64), 1)), (255, 255, 255), id="1-bit"),
        pytest.param(encode(Image.new("L", (64, 64), 77)), (77, 77, 77), id="L"),
        pytest.param(encode(Image.new("I;16", (64, 64), 40000)), (155, 155, 155), id="I;16"),
        pytest.param(encode(Image.new("I", (64, 64), 30000), "TIFF"), (117,) * 3, id="I"),
        pytest.param(encode(Image.new("F", (64, 64), 0.5), "TIFF"), (127, 127, 127), id="F"),
        pytest.param(
            encode(Image.new("CMYK", (64, 64), (255, 0, 0, 0)), "JPEG"), (0, 255, 255), id="CMYK"
        ),
        pytest.param(
            encode(Image.new("RGB", (64, 64), (10, 20, 30)).convert("YCbCr"), "JPEG"),
            (10, 20, 30),
            id="YCbCr",
        ),
    ],
)
def test_preview_modes(data: bytes, expected: tuple[int, int, int]) -> None:
    image = decoded(make_preview(data))
    assert image.mode in ("L", "RGB")
    pixel = image.convert("RGB").getpixel((4, 4))
    assert close_to(pixel, expected), pixel


def test_rgba_keeps_opaque_pixels() -> None:
    image = decoded(make_preview(rgba_png())).convert("RGB")
    assert close_to(image.getpixel((60, 30)), (0, 0, 255), 30)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_first_frame(fmt: str) -> None:
    frames = [solid(64, 64, (255, 0, 0)), solid(64, 64, (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    image = decoded(make_preview(data)).convert("RGB")
    assert close_to(image.getpixel((32, 32)), (255, 0, 0), 30)


def test_exif_orientation_applied() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    data = encode(image, "JPEG", exif=exif.tobytes())
    preview = make_preview(data)
    assert (preview.width, preview.height) == (100, 200)
    assert (preview.source_width, preview.source_height) == (100, 200)
    shown = decoded(preview).convert("RGB")
    assert close_to(shown.getpixel((50, 20)), (255, 0, 0), 40)  # left edge is now on top
    assert close_to(shown.getpixel((50, 180)), (0, 0, 255), 40)


def test_max_bytes_lowers_quality_then_size() -> None:
    data = encode(noise(1024, 1024))
    unlimited = make_preview(data)
    assert len(unlimited.data) > 200_000
    fitted = make_preview(data, max_bytes=200_000)
    assert len(fitted.data) <= 200_000
    assert fitted.width <= 1024
    small = make_preview(data, max_bytes=20_000)
    assert len(small.data) <= 20_000
    assert small.width < 1024
    assert (small.source_width, small.source_height) == (1024, 1024)


def test_max_tokens_limits_size() -> None:
    preview = make_preview(encode(solid(3000, 2000)), max_tokens=100)
    assert preview.tokens <= 100
    assert preview.width / preview.height == pytest.approx(1.5, rel=0.05)


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"max_bytes": 50}, id="bytes"),
        pytest.param({"max_bytes": 0}, id="zero-bytes"),
        pytest.param({"max_tokens": 0}, id="zero-tokens"),
        pytest.param({"max_edge": 0}, id="zero-edge"),
    ],
)
def test_impossible_budget(limits: dict[str, int]) -> None:
    with pytest.raises(PreviewBudgetError):
        make_preview(encode(noise(256, 256)), **limits)


def test_preview_repr_hides_data() -> None:
    assert "data=" not in repr(make_preview(encode(solid(8, 8))))


# -- contact_sheet ----------------------------------------------------------------------


def white_pixels(image: Image.Image) -> int:
    return sum(image.convert("L").point(lambda v: 255 if v > 230 else 0).histogram()[255:])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 17, MAX_SHEET_IMAGES])
def test_contact_sheet_counts(count: int) -> None:
    rng = random.Random(count)
    sizes = [(rng.randint(20, 700), rng.randint(20, 700)) for _ in range(count)]
    sheet = contact_sheet([encode(solid(w, h)) for w, h in sizes])
    assert max(sheet.width, sheet.height) <= 1568
    if count > 1:
        assert 0.4 <= sheet.width / sheet.height <= 2.5
    decoded(sheet)


def test_contact_sheet_draws_labels() -> None:
    tiles = [encode(solid(300, 300, (120, 120, 120))) for _ in range(4)]
    labelled = decoded(contact_sheet(tiles))
    blank = decoded(contact_sheet(tiles, labels=[""] * 4))
    assert white_pixels(blank) == 0
    assert white_pixels(labelled) > 20
    # The label box sits in the top-left corner of the first tile.
    corner = labelled.crop((0, 0, labelled.width // 8, labelled.height // 8))
    assert white_pixels(corner) > 5


def test_contact_sheet_near_square_for_wide_tiles() -> None:
    sheet = contact_sheet([encode(solid(1600, 900)) for _ in range(6)])
    assert 0.6 <= sheet.width / sheet.height <= 1.7


def test_contact_sheet_never_upscales() -> None:
    sheet = contact_sheet([encode(solid(40, 30)) for _ in range(4)])
    assert sheet.width < 200
    assert sheet.height < 200


def test_contact_sheet_budget() -> None:
    tiles = [encode(noise(512, 512, seed)) for seed in range(9)]
    sheet = contact_sheet(tiles, max_bytes=60_000, max_tokens=600)
    assert len(sheet.data) <= 60_000
    assert sheet.tokens <= 600


@pytest.mark.parametrize(
    ("count", "labels", "match"),
    [
        pytest.param(0, None, "1 to 64", id="empty"),
        pytest.param(MAX_SHEET_IMAGES + 1, None, "1 to 64", id="too-many"),
        pytest.param(2, ["a"], "2 images", id="labels"),
    ],
)
def test_contact_sheet_refusals(count: int, labels: list[str] | None, match: str) -> None:
    tile = encode(solid(8, 8))
    with pytest.raises(ContactSheetError, match=match):
        contact_sheet([tile] * count, labels=labels)


def test_contact_sheet_names_broken_input() -> None:
    with pytest.raises(NotAnImageError, match="image 2 of 3"):
        contact_sheet([encode(solid(8, 8)), b"nope", encode(solid(8, 8))])


# -- fit_result -------------------------------------------------------------------------


def assert_within(previews: list[Preview], total_bytes: int, max_tokens: int) -> None:
    assert sum(len(p.data) for p in previews) <= total_bytes
    assert sum(p.tokens for p in previews) <= max_tokens


def test_fit_result_empty() -> None:
    assert fit_result([]) == []


def test_fit_result_single_large_image() -> None:
    data = encode(noise(4096, 4096), compress_level=0)
    previews = fit_result([data], total_bytes=500_000)
    assert len(previews) == 1
    assert_within(previews, 500_000, 20_000)
    assert (previews[0].source_width, previews[0].source_height) == (4096, 4096)
    assert max(previews[0].width, previews[0].height) <= 1568


def test_fit_result_eight_noise_images() -> None:
    images = [encode(noise(2048, 2048, seed), compress_level=0) for seed in range(8)]
    previews = fit_result(images)
    assert_within(previews, 700_000, 20_000)
    sheet, *individuals = previews
    assert max(sheet.width, sheet.height) <= 1568
    assert len(individuals) == 8
    assert all(max(p.width, p.height) <= 768 for p in individuals)
    assert all(p.source_width == 2048 for p in individuals)


def test_fit_result_order_matches_input() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    previews = fit_result([encode(solid(300, 200, colour)) for colour in colours])
    assert len(previews) == 4
    for preview, colour in zip(previews[1:], colours, strict=True):
        assert close_to(decoded(preview).convert("RGB").getpixel((150, 100)), colour, 30)


def test_fit_result_tiny_budget_gives_nothing() -> None:
    assert fit_result([encode(noise(64, 64))], total_bytes=100) == []
    assert fit_result([encode(noise(64, 64))] * 3, total_bytes=100) == []


def test_fit_result_drops_individuals_that_do_not_fit() -> None:
    images = [encode(noise(1024, 1024, seed)) for seed in range(4)]
    previews = fit_result(images, total_bytes=40_000)
    assert 1 <= len(previews) < 5
    assert_within(previews, 40_000, 20_000)


def test_fit_result_names_broken_input() -> None:
    with pytest.raises(NotAnImageError, match="image 2 of 2"):
        fit_result([encode(solid(8, 8)), b"not an image"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(
        st.tuples(st.integers(1, 700), st.integers(1, 700), st.booleans()), min_size=1, max_size=5
    ),
    total_bytes=st.integers(1, 300_000),
    max_tokens=st.integers(1, 8_000),
    max_edge=st.integers(64, 1568),
)
def test_fit_result_budgets_hold(
    sizes: list[tuple[int, int, bool]], total_bytes: int, max_tokens: int, max_edge: int
) -> None:
    images = [
        encode(noise(w, h, seed=w * h) if is_noise else solid(w, h), compress_level=1)
        for w, h, is_noise in sizes
    ]
    limits = {"total_bytes": total_bytes, "max_edge": max_edge, "max_tokens": max_tokens}
    previews = fit_result(images, **limits)
    assert_within(previews, total_bytes, max_tokens)
    assert len(previews) <= len(images) + (len(images) > 1)
    for preview in previews:
        assert max(preview.width, preview.height) <= max_edge
        decoded(preview)
