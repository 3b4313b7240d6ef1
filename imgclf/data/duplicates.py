"""Copies of one photo among the decoded originals: found, grouped, kept on one side of the split.

Scraped image sets hold the same photo several times (resized, re-encoded, mirrored, slightly
cropped); one copy in train and another in test inflates the test accuracy. :func:`find` hashes
every decoded original and its mirror image with a perceptual hash (``imagehash.phash``, 256
bits), compares the hashes in NumPy blocks and joins the pairs that differ in at most
:data:`THRESHOLD` bits into :class:`Groups`; :func:`split` splits them (``data.duplicates``):
``group`` puts each group on one side, ``keep`` splits as if they were unrelated, ``drop``
keeps only the first image of each group.

Why this hash and threshold (docs/architecture.md has the figures): the usual 64-bit phash puts
distinct demo digits 2 bits apart, closer than many re-encoded copies of a photo; the 256-bit
one keeps the closest two digits 26 bits apart, while resized, re-encoded and mirrored copies of
a photo, and most copies cropped by 4 pixels of 640, stay within 20.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from imgclf.data import dataset
from imgclf.data.dataset import CHUNK, Decoded

log = logging.getLogger(__name__)

HASH_SIZE = 16  # phash side: HASH_SIZE**2 = 256 bits
WORDS = HASH_SIZE**2 // 64  # 64-bit words per hash
THRESHOLD = 20  # most differing bits for a pair of copies (of 256)
PAIRS_PER_BLOCK = 1 << 22  # hash pairs compared at once: bounds the memory of a block
MIXED_EXAMPLES = 3  # groups named in the warning about copies in different class folders
MODES = {
    "group": "each group kept in one split",
    "keep": "split as if unrelated",
    "drop": "only the first image of each group kept",
}


class Group(NamedTuple):
    """Positions of one group of copies (ascending, so the first is the one ``drop`` keeps), each
    member's distance in bits to the first member's hash, and whether that is to its mirror image."""

    positions: np.ndarray
    distance: np.ndarray
    mirrored: np.ndarray


@dataclass
class Groups:
    """Copies among ``n`` positions (as in :func:`~imgclf.data.dataset.split_indices`).

    ``group[i]`` is the position of the first member of ``i``'s group (``i`` itself for an image
    without copies); ``groups`` lists the groups of two or more images, by first position.
    """

    group: np.ndarray
    groups: list[Group]

    @property
    def images(self) -> int:
        """Images that belong to a group of copies."""
        return sum(len(g.positions) for g in self.groups)

    @property
    def copies(self) -> int:
        """Images beyond the first of each group (what ``drop`` removes)."""
        return self.images - len(self.groups)


def phash_words(image: np.ndarray) -> np.ndarray:
    """The 256-bit perceptual hash of one RGB uint8 image as four big-endian 64-bit words."""
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(image)), hash_size=HASH_SIZE).hash
    return np.packbits(bits.ravel()).view(">u8").astype(np.uint64)


class HashTask(NamedTuple):
    """One worker task: hash rows ``rows`` of the decoded originals (a .npy file)."""

    originals: str
    rows: list[int]


def _hash_chunk(task: HashTask) -> tuple[np.ndarray, np.ndarray]:
    """Worker: the hashes of ``task.rows`` and of their mirror images, (rows, 4) uint64 each."""
    x = np.load(task.originals, mmap_mode="r")
    plain = np.empty((len(task.rows), WORDS), dtype=np.uint64)
    mirror = np.empty_like(plain)
    for k, row in enumerate(task.rows):
        plain[k] = phash_words(x[row])
        mirror[k] = phash_words(x[row][:, ::-1])
    return plain, mirror


def hash_decoded(decoded: Decoded, imap: Callable = map, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every position of ``decoded`` and of its mirror image, chunk by chunk from the
    memory-mapped originals over ``imap`` (see :func:`imgclf.data.pool.worker_pool`)."""
    from tqdm import tqdm

    rows = decoded.rows.tolist()
    tasks = [HashTask(str(decoded.path), rows[i : i + CHUNK]) for i in range(0, len(rows), CHUNK)]
    plain, mirror = [np.empty((0, WORDS), dtype=np.uint64)], [np.empty((0, WORDS), dtype=np.uint64)]
    with tqdm(total=len(rows), desc="duplicates", unit="img", disable=not progress) as bar:
        for h, m in imap(_hash_chunk, tasks):
            plain.append(h)
            mirror.append(m)
            bar.update(len(h))
    return np.concatenate(plain), np.concatenate(mirror)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits between rows of hash words ``a`` and ``b`` (broadcast)."""
    return np.bitwise_count(a ^ b).sum(axis=-1, dtype=np.int64)


def close_pairs(
    plain: np.ndarray, mirror: np.ndarray, threshold: int = THRESHOLD, pairs_per_block: int = PAIRS_PER_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Position pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``threshold`` bits,
    directly or with ``j`` mirrored.

    Rows are compared in blocks of about ``pairs_per_block`` pairs against the later positions;
    a pair within ``threshold`` differs in at most that many bits in the first word alone, so
    only pairs that pass that test are compared on all words.
    """
    n = len(plain)
    block = max(1, pairs_per_block // max(n, 1))
    found_i, found_j = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        first = plain[start:stop, None, 0]
        near = np.bitwise_count(first ^ plain[None, start:, 0]) <= threshold
        near |= np.bitwise_count(first ^ mirror[None, start:, 0]) <= threshold
        i, j = np.nonzero(near)
        i, j = i + start, j + start
        later = j > i
        i, j = i[later], j[later]
        close = np.minimum(distances(plain[i], plain[j]), distances(plain[i], mirror[j])) <= threshold
        found_i.append(i[close])
        found_j.append(j[close])
    return np.concatenate(found_i or [np.empty(0, int)]), np.concatenate(found_j or [np.empty(0, int)])


def group_hashes(plain: np.ndarray, mirror: np.ndarray, threshold: int = THRESHOLD) -> Groups:
    """Join the pairs of :func:`close_pairs` into groups (connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(plain)
    i, j = close_pairs(plain, mirror, threshold)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first = np.full(n, n, dtype=np.int64)
    np.minimum.at(first, component, np.arange(n))
    group = first[component]
    members = np.flatnonzero(np.isin(group, group[i]))  # images in a group of two or more
    members = members[np.argsort(group[members], kind="stable")]  # by group, each ascending
    _, starts = np.unique(group[members], return_index=True)
    groups = []
    for positions in np.split(members, starts[1:]) if len(members) else []:
        head = positions[0]
        direct, mirrored = distances(plain[head], plain[positions]), distances(plain[head], mirror[positions])
        groups.append(Group(positions, np.minimum(direct, mirrored), mirrored < direct))
    return Groups(group=group, groups=groups)


def find(decoded: Decoded, imap: Callable = map, progress: bool = False) -> Groups:
    """The groups of copies among the usable originals of ``decoded``."""
    plain, mirror = hash_decoded(decoded, imap, progress)
    return group_hashes(plain, mirror)


def split(
    y: np.ndarray, groups: Groups, mode: str, test_size: float, val_size: float, seed: int, labels: list[str]
) -> dict[str, np.ndarray]:
    """Split positions as ``data.duplicates`` (``mode``) says: ``group`` splits the first
    members and sends each copy after its first; ``keep`` is the plain split; ``drop`` is
    ``group``'s split without the copies. With no copies all three are the plain split."""
    by_group = None if mode == "keep" else groups.group
    splits = dataset.split_indices(y, test_size, val_size, seed, labels, group=by_group)
    if mode == "drop":
        splits = {name: pos[groups.group[pos] == pos] for name, pos in splits.items()}
    return splits


def warn_mixed_classes(groups: Groups, names: list[str], y: np.ndarray, labels: list[str]) -> int:
    """Warn, in one line, about groups whose copies lie in different class folders (one photo
    filed under two classes): a few examples, then the count. Returns that count."""
    mixed = []
    for g in groups.groups:
        other = g.positions[y[g.positions] != y[g.positions[0]]]
        if len(other):
            mixed.append((g.positions[0], other[0]))
    if mixed:
        examples = ", ".join(
            f"{names[a]} ({labels[y[a]]}) = {names[b]} ({labels[y[b]]})" for a, b in mixed[:MIXED_EXAMPLES]
        )
        log.warning(
            "copies of one image in different class folders: %s; %d such group(s) in all (reports/duplicates.csv)",
            examples,
            len(mixed),
        )
    return len(mixed)


def summary(groups: Groups, mode: str) -> str:
    """One line for the log: what was found and what was done with it."""
    if not groups.groups:
        return f"duplicates: none found (data.duplicates: {mode})"
    done = MODES[mode] + (f", {groups.copies} copies dropped" if mode == "drop" else "")
    return (
        f"duplicates: {len(groups.groups)} groups holding {groups.images} images ({groups.copies} copies); "
        f"{done} (data.duplicates: {mode})"
    )


def report_csv(
    groups: Groups, names: list[str], y: np.ndarray, labels: list[str], splits: dict[str, np.ndarray]
) -> str:
    """The groups as CSV rows (group, file, class, split, distance, mirrored); ``names`` are the
    positions' files, ``split`` is ``dropped`` for a copy that ``drop`` removed."""
    where = np.full(len(y), "dropped", dtype=object)
    for name, positions in splits.items():
        where[positions] = name
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", "file", "class", "split", "distance", "mirrored"])
    for number, g in enumerate(groups.groups, start=1):
        for pos, dist, mirrored in zip(g.positions, g.distance, g.mirrored):
            writer.writerow([number, names[pos], labels[y[pos]], where[pos], int(dist), str(bool(mirrored)).lower()])
    return buf.getvalue()


def relative_names(files: list[Path], root: Path) -> list[str]:
    """Files as paths relative to ``root`` (the source folder), so reports do not depend on where
    the project lives."""
    return [Path(f).relative_to(root).as_posix() if Path(f).is_relative_to(root) else str(f) for f in files]
