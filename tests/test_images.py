"""Decoding: every supported format and mode ends as (S, S, 3) uint8 RGB, bad files are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.images import BadImage, is_image_name, load_array, to_rgb


def _gradient(size: int = 12) -> np.ndarray:
    x = np.linspace(0, 255, size, dtype=np.float64)
    return np.stack([np.tile(x, (size, 1)), np.tile(x[:, None], (1, size)), np.full((size, size), 128.0)], -1)


@pytest.mark.parametrize(
    "fmt, suffix", [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif")]
)
def test_each_format_decodes_to_rgb(tmp_path: Path, fmt: str, suffix: str):
    img = Image.fromarray(_gradient().astype(np.uint8), "RGB")
    path = tmp_path / f"img.{suffix}"
    img.save(path, format=fmt)
    arr = load_array(path, 8)
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8
    # Left-to-right gradient in red survives every format (GIF's palette included).
    assert arr[:, -1, 0].mean() > arr[:, 0, 0].mean() + 100


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "YCbCr", "I", "F", "I;16"])
def test_each_mode_converts_to_rgb(tmp_path: Path, mode: str):
    src = Image.fromarray(_gradient().astype(np.uint8), "RGB")
    if mode == "I;16":
        img = Image.fromarray((_gradient()[..., 0] * 257).astype(np.uint16))
        assert img.mode == "I;16"
    elif mode in ("I", "F"):
        img = src.convert("L").convert(mode)
    else:
        img = src.convert(mode)
    suffix = {"CMYK": "jpg", "YCbCr": "jpg", "I": "tif", "F": "tif"}.get(mode, "png")
    path = tmp_path / f"img.{suffix}"
    img.save(path)
    arr = load_array(path, 12)
    assert arr.shape == (12, 12, 3) and arr.dtype == np.uint8
    assert arr.max() > 150, "the bright side must stay bright"


def test_sixteen_bit_is_scaled_not_clipped():
    img = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    out = np.asarray(to_rgb(img))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_transparency_is_flattened_onto_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (out == 255).all()


def test_exif_orientation_is_applied(tmp_path: Path):
    # A wide image whose EXIF says "rotate 90 degrees" must come out tall (before resizing).
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = 255  # left half white
    img = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_array(path, 20)
    # After a 90-degree clockwise turn, the white left half is on top.
    assert out[:8].mean() > 200 and out[-8:].mean() < 50


def test_animated_gif_uses_first_frame(tmp_path: Path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 0, 250))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = load_array(path, 8)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "not an image"),
        (b"hello, I am a text file\n", "not an image"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not an image"),
    ],
)
def test_non_images_are_refused(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        load_array(path, 8)


def test_truncated_file_is_refused(tmp_path: Path):
    path = tmp_path / "cut.png"
    Image.fromarray(_gradient(64).astype(np.uint8), "RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="corrupt or truncated"):
        load_array(path, 8)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # make a small file count as a bomb
    with pytest.raises(BadImage, match="decompression bomb"):
        load_array(path, 8)


def test_image_names():
    assert is_image_name(Path("a/B.JPEG"))
    assert is_image_name(Path("猫/写真.webp"))
    assert not is_image_name(Path("a/.hidden.png"))
    assert not is_image_name(Path("a/notes.txt"))
