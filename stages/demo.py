"""Stage ``demo``: write the embedded demo images (scikit-learn's digits) to ``data/demo``."""

from __future__ import annotations

import logging

from imgclf.console.cli import main
from imgclf.core import paths
from imgclf.data.demo import write_digits

log = logging.getLogger("demo")


def run() -> None:
    counts = write_digits(paths.DEMO_DIR)
    log.info("wrote %d demo images in %d classes to %s", sum(counts.values()), len(counts), paths.DEMO_DIR)


if __name__ == "__main__":
    main("demo", run)
