"""What every task's decoding shares: base64 media, the site's bounds, the bounded image loader."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image

from ..errors import InvalidInput

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # one image
MAX_CALL_PIXELS = 400_000_000  # all the images of one call
MAX_AUDIO_BYTES = 20 * 1024 * 1024
MAX_TEXT_CHARS = 20_000  # one text
# Pillow's decompression-bomb guard (it warns above the limit and refuses above twice it, from
# the header, before decoding) at the site's limit rather than its default of ~89 M pixels;
# load_image refuses anything over MAX_IMAGE_PIXELS itself.
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def b64_bytes(data: Any, what: str, limit: int) -> bytes:
    """The bytes of a base64 string (optionally a data: URL), at most ``limit`` of them."""
    if not isinstance(data, str):
        raise InvalidInput(f"{what} is a base64 string (optionally a data: URL)")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > limit * 4 // 3 + 4:
        raise InvalidInput(f"{what} is larger than {limit >> 20} MB")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64") from exc


def load_image(data: Any) -> Image.Image:
    """A base64 image (optionally a data: URL) decoded: PNG, JPEG, GIF, BMP or WebP of at
    most MAX_IMAGE_PIXELS. Anything else, a decompression bomb included, is InvalidInput."""
    raw = b64_bytes(data, "an image", MAX_IMAGE_BYTES)
    try:
        img = Image.open(io.BytesIO(raw))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise InvalidInput(f"image has too many pixels ({img.width}x{img.height}; at most "
                               f"{MAX_IMAGE_PIXELS:,})")
        img.load()
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image has too many pixels (at most {MAX_IMAGE_PIXELS:,})") from exc
    except Exception as exc:  # Pillow's decoders fail in many ways on hostile bytes
        raise InvalidInput("image could not be decoded (PNG, JPEG, GIF, BMP, WebP)") from exc
    return img


def media_list(payload: dict[str, Any], one: str, many: str, what: str,
               max_batch: int) -> list[Any]:
    """``payload[one]`` or the list ``payload[many]``, within the model's batch."""
    items = payload.get(many, [payload[one]] if one in payload else None)
    if not isinstance(items, list) or not items:
        raise InvalidInput(f"send '{one}' ({what}) or '{many}' (a list of them)")
    if len(items) > max_batch:
        raise InvalidInput(f"at most {max_batch} {many} per call (max_batch)")
    return items


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")
