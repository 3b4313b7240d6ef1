"""The embedded demo data: scikit-learn's bundled handwritten digits, written as class folders.

The 1,797 8x8 grey images ship inside scikit-learn (no download). Written as PNG files in one
folder per digit, they go through exactly the code path a user's photos take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.core.fileio import atomic_dir


def write_digits(out_dir: Path) -> dict[str, int]:
    """Write every digit as ``out_dir/<digit>/<index>.png``; return the count per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        for index, (image, target) in enumerate(zip(pixels, digits.target)):
            label = str(int(target))
            folder = tmp / label
            folder.mkdir(exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{index:04d}.png", optimize=False)
            counts[label] = counts.get(label, 0) + 1
    return counts
