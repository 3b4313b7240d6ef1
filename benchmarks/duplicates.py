"""Planted copies of photos against the duplicate finder: what it finds, what it joins wrongly, how fast.

    python -m benchmarks.duplicates                        # 300 photos of each kind, at 64 and 100 px
    python -m benchmarks.duplicates --photos 100 --sizes 64

Writes two folders of 640x480 camera-like JPEGs (quality 90) in two classes: ``camera``, the
photos of ``benchmarks/seed_vs_project.py`` (a blurred digit on a plain, shaded scene: much
alike, a hard case), and ``textured``, ``tests/helpers.make_photo``'s (colour noise smoothed at
several scales under a few shapes). It plants a copy of every third photo, recording which,
cycling through: resized to half size, re-encoded at quality 50, mirrored, cropped by 4 pixels
on each side, and cropped by 12 (2%: beyond what the hash tolerates, to show the limit).

Then, per size, it decodes the folder the augment stage's way (worker processes) and runs
:func:`imgclf.data.duplicates.find`, and prints per kind of copy how many it found (in the
original's group), the unrelated photos it grouped wrongly, the seconds taken, and the same
counts at other thresholds. Last, the demo digits (where no two are copies), the seconds to
compare and group 10,000 hashes, and to hash 10,000 images. Nothing here asserts: it measures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.seed_vs_project import generate_camera
from imgclf.data import dataset, duplicates
from imgclf.data.pool import default_workers, worker_pool
from tests.helpers import make_photo

WIDTH, HEIGHT = 640, 480
KINDS = {
    "resized 1/2": (lambda img: img.resize((WIDTH // 2, HEIGHT // 2), Image.Resampling.BICUBIC), 90),
    "JPEG q50": (lambda img: img, 50),
    "mirrored": (lambda img: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90),
    "cropped 4 px": (lambda img: img.crop((4, 4, WIDTH - 4, HEIGHT - 4)), 90),
    "cropped 12 px": (lambda img: img.crop((12, 12, WIDTH - 12, HEIGHT - 12)), 90),
}
SWEEP = (12, 16, 20, 24, 28)


def write_camera(root: Path, count: int) -> Path:
    """``count`` photos of ``benchmarks/seed_vs_project.py``, one class folder per digit."""
    return generate_camera(root, count, 0, WIDTH, HEIGHT)


def write_textured(root: Path, count: int) -> Path:
    """``count`` textured photos in two class folders."""
    for n in range(count):
        folder = root / str(n % 2)
        folder.mkdir(parents=True, exist_ok=True)
        make_photo(n, WIDTH, HEIGHT).save(folder / f"{n:05d}.jpg", quality=90)
    return root


def plant(root: Path) -> dict[Path, tuple[str, Path]]:
    """A copy of every third photo under ``root`` beside it, kinds in turn; {copy: (kind, original)}."""
    planted = {}
    for n, original in enumerate(sorted(root.rglob("*.jpg"))[::3]):
        kind = list(KINDS)[n % len(KINDS)]
        make, quality = KINDS[kind]
        copy = original.with_name(f"{original.stem}-copy.jpg")
        with Image.open(original) as img:
            make(img.convert("RGB")).save(copy, quality=quality)
        planted[copy] = (kind, original)
    return planted


def score(groups: duplicates.Groups, files: list[Path], planted: dict[Path, tuple[str, Path]]) -> tuple[dict, int]:
    """Per kind (found, planted), and how many images share a group with an unrelated photo."""
    index = {f: k for k, f in enumerate(files)}
    family = np.arange(len(files))
    for copy, (_, original) in planted.items():
        family[index[copy]] = index[original]
    found: dict[str, list[int]] = {kind: [0, 0] for kind in KINDS}
    for copy, (kind, original) in planted.items():
        found[kind][1] += 1
        found[kind][0] += int(groups.group[index[copy]] == groups.group[index[original]])
    wrong = sum(len(g.positions) for g in groups.groups if len(set(family[g.positions])) > 1)
    return found, wrong


def measure(root: Path, planted: dict, size: int, imap) -> None:
    """Decode ``root`` at ``size``, find the copies, print the scores."""
    with tempfile.TemporaryDirectory() as scratch:
        src = dataset.scan(root)
        started = time.perf_counter()
        decoded = dataset.decode(src, size, Path(scratch), imap=imap)
        decoding = time.perf_counter() - started
        plain, mirror = duplicates.hash_decoded(decoded, imap)
        hashing = time.perf_counter() - started - decoding
        groups = duplicates.group_hashes(plain, mirror)
        grouping = time.perf_counter() - started - decoding - hashing
        files = [src.files[row] for row in decoded.rows]
        del decoded
    found, wrong = score(groups, files, planted)
    print(f"  {size} px: {len(files)} images, {len(groups.groups)} groups; wrongly grouped: {wrong}")
    print("    found/planted: " + ", ".join(f"{k} {f}/{n}" for k, (f, n) in found.items()))
    print(f"    seconds: decode {decoding:.2f}, hash {hashing:.2f}, group {grouping:.3f}")
    for threshold in SWEEP:
        found, wrong = score(duplicates.group_hashes(plain, mirror, threshold), files, planted)
        total = sum(f for f, _ in found.values())
        print(f"    threshold {threshold:2d}: found {total}/{len(planted)}, wrongly grouped {wrong}  " + str(found))


def demo_digits(imap) -> tuple[np.ndarray, np.ndarray]:
    """The demo's digits at 32 px: print the groups found and the closest pair; return the hashes."""
    from imgclf.data.demo import write_digits

    with tempfile.TemporaryDirectory() as work:
        write_digits(Path(work) / "digits")
        decoded = dataset.decode(dataset.scan(Path(work) / "digits"), 32, Path(work), imap=imap)
        plain, mirror = duplicates.hash_decoded(decoded, imap)
        del decoded
    groups = duplicates.group_hashes(plain, mirror)
    closest = next(t for t in range(257) if len(duplicates.close_pairs(plain, mirror, t)[0]))
    print(f"demo digits, {len(plain)} at 32 px: {len(groups.groups)} groups; closest pair {closest} bits apart")
    return plain, mirror


def ten_thousand(digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Seconds to group 10,000 hashes (random ones, and ones as alike as the digits': a digit's
    hashes with 30 bits flipped), and to hash 10,000 images on one core."""
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(digits[0]), 10_000)
    noise = np.zeros((10_000, duplicates.WORDS), dtype=np.uint64)
    for _ in range(30):
        word, bit = rng.integers(0, duplicates.WORDS, 10_000), rng.integers(0, 64, 10_000).astype(np.uint64)
        noise[np.arange(10_000), word] ^= np.uint64(1) << bit
    sets = {
        "random": [rng.integers(0, 2**64, (10_000, duplicates.WORDS), dtype=np.uint64) for _ in range(2)],
        "digit-like": [digits[0][pick] ^ noise, digits[1][pick] ^ noise],
    }
    for name, (plain, mirror) in sets.items():
        started = time.perf_counter()
        duplicates.group_hashes(plain, mirror)
        print(f"10,000 {name} hashes compared and grouped: {time.perf_counter() - started:.2f} s")
    images = rng.integers(0, 256, (200, 100, 100, 3), dtype=np.uint8)
    started = time.perf_counter()
    for image in images:
        for side in (image, image[:, ::-1]):
            duplicates.phash_words(side)
    print(f"10,000 images of 100 px hashed (with mirrors) on one core: {(time.perf_counter() - started) * 50:.1f} s")


WRITERS = {"camera": write_camera, "textured": write_textured}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=300, help="photos of each kind before the copies")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 100], help="data.image_size values to try")
    ap.add_argument("--workers", type=int, default=default_workers())
    args = ap.parse_args()
    print(f"hash: phash {duplicates.HASH_SIZE}x{duplicates.HASH_SIZE} bits, threshold {duplicates.THRESHOLD}")
    with tempfile.TemporaryDirectory(prefix="imgclf-duplicates-") as work, worker_pool(args.workers) as imap:
        for name, write in WRITERS.items():
            started = time.perf_counter()
            root = write(Path(work) / name, args.photos)
            planted = plant(root)
            seconds = time.perf_counter() - started
            print(f"{name}: {args.photos} photos + {len(planted)} copies ({seconds:.0f} s to write)")
            for size in args.sizes:
                measure(root, planted, size, imap)
        digits = demo_digits(imap)
    ten_thousand(digits)


if __name__ == "__main__":
    main()
