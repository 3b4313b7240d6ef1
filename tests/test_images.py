"""Decoding: every supported format and mode ends as (S, S, 3) uint8 RGB, bad files are refused."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data.images import BadImage, is_image_name, load_array, to_rgb


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


def test_a_jpeg_over_the_limit_is_judged_by_the_size_it_decodes_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A 108-megapixel phone photo against Pillow's 89-megapixel limit, in small: 120x120 pixels
    # against a limit of 5,000. Draft mode decodes the JPEG at 15x15 for 12 pixels a side; the
    # PNG, or the JPEG wanted at 100 pixels a side, would be decoded whole.
    photo = Image.fromarray(np.kron(_gradient(12), np.ones((10, 10, 1))).astype(np.uint8), "RGB")
    photo.save(tmp_path / "big.jpg", quality=95)
    photo.save(tmp_path / "big.png")
    whole = load_array(tmp_path / "big.jpg", 12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    assert np.array_equal(load_array(tmp_path / "big.jpg", 12), whole)
    for path, size in ((tmp_path / "big.png", 12), (tmp_path / "big.jpg", 100)):
        with pytest.raises(BadImage, match="decompression bomb"):
            load_array(path, size)


def test_a_decoders_own_failure_is_a_bad_image_naming_its_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "odd.tif"
    Image.fromarray(_gradient().astype(np.uint8), "RGB").save(path)

    def broken_load(self):  # as a fuzzed TIFF makes Pillow's decoder fail
        raise TypeError("'str' object cannot be interpreted as an integer")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken_load)
    with pytest.raises(BadImage, match="cannot be decoded .TypeError: 'str' object"):
        load_array(path, 8)


def test_image_names():
    assert is_image_name(Path("a/B.JPEG"))
    assert is_image_name(Path("猫/写真.webp"))
    assert not is_image_name(Path("a/.hidden.png"))
    assert not is_image_name(Path("a/notes.txt"))


def camera_photo(path: Path, width: int = 1600, height: int = 1200, seed: int = 0) -> Path:
    """A photo-like JPEG at a camera's size: smooth shapes and shading with fine sensor noise."""
    path.write_bytes(_camera_jpeg(width, height, seed))
    return path


@functools.cache
def _camera_jpeg(width: int, height: int, seed: int) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
        img[..., c] = 128 + 90 * np.sin(xx / width * fx * 3.1 + phase) * np.cos(yy / height * fy * 3.1)
    for _ in range(6):  # a few bright discs, like objects in a scene
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(60, 250)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += rng.uniform(-80, 80, 3)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("size", [32, 100, 300])
def test_jpeg_draft_decoding_matches_a_full_decode(tmp_path: Path, size: int):
    path = camera_photo(tmp_path / "photo.jpg")
    with Image.open(path) as img:  # the old way: every pixel decoded, then one resize
        full = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)
    fast = load_array(path, size).astype(np.float64)
    assert fast.shape == (size, size, 3)
    assert abs(fast.mean() - full.mean()) < 0.5
    assert np.abs(fast - full).mean() < 2.5 and np.percentile(np.abs(fast - full), 99) < 12


def test_draft_decoding_keeps_at_least_the_target_size(tmp_path: Path):
    from imgclf.data.images import load_image

    path = camera_photo(tmp_path / "wide.jpg", width=1000, height=240)
    # 240 / 100 = 2.4: the decoder may halve (120 >= 100) but not quarter (60 < 100).
    with Image.open(path) as img:
        img.draft(None, (100, 100))
        assert img.size == (500, 120)
    assert load_image(path, 100).size == (100, 100)


def test_exif_rotated_camera_jpeg_comes_out_upright(tmp_path: Path):
    # As a phone stores a portrait photo: landscape pixels, and EXIF saying "turn 90 degrees".
    arr = np.zeros((1200, 1600, 3), dtype=np.uint8)
    arr[:, :800] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "portrait.jpg"
    Image.fromarray(arr, "RGB").save(path, exif=exif, quality=90)
    out = load_array(path, 64)
    assert out[:28].mean() > 240 and out[-28:].mean() < 15  # white on top once upright


def test_large_png_is_shrunk_like_a_plain_resize(tmp_path: Path):
    path = camera_photo(tmp_path / "photo.jpg")
    png = tmp_path / "photo.png"
    with Image.open(path) as img:
        img.save(png)
        plain = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
    out = load_array(png, 64).astype(np.float64)
    assert np.abs(out - plain).mean() < 1.0
