from __future__ import annotations

import io

import pytest
from PIL import Image

from comfy_mcp.compare import side_by_side
from comfy_mcp.images import NotAnImageError, PreviewBudgetError, probe

RED, BLUE = (220, 20, 20), (20, 20, 220)


def solid(width: int, height: int, color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, fmt)
    return buffer.getvalue()


def noise(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 80).convert("RGB").save(buffer, "BMP")
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def near(pixel: tuple[int, ...], color: tuple[int, int, int]) -> bool:
    return all(abs(p - c) < 40 for p, c in zip(pixel, color, strict=False))


def column_extent(image: Image.Image, x: int, color: tuple[int, int, int]) -> tuple[int, int]:
    rows = [y for y in range(image.height) if near(image.getpixel((x, y)), color)]
    return rows[0], rows[-1]


def test_same_height_left_and_right() -> None:
    preview = side_by_side(solid(512, 512, RED), solid(256, 768, BLUE), labels=("", ""))
    assert preview.mime_type == "image/jpeg"
    image = decode(preview.data)
    assert image.size == (preview.width, preview.height)
    left_x, right_x = image.width // 4, image.width * 7 // 8
    assert near(image.getpixel((left_x, image.height // 2)), RED)
    assert near(image.getpixel((right_x, image.height // 2)), BLUE)
    top_red, bottom_red = column_extent(image, left_x, RED)
    top_blue, bottom_blue = column_extent(image, right_x, BLUE)
    assert abs(top_red - top_blue) <= 1 and abs(bottom_red - bottom_blue) <= 1
    # Both at the smaller height (512): nothing is upscaled.
    assert 500 <= bottom_red - top_red + 1 <= 512


def test_never_upscales_small_images() -> None:
    preview = side_by_side(solid(64, 64, RED), solid(32, 48, BLUE))
    gap = 1568 // 256
    assert (preview.width, preview.height) == (48 + 32 + 3 * gap, 48 + 2 * gap)


def test_labels_are_drawn() -> None:
    plain = decode(side_by_side(solid(400, 400, RED), solid(400, 400, BLUE),
                                labels=("", "")).data)
    labelled = decode(side_by_side(solid(400, 400, RED), solid(400, 400, BLUE),
                                   labels=("#3", "#5")).data)
    assert near(plain.getpixel((12, 12)), RED)
    assert near(labelled.getpixel((12, 12)), (0, 0, 0)) or near(
        labelled.getpixel((12, 12)), (255, 255, 255))
    assert near(labelled.getpixel((labelled.width // 2 + 12, 12)), (0, 0, 0)) or near(
        labelled.getpixel((labelled.width // 2 + 12, 12)), (255, 255, 255))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param((2048, 2048), (2048, 2048), id="large-squares"),
        pytest.param((4000, 500), (4000, 500), id="wide"),
        pytest.param((300, 3000), (3000, 300), id="tall-and-wide"),
    ],
)
def test_within_edge_and_bytes(a: tuple[int, int], b: tuple[int, int]) -> None:
    preview = side_by_side(noise(*a), noise(*b), max_edge=1000, max_bytes=60_000)
    assert max(preview.width, preview.height) <= 1000
    assert len(preview.data) <= 60_000
    assert probe(preview.data)[0] == "jpeg"


def test_default_budget_for_two_full_images() -> None:
    preview = side_by_side(noise(1024, 1024), noise(1024, 1024))
    assert preview.width <= 1568 and len(preview.data) <= 500_000


def test_exif_rotation_is_respected() -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.new("RGB", (200, 100), RED).save(buffer, "JPEG", exif=exif)
    preview = side_by_side(buffer.getvalue(), solid(100, 200, BLUE), labels=("", ""))
    image = decode(preview.data)
    red_width = sum(near(image.getpixel((x, image.height // 2)), RED)
                    for x in range(image.width))
    assert 90 <= red_width <= 100  # upright: 100 wide at height 200


def test_not_an_image_names_it() -> None:
    with pytest.raises(NotAnImageError, match="image #7"):
        side_by_side(solid(10, 10, RED), b"nope", labels=("#6", "#7"))


def test_bad_arguments() -> None:
    image = solid(10, 10, RED)
    with pytest.raises(ValueError, match="two labels"):
        side_by_side(image, image, labels=("only one",))
    with pytest.raises(PreviewBudgetError):
        side_by_side(image, image, max_bytes=0)
    with pytest.raises(PreviewBudgetError):
        side_by_side(image, image, max_edge=5)
    with pytest.raises(PreviewBudgetError, match="allow more bytes"):
        side_by_side(noise(800, 800), noise(800, 800), max_bytes=200)
