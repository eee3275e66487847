"""Turn ComfyUI output bytes into previews an assistant can look at.

Hosts put hard limits on what a tool result may carry. Claude shrinks any image whose long
edge passes 1568 px, an image costs about one token per 28x28 pixel block, Claude Code caps
a tool result near 25,000 tokens and Claude Desktop rejects messages over 1 MiB, where the
base64 text of the image is what counts. Everything here produces JPEG previews that stay
inside a byte budget and a token budget chosen by the caller.

Previews are JPEG: with Pillow 13 it encodes 10-30 times faster than WebP at the same
nominal quality (a 1024x1024 image in about 3 ms against 30-100 ms), which matters because
fitting a budget may take several encodes, and at quality 75-85 the files are within about
25% of WebP's. Transparent pixels are composited on a neutral grey.

Errors, all ``ValueError``::

    ImageError
      NotAnImageError      the bytes are not an image Pillow can identify
      CorruptImageError    the header reads but the pixel data is broken or truncated
      ImageTooLargeError   more pixels than we are willing to decode
      PreviewBudgetError   no preview fits the byte or token budget asked for
      ContactSheetError    a contact sheet for no images, too many, or mismatched labels
"""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CLAUDE_MAX_EDGE",
    "MAX_SHEET_IMAGES",
    "MAX_SOURCE_PIXELS",
    "PREVIEW_MIME_TYPE",
    "ContactSheetError",
    "CorruptImageError",
    "ImageError",
    "ImageTooLargeError",
    "NotAnImageError",
    "Preview",
    "PreviewBudgetError",
    "contact_sheet",
    "draw_label",
    "fit_result",
    "image_tokens",
    "make_preview",
    "probe",
    "shorten_label",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_SizeAt = Callable[[int], tuple[int, int]]  # long edge -> (width, height)

CLAUDE_MAX_EDGE = 1568
"""Long edge (px) past which Claude downsizes an image anyway."""

MAX_SOURCE_PIXELS = 8192 * 8192
"""Largest image we decode (about 67 MP, up to 268 MB as RGBA). Kept below Pillow's own
decompression-bomb threshold so that Pillow's warning never fires for images we accept."""

MAX_SHEET_IMAGES = 64
PREVIEW_MIME_TYPE = "image/jpeg"

_TOKEN_BLOCK = 28
_QUALITIES = (85, 75, 60, 45)
_MAX_SHRINKS = 12
_MIN_EDGE = 16
_MIN_INDIVIDUAL_EDGE = 256
_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 2.0
_ALPHA_BACKGROUND = (128, 128, 128)
_SHEET_BACKGROUND = (24, 24, 24)
_MAX_LABEL_CHARS = 16

# Formats we decode. Pillow knows more, but some are rarely used and less hardened, and
# EPS would run Ghostscript on bytes from the server.
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")  # JPEG covers MPO

# Errors Pillow raises while decoding broken pixel data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

# EXIF orientation -> the transpose that displays the image upright.
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """Base class of every error raised by this module."""


class NotAnImageError(ImageError):
    """Raised when the bytes are not an image format Pillow can identify."""


class CorruptImageError(ImageError):
    """Raised when an image header is readable but its pixel data is broken or truncated."""


class ImageTooLargeError(ImageError):
    """Raised when an image has more pixels than ``MAX_SOURCE_PIXELS``."""


class PreviewBudgetError(ImageError):
    """Raised when no preview fits the byte or token budget, or a budget is not positive."""


class ContactSheetError(ImageError):
    """Raised when a contact sheet is asked for zero or too many images, or bad labels."""


@dataclass(frozen=True)
class Preview:
    """An encoded preview and the size of the image it was made from.

    ``source_width``/``source_height`` are the original's size as displayed (after EXIF
    rotation); for a contact sheet, the sheet's size before any budget shrinking.
    """

    data: bytes = field(repr=False)
    mime_type: str
    width: int
    height: int
    source_width: int
    source_height: int

    @property
    def tokens(self) -> int:
        """Approximate tokens the image costs the model."""
        return image_tokens(self.width, self.height)


@dataclass
class _Decoded:
    image: Image.Image  # mode "L" or "RGB", upright, already downscaled
    source_width: int
    source_height: int


@dataclass(frozen=True)
class _Layout:
    cols: int
    rows: int
    aspect: float  # cell width / height
    height_cap: int  # cell height past which every tile would be upscaled


def image_tokens(width: int, height: int) -> int:
    """Approximate token cost of a ``width`` x ``height`` image (one per 28x28 block)."""
    return math.ceil(width / _TOKEN_BLOCK) * math.ceil(height / _TOKEN_BLOCK)


def probe(data: bytes) -> tuple[str, int, int]:
    """Return ``(format, width, height)`` from the header only, e.g. ``("png", 1024, 768)``.

    The pixel data is not decoded, so a truncated file still probes; ``make_preview`` is
    what notices. The size is as stored, before any EXIF rotation.
    """
    with _open(data) as image:
        return (image.format or "unknown").lower(), image.width, image.height


def make_preview(
    data: bytes,
    *,
    max_edge: int = CLAUDE_MAX_EDGE,
    max_bytes: int | None = None,
    max_tokens: int | None = None,
) -> Preview:
    """Decode ``data`` and encode a JPEG preview no larger than the limits given.

    The image is shown upright (EXIF orientation), from its first frame if animated, and
    downscaled with its aspect ratio kept so that the long edge is at most ``max_edge`` and
    the token cost at most ``max_tokens``; it is never upscaled. When ``max_bytes`` is given
    the JPEG quality is lowered first, then the size, until the file fits.
    """
    _check_positive(max_edge=max_edge, max_bytes=max_bytes, max_tokens=max_tokens)
    decoded = _decode(data, max_edge=max_edge, max_tokens=max_tokens)
    return _preview_of(decoded, max_bytes=max_bytes, max_tokens=max_tokens, min_edge=_MIN_EDGE)


def contact_sheet(
    images: Sequence[bytes],
    *,
    labels: Sequence[str] | None = None,
    max_edge: int = CLAUDE_MAX_EDGE,
    max_bytes: int | None = None,
    max_tokens: int | None = None,
) -> Preview:
    """Lay 1 to 64 images out as numbered tiles of one near-square JPEG grid.

    Every tile keeps its aspect ratio inside cells shaped like the typical input, and
    carries its label ("1", "2", ... by default) in a black box at its top-left corner.
    The same byte and token limits as ``make_preview`` apply to the whole sheet.
    """
    _check_positive(max_edge=max_edge, max_bytes=max_bytes, max_tokens=max_tokens)
    names = _sheet_labels(len(images), labels)
    sizes = _each(images, lambda data: probe(data)[1:])
    cell_w, cell_h, _, _, _ = _sheet_geometry(_layout(sizes), max_edge)
    edge = max(cell_w, cell_h)
    bases = _each(images, lambda data: _decode(data, max_edge=edge))
    return _sheet_preview(bases, names, max_edge, max_bytes, max_tokens)


def fit_result(
    images: Sequence[bytes],
    *,
    total_bytes: int = 700_000,
    max_edge: int = CLAUDE_MAX_EDGE,
    max_tokens: int = 20_000,
) -> list[Preview]:
    """Choose the previews for one tool result, within ``total_bytes`` and ``max_tokens``.

    The defaults leave room in Claude Desktop's 1 MiB message for base64 (4/3 of the bytes)
    and some text, and in Claude Code's 25k-token tool result limit.

    Policy:

    * no images: ``[]``;
    * one image: a single preview fitting both budgets;
    * several: first a contact sheet of all of them, numbered 1..n, allowed at most half
      of each budget; then individual previews in input order, each given an even share of
      what is left, at a long edge of ``max_edge`` for 2 images, 1024 for up to 4, 768 for
      up to 16 and 512 beyond (never above ``max_edge``). The first image that cannot fit
      its share at a useful size (256 px long edge, or its own size if smaller) ends the
      list, so ``result[i]`` is always image ``i`` (1-based) after the sheet at ``result[0]``;
    * only the first 64 images are considered;
    * if even the first preview cannot fit, ``[]`` (the caller should list the files).

    Whatever the input, the previews' bytes sum to at most ``total_bytes`` and their
    tokens to at most ``max_tokens``. A non-image or broken image raises the matching
    ``ImageError``, its message naming the image's position.
    """
    _check_positive(total_bytes=total_bytes, max_edge=max_edge, max_tokens=max_tokens)
    if not images:
        return []
    if len(images) > MAX_SHEET_IMAGES:
        logger.debug("previewing the first %d of %d images", MAX_SHEET_IMAGES, len(images))
        images = images[:MAX_SHEET_IMAGES]
    if len(images) == 1:
        return _fit_single(images[0], total_bytes, max_edge, max_tokens)
    return _fit_many(images, total_bytes, max_edge, max_tokens)


def _fit_single(data: bytes, total_bytes: int, max_edge: int, max_tokens: int) -> list[Preview]:
    try:
        preview = make_preview(
            data, max_edge=max_edge, max_bytes=total_bytes, max_tokens=max_tokens
        )
        return [preview]
    except PreviewBudgetError:
        logger.debug("no preview fits %d bytes / %d tokens", total_bytes, max_tokens)
        return []


def _fit_many(
    images: Sequence[bytes], total_bytes: int, max_edge: int, max_tokens: int
) -> list[Preview]:
    edge = _individual_edge(len(images), max_edge)
    bases = _each(images, lambda data: _decode(data, max_edge=edge))
    names = [str(number) for number in range(1, len(images) + 1)]
    try:
        sheet = _sheet_preview(bases, names, max_edge, total_bytes // 2, max_tokens // 2)
    except PreviewBudgetError:
        logger.debug("no contact sheet fits %d bytes / %d tokens", total_bytes, max_tokens)
        return []
    previews = [sheet]
    bytes_left = total_bytes - len(sheet.data)
    tokens_left = max_tokens - sheet.tokens
    for index, decoded in enumerate(bases):
        still_to_go = len(bases) - index
        try:
            preview = _preview_of(
                decoded,
                max_bytes=bytes_left // still_to_go,
                max_tokens=tokens_left // still_to_go,
                min_edge=_MIN_INDIVIDUAL_EDGE,
            )
        except PreviewBudgetError:
            logger.debug("inlined %d of %d individual previews", index, len(bases))
            break
        previews.append(preview)
        bytes_left -= len(preview.data)
        tokens_left -= preview.tokens
    return previews


def _individual_edge(count: int, max_edge: int) -> int:
    if count <= 2:
        return max_edge
    if count <= 4:
        return min(max_edge, 1024)
    if count <= 16:
        return min(max_edge, 768)
    return min(max_edge, 512)


def _check_positive(**limits: int | None) -> None:
    for name, value in limits.items():
        if value is not None and value < 1:
            raise PreviewBudgetError(f"{name} must be at least 1, got {value}")


# -- decoding ---------------------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    """Read the header only, refusing non-images and images too large to decode."""
    if not data:
        raise NotAnImageError("no image data: got 0 bytes; check that the file was fetched")
    try:
        image = Image.open(io.BytesIO(data), formats=_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only when warnings are errors (as in tests);
        # otherwise it is printed and the size check below refuses the image.
        raise ImageTooLargeError(
            f"image is too large to preview ({exc}); the limit is {MAX_SOURCE_PIXELS:,} "
            "pixels: make it smaller in the workflow or open the saved file directly"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise NotAnImageError(
            f"not an image Pillow can read ({len(data):,} bytes starting {data[:8]!r}); "
            f"only {', '.join(_FORMATS)} images can be previewed"
        ) from exc
    _check_pixels(image)
    return image


def _check_pixels(image: Image.Image) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise CorruptImageError(f"image header gives an empty size {width}x{height}")
    if width * height > MAX_SOURCE_PIXELS:
        image.close()
        raise ImageTooLargeError(
            f"image is too large to preview: {width}x{height} is {width * height:,} "
            f"pixels, over the limit of {MAX_SOURCE_PIXELS:,}; make it smaller in the "
            "workflow or open the saved file directly"
        )


def _decode(data: bytes, *, max_edge: int, max_tokens: int | None = None) -> _Decoded:
    image = _open(data)
    frame: Image.Image | None = None
    try:
        width, height = image.size
        # Rotation swaps width and height, which changes neither the long edge nor tokens.
        edge = _fit_edge(lambda e: _scaled(width, height, e), max_edge, max_tokens)
        target = _scaled(width, height, edge)
        if image.format in ("JPEG", "MPO"):
            image.draft(None, target)  # let libjpeg decode at 1/2, 1/4 or 1/8 scale
        _load(image)
        orientation = _orientation(image)
        frame = _to_basic_mode(image)
        if frame.size != target:
            frame = frame.resize(target, _RESAMPLE, reducing_gap=_REDUCING_GAP)
    finally:
        # Closing frees the pixels: keep ``image`` open when it is the frame itself
        # rather than copying a full-size frame (a quarter of the decode time).
        if frame is not image:
            image.close()
    if orientation in _ORIENTATION_FIX:
        frame = frame.transpose(_ORIENTATION_FIX[orientation])
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return _Decoded(_flatten(frame), width, height)


def _each(images: Sequence[bytes], action: Callable[[bytes], _T]) -> list[_T]:
    """Apply ``action`` to every image; an error message names the image's position."""
    results = []
    for number, data in enumerate(images, start=1):
        try:
            results.append(action(data))
        except ImageError as exc:
            raise type(exc)(f"image {number} of {len(images)}: {exc}") from exc
    return results


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(
            f"the {image.format or 'image'} file is damaged or incomplete ({exc}); "
            "fetch it again, or re-run the workflow if the output was cut short"
        ) from exc


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:
        logger.debug("ignoring unreadable EXIF data")
        return 1
    return value if isinstance(value, int) else 1


def _to_basic_mode(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to "L", "RGB" or "RGBA" without clipping 16-bit data."""
    mode = image.mode
    if mode in ("L", "RGB", "P") and "transparency" in image.info:
        return image.convert("RGBA")  # a colour key (PNG tRNS, GIF) marks clear pixels
    if mode in ("L", "RGB", "RGBA"):
        return image
    if mode == "P":
        return image.convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16"):
        return image.convert("I").point(lambda v: v * (255 / 65535)).convert("L")
    if mode in ("I", "F"):
        return _rescale_to_gray(image)
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _rescale_to_gray(image: Image.Image) -> Image.Image:
    """Map 32-bit integer or float pixels to 0..255 by guessing the range they use."""
    _, high = image.getextrema()
    if image.mode == "F" and high <= 1.0:
        scale = 255.0
    elif high <= 255:
        scale = 1.0
    elif high <= 65535:
        scale = 255 / 65535
    else:
        scale = 255 / high
    return image.point(lambda v: v * scale).convert("L")


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode != "RGBA":
        return image
    background = Image.new("RGB", image.size, _ALPHA_BACKGROUND)
    background.paste(image, mask=image.getchannel("A"))
    return background


# -- sizing and encoding ----------------------------------------------------------------


def _scaled(width: int, height: int, edge: int) -> tuple[int, int]:
    """Size with the long side at most ``edge``, aspect kept, never upscaled."""
    longest = max(width, height)
    if longest <= edge:
        return width, height
    scale = edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fit_edge(size_at: _SizeAt, upper: int, max_tokens: int | None) -> int:
    """Largest edge in 1..upper whose size costs at most ``max_tokens`` tokens."""
    if max_tokens is None or image_tokens(*size_at(upper)) <= max_tokens:
        return upper
    if image_tokens(*size_at(1)) > max_tokens:
        raise PreviewBudgetError(f"max_tokens={max_tokens} is too small for any preview")
    low, high = 1, upper  # tokens fit at low, not at high
    while high - low > 1:
        middle = (low + high) // 2
        if image_tokens(*size_at(middle)) <= max_tokens:
            low = middle
        else:
            high = middle
    return low


def _encode(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _encode_within(
    render: Callable[[int], Image.Image], edge: int, max_bytes: int | None, min_edge: int
) -> tuple[bytes, Image.Image]:
    """Encode ``render(edge)``, lowering quality and then ``edge`` until it fits."""
    for _ in range(_MAX_SHRINKS):
        image = render(edge)
        for quality in _QUALITIES:
            data = _encode(image, quality)
            if max_bytes is None or len(data) <= max_bytes:
                return data, image
        if edge <= min_edge:
            break
        # JPEG size grows about with the pixel count, so scale the edge by sqrt(ratio).
        shrink = min(0.9, 0.95 * math.sqrt(max_bytes / len(data)))
        edge = max(min_edge, int(edge * shrink))
    raise PreviewBudgetError(
        f"no preview fits in {max_bytes:,} bytes even at {edge} px and JPEG quality "
        f"{_QUALITIES[-1]}; allow more bytes"
    )


def _preview_of(
    decoded: _Decoded, *, max_bytes: int | None, max_tokens: int | None, min_edge: int
) -> Preview:
    base = decoded.image
    longest = max(base.size)
    if max_bytes is not None and max_bytes < 1:
        raise PreviewBudgetError("no bytes left in the budget")
    edge = _fit_edge(lambda e: _scaled(base.width, base.height, e), longest, max_tokens)
    if edge < min(min_edge, longest):
        raise PreviewBudgetError(f"max_tokens={max_tokens} allows only {edge} px")

    def render(size_edge: int) -> Image.Image:
        size = _scaled(base.width, base.height, size_edge)
        return base if size == base.size else base.resize(size, _RESAMPLE)

    data, image = _encode_within(render, edge, max_bytes, min(min_edge, edge))
    return Preview(
        data,
        PREVIEW_MIME_TYPE,
        image.width,
        image.height,
        decoded.source_width,
        decoded.source_height,
    )


# -- contact sheets ---------------------------------------------------------------------


def _sheet_labels(count: int, labels: Sequence[str] | None) -> list[str]:
    if not 1 <= count <= MAX_SHEET_IMAGES:
        raise ContactSheetError(
            f"a contact sheet takes 1 to {MAX_SHEET_IMAGES} images, got {count}; "
            "split larger batches into several sheets"
        )
    if labels is None:
        return [str(number) for number in range(1, count + 1)]
    if len(labels) != count:
        raise ContactSheetError(f"got {len(labels)} labels for {count} images; give one each")
    return [shorten_label(label) for label in labels]


def shorten_label(label: str, limit: int = _MAX_LABEL_CHARS) -> str:
    """A label on one line, cut to ``limit`` characters."""
    label = " ".join(str(label).split())
    if len(label) <= limit:
        return label
    return label[: limit - 3] + "..."


def _layout(sizes: Sequence[tuple[int, int]]) -> _Layout:
    """Pick the column count whose grid of typical-shaped cells is closest to square."""
    aspects = sorted(width / height for width, height in sizes)
    aspect = min(4.0, max(0.25, aspects[len(aspects) // 2]))
    count = len(sizes)

    def badness(cols: int) -> tuple[float, int]:
        rows = math.ceil(count / cols)
        return abs(math.log(cols * aspect / rows)), cols * rows - count

    cols = min(range(1, count + 1), key=badness)
    height_cap = max(min(height, width / aspect) for width, height in sizes)
    return _Layout(cols, math.ceil(count / cols), aspect, max(1, int(height_cap)))


def _sheet_geometry(layout: _Layout, edge: int) -> tuple[int, int, int, int, int]:
    """Cell width, cell height, gap, sheet width and height for a sheet of long edge ``edge``."""
    gap = max(2, edge // 256)
    by_width = (edge - (layout.cols + 1) * gap) / (layout.cols * layout.aspect)
    by_height = (edge - (layout.rows + 1) * gap) / layout.rows
    cell_h = max(1, int(min(by_width, by_height, layout.height_cap)))
    cell_w = max(1, int(cell_h * layout.aspect))  # floor keeps the sheet within edge
    sheet_w = layout.cols * cell_w + (layout.cols + 1) * gap
    sheet_h = layout.rows * cell_h + (layout.rows + 1) * gap
    return cell_w, cell_h, gap, sheet_w, sheet_h


def _sheet_preview(
    bases: Sequence[_Decoded],
    labels: Sequence[str],
    max_edge: int,
    max_bytes: int | None,
    max_tokens: int | None,
) -> Preview:
    layout = _layout([decoded.image.size for decoded in bases])
    tiles = [decoded.image for decoded in bases]

    def size_at(edge: int) -> tuple[int, int]:
        return _sheet_geometry(layout, edge)[3:]

    edge = _fit_edge(size_at, max_edge, max_tokens)
    data, image = _encode_within(
        lambda e: _render_sheet(layout, tiles, labels, e), edge, max_bytes, _MIN_EDGE
    )
    full_width, full_height = size_at(max_edge)
    return Preview(data, PREVIEW_MIME_TYPE, image.width, image.height, full_width, full_height)


def _render_sheet(
    layout: _Layout, tiles: Sequence[Image.Image], labels: Sequence[str], edge: int
) -> Image.Image:
    cell_w, cell_h, gap, sheet_w, sheet_h = _sheet_geometry(layout, edge)
    sheet = Image.new("RGB", (sheet_w, sheet_h), _SHEET_BACKGROUND)
    font_px = max(10, min(48, cell_h // 6))
    font = ImageFont.load_default(size=font_px)  # built in; no font file needed
    for index, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        row, col = divmod(index, layout.cols)
        fitted = _fit_into(tile, cell_w, cell_h)
        draw_label(fitted, label, font, font_px)
        left = gap + col * (cell_w + gap) + (cell_w - fitted.width) // 2
        top = gap + row * (cell_h + gap) + (cell_h - fitted.height) // 2
        sheet.paste(fitted, (left, top))
    return sheet


def _fit_into(tile: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / tile.width, height / tile.height, 1.0)
    size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
    fitted = tile.resize(size, _RESAMPLE) if size != tile.size else tile.copy()
    return fitted.convert("RGB")


def draw_label(
    tile: Image.Image, label: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, px: int
) -> None:
    """Draw ``label`` white on black in the top-left corner; the tile clips it if tiny."""
    if not label:
        return
    draw = ImageDraw.Draw(tile)
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    pad = max(2, px // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), label, font=font, fill=(255, 255, 255))
