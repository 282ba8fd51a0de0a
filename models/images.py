"""Untrusted image bytes to a PIL image, refusing what is corrupt, unsupported or too large.

Every check that bounds memory runs before any pixel is decoded: the byte size,
then the header's format and width x height (``Image.open`` is lazy), and
Pillow's own decompression-bomb guard is turned from a warning into a refusal.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from jobs.errors import InvalidInput

DEFAULT_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_bytes: int,
    formats: frozenset[str] = DEFAULT_FORMATS,
) -> Image.Image:
    """Decode ``data`` to an RGB image, or raise InvalidInput saying what is wrong with it."""
    if len(data) > max_bytes:
        raise InvalidInput(f"image is {len(data):,} bytes; the limit for this kind is max_input_bytes={max_bytes}")
    allowed = ", ".join(sorted(formats))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # only the allowed formats' parsers ever see the bytes
            image = Image.open(io.BytesIO(data), formats=sorted(formats))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidInput(f"image refused as a decompression bomb ({exc}); send a smaller image") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidInput(f"the image is not a readable {allowed} file ({exc})") from None
        if image.format not in formats:
            raise InvalidInput(f"image format {image.format} is not accepted; send one of {allowed}")
        width, height = image.size
        if width * height > max_pixels:
            raise InvalidInput(
                f"image is {width}×{height} = {width * height:,} pixels; "
                f"the limit for this kind is max_image_pixels={max_pixels}"
            )
        try:
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")  # phone photos: honour the EXIF rotation
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidInput(f"image refused as a decompression bomb ({exc}); send a smaller image") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidInput(f"the {image.format} image is corrupt or truncated ({exc})") from None
    return rgb


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image``; the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
