"""What a stage reads, described as MLflow run inputs: names, DVC digests, the DVC remote.

Plain data (:class:`~imgclf.tracking.result.DataInput`); :mod:`imgclf.tracking.datasets` turns it into
MLflow datasets. The digest of a folder of images is DVC's own MD5 of it (the ``md5`` that
``dvc.lock`` records for the augment stage's dependency), read from DVC's hash cache when DVC
has just hashed it; the digest of a prepared split is the prepared fingerprint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from imgclf.core import paths
from imgclf.core.fileio import md5_tree
from imgclf.core.prepared import Prepared, fingerprint
from imgclf.tracking.result import DataInput

log = logging.getLogger(__name__)


def remote_url(root: Path = paths.ROOT) -> str | None:
    """The URL of the project's default DVC remote (``dvc remote add -d``), or None.

    Read from DVC's config files as DVC layers them (global, then the project's ``config``,
    then its ``config.local``) without importing DVC, which takes a third of a second.
    """
    import configparser
    import os

    config = configparser.ConfigParser(interpolation=None, strict=False)
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    try:
        config.read([home / "dvc" / "config", root / ".dvc" / "config", root / ".dvc" / "config.local"])
        name = config.get("core", "remote", fallback=None)
        return config.get(f"'remote \"{name}\"'", "url", fallback=None) if name else None
    except configparser.Error as err:  # a broken DVC config is DVC's to report, not ours
        log.debug("no DVC remote: %s", err)
        return None


def folder_md5(folder: Path, root: Path = paths.ROOT) -> str:
    """DVC's MD5 of ``folder`` (as in ``dvc.lock``, without ``.dir``).

    Inside a DVC project, DVC's state cache answers for files it hashed already (``dvc repro``
    hashes a stage's dependencies before running it), so the images are not read again.
    Elsewhere DVC hashes them afresh; if DVC cannot, an MD5 of every file stands in.
    """
    try:
        from dvc_data.hashfile.build import build

        try:
            from dvc.repo import Repo

            with Repo(str(root)) as repo:
                _, _, tree = build(
                    repo.cache.local, str(folder), repo.fs, "md5", state=repo.state, ignore=repo.dvcignore, dry_run=True
                )
        except Exception:  # not a DVC project: no state, no .dvcignore
            import tempfile

            from dvc.fs import LocalFileSystem
            from dvc_data.hashfile.db import HashFileDB

            fs = LocalFileSystem()
            with tempfile.TemporaryDirectory() as scratch:
                _, _, tree = build(HashFileDB(fs, scratch), str(folder), fs, "md5", dry_run=True)
        return tree.hash_info.value.removesuffix(".dir")
    except Exception as err:
        log.debug("DVC could not hash %s (%s); hashing its files", folder, err)
        return md5_tree(folder)


def _location(folder: Path) -> str:
    return remote_url() or str(folder.resolve())


def _relative(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(paths.ROOT))
    except ValueError:
        return str(folder.resolve())


def _data_input(
    name: str, context: str, md5: str, location: str, folder: Path, labels: list[str], y, **facts
) -> DataInput:
    """A :class:`DataInput` whose profile counts the images per class of ``y`` (class indices)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(labels))
    profile = {"path": _relative(folder), "md5": md5, "images": int(counts.sum()), **facts}
    profile["images_per_class"] = dict(zip(labels, map(int, counts)))
    return DataInput(name=name, context=context, digest=md5, location=location, profile=profile)


def source_input(root: Path, labels: list[str], y: list[int], ignored_files: int) -> DataInput:
    """The folder of class folders that augment reads (``root``), whose image files have the
    class indices ``y``. (Not a :class:`~imgclf.data.dataset.Source`: train and evaluate import this
    module, and must not depend on the decoding code.)"""
    return _data_input(
        root.name,
        "source",
        folder_md5(root),
        _location(root),
        root,
        labels,
        y,
        classes=len(labels),
        ignored_files=ignored_files,
    )


def split_inputs(folder: Path, data: Prepared, splits: tuple[str, ...], source_name: str) -> list[DataInput]:
    """The ``splits`` of the prepared arrays in ``folder``, named ``<source_name>/<split>``."""
    md5, location = fingerprint(folder), _location(folder)
    return [
        _data_input(
            f"{source_name}/{split}",
            split,
            md5,
            location,
            folder,
            data.labels,
            data.y[split],
            shape=list(data.x[split].shape),
            dtype=str(data.x[split].dtype),
        )
        for split in splits
    ]
