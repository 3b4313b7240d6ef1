"""Finding image files and decoding any of them into a fixed-size RGB array, the same way for
training and prediction.

Pillow reads JPEG, PNG, BMP, GIF, WebP and TIFF. Every mode ends as 8-bit RGB: 16-bit and float
images are scaled (not clipped) into 0..255, transparency is flattened onto white, EXIF
orientation is applied, and animated files use their first frame.

Decoding works at the size needed, not at the camera's: a JPEG is decoded in *draft* mode, where
the decoder scales by 1/2, 1/4 or 1/8 as it decodes, to the smallest scale that still has at
least ``size`` pixels a side; what is left is resized as before (bilinear). Other formats are
decoded whole, then shrunk first by whole-number box averaging down to no less than twice the
target (Pillow's ``reducing_gap=2``, which its documentation calls indistinguishable from a
plain resize) and then resized. A 1600x1200 camera JPEG to 100x100 decodes about four times
faster this way (``benchmarks/seed_vs_project.py --camera``). Pillow's decompression-bomb limit (about 89
megapixels) applies to what is decoded, so a larger camera JPEG passes when draft mode brings it
under; anything a decoder cannot read, however it fails, is a :class:`BadImage` naming why.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RESAMPLE = Image.Resampling.BILINEAR
# Shrink by box averaging to no less than this many times the target before resizing.
REDUCING_GAP = 2.0
_BACKGROUND = (255, 255, 255)


class BadImage(Exception):
    """A file that cannot be used as an image; the message says why."""


def is_image_name(path: Path) -> bool:
    """True for a visible file whose suffix is one of the supported formats."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def iter_files(folder: Path) -> Iterator[Path]:
    """Every visible file under ``folder`` (nested folders included), in a stable order.

    Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are left out. Symlinked
    files and folders are followed, each folder read once (the first path to it in name order),
    so a link back up makes no loop. The order is that of the paths relative to ``folder``, so it
    does not depend on the file system.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / name for name in filenames if not name.startswith(".")]
    yield from sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping wide ranges."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            top = 65535.0
        else:
            # 32-bit integer and float images have no fixed range: stretch what is there.
            arr = arr - arr.min()
            top = float(arr.max()) or 1.0
        img = Image.fromarray(np.round(arr * (255.0 / top)).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        img = Image.alpha_composite(canvas, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _open(path: Path, size: int) -> Image.Image:
    """Open ``path`` for decoding at ``size``. Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``,
    its warning made an error too) applies to what is decoded: a JPEG's size after draft mode,
    so a 108-megapixel photo, decoded at an eighth a side, is not refused as a bomb."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            with open(path, "rb") as fh:
                if fh.read(3) != b"\xff\xd8\xff":  # not a JPEG
                    raise
            from PIL import JpegImagePlugin

            img = JpegImagePlugin.JpegImageFile(path)  # opened without the check of Image.open
            img.draft(None, (size, size))
            if img.width * img.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                img.close()
                raise
            return img


def load_image(path: Path, size: int) -> Image.Image:
    """Decode ``path`` to a ``size`` x ``size`` RGB image, or raise :class:`BadImage`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(path, size) as img:
                img.seek(0)
                if img.format == "JPEG":
                    # Scale in the decoder, keeping at least `size` pixels on each side.
                    img.draft(None, (size, size))
                img.load()
                img = ImageOps.exif_transpose(img)
                img = to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"decompression bomb refused ({err})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImage(f"corrupt or truncated ({err})") from None
    except Exception as err:  # a decoder's own failure on a malformed file (a TypeError, a MemoryError)
        raise BadImage(f"cannot be decoded ({type(err).__name__}: {err})") from None
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return img


def load_array(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to a ``(size, size, 3)`` uint8 array."""
    return np.asarray(load_image(path, size), dtype=np.uint8)
