"""Two images in one preview, side by side at the same height, each with its label.

Decoding and budget fitting are ``comfy_mcp.images``'s: each input goes through
``make_preview`` (upright, first frame, size checks), and the composed picture goes
through it once more to fit the byte budget. The composite is handed over as BMP, which
costs no compression time and loses nothing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from PIL import Image, ImageFont

from comfy_mcp import images

__all__ = ["side_by_side"]

logger = logging.getLogger(__name__)

_BACKGROUND = (24, 24, 24)
_MAX_LABEL_CHARS = 24
_RESAMPLE = Image.Resampling.BICUBIC


def side_by_side(
    a: bytes,
    b: bytes,
    *,
    labels: Sequence[str] = ("#1", "#2"),
    max_edge: int = images.CLAUDE_MAX_EDGE,
    max_bytes: int = 500_000,
) -> images.Preview:
    """One JPEG with ``a`` left and ``b`` right, scaled to the same height and labelled.

    Neither image is upscaled: the shared height is at most the smaller one's. The long
    edge stays within ``max_edge`` and the file within ``max_bytes``. Errors are the
    ``images.ImageError`` family, their message naming the image by its label.
    """
    if len(labels) != 2:
        raise ValueError(f"side_by_side takes two labels, got {len(labels)}")
    if max_edge < 1 or max_bytes < 1:
        raise images.PreviewBudgetError(
            f"max_edge and max_bytes must be at least 1, got {max_edge} and {max_bytes}")
    gap = max(2, max_edge // 256)
    if max_edge < 3 * gap + 2:
        raise images.PreviewBudgetError(f"max_edge={max_edge} is too small for two images")
    left = _decoded(a, labels[0], max_edge)
    right = _decoded(b, labels[1], max_edge)
    names = [images.shorten_label(label, _MAX_LABEL_CHARS) for label in labels]
    canvas = _compose(left, right, names, max_edge, gap)
    return images.make_preview(_bmp(canvas), max_edge=max_edge, max_bytes=max_bytes)


def _decoded(data: bytes, label: str, max_edge: int) -> Image.Image:
    try:
        preview = images.make_preview(data, max_edge=max_edge)
    except images.ImageError as exc:
        raise type(exc)(f"image {label}: {exc}") from exc
    with Image.open(io.BytesIO(preview.data)) as image:
        return image.convert("RGB")


def _compose(
    left: Image.Image, right: Image.Image, labels: Sequence[str], max_edge: int, gap: int
) -> Image.Image:
    height = _shared_height(left, right, max_edge, gap)
    tiles = [_at_height(image, height) for image in (left, right)]
    width = tiles[0].width + tiles[1].width + 3 * gap
    canvas = Image.new("RGB", (width, height + 2 * gap), _BACKGROUND)
    font_px = max(10, min(48, height // 14))
    font = ImageFont.load_default(size=font_px)
    x = gap
    for tile, label in zip(tiles, labels, strict=True):
        images.draw_label(tile, label, font, font_px)  # on the tile, so a long label is clipped
        canvas.paste(tile, (x, gap))
        x += tile.width + gap
    return canvas


def _shared_height(left: Image.Image, right: Image.Image, max_edge: int, gap: int) -> int:
    """The largest common height that upscales neither image and fits ``max_edge``."""
    room = max_edge - 3 * gap
    aspect_sum = left.width / left.height + right.width / right.height
    height = max(1, min(left.height, right.height, max_edge - 2 * gap, int(room / aspect_sum)))
    while height > 1 and _width_at(left, height) + _width_at(right, height) > room:
        height -= 1  # rounding each width up can overshoot by a pixel or two
    return height


def _width_at(image: Image.Image, height: int) -> int:
    return max(1, round(image.width * height / image.height))


def _at_height(image: Image.Image, height: int) -> Image.Image:
    size = (_width_at(image, height), height)
    return image.copy() if image.size == size else image.resize(size, _RESAMPLE)


def _bmp(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "BMP")
    return buffer.getvalue()
