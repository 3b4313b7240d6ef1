"""Classify images: ``python -m stages.predict PATH... [--top K] [--json] [--model MODEL]``.

Prints one line per image: path, label, probability (tab-separated; with ``--top K`` the K best
label/probability pairs follow). ``--json`` prints one JSON object per line instead. Files that
cannot be decoded get a warning on stderr naming the file and why, and make the exit status 2.
Not a DVC stage: it reads what the pipeline made.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from imgclf.console.cli import main
from imgclf.core.errors import PipelineError
from imgclf.predict import classify, collect, load_classifier

log = logging.getLogger("predict")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    ap.add_argument(
        "--model",
        help="a .h5 file, runs:/<run id>, runs:/<run id>/keras_model or "
        "models:/<name>/<version>, models:/<name>/latest or models:/<name>@champion (default: models/model.h5)",
    )
    ap.add_argument("--top", type=int, default=1, metavar="K", help="show the K most likely labels")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--batch-size", type=int, default=64)
    return ap.parse_args(argv)


def shown(path, field: bool = True) -> str:
    """A path as text: bytes that are not UTF-8 (a name from a Windows zip) as ``\\xe9``; for
    one field of a tab-separated line (``field``), tabs and line breaks as ``\\t``, ``\\n``."""
    text = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r") if field else text


def run(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for flag, value in (("--top", args.top), ("--batch-size", args.batch_size)):
        if value < 1:
            raise PipelineError(f"{flag} must be at least 1 (got {value})")
    files = collect(args.paths)
    clf = load_classifier(args.model)
    bad = 0
    for path, best, error in classify(clf, files, args.top, args.batch_size):
        if error is not None:
            bad += 1
            log.warning("skipping %s: %s", shown(path), error)
            continue
        if args.json:
            record = {"path": shown(path, field=False), "label": best[0][0], "probability": round(best[0][1], 6)}
            if args.top > 1:
                record["top"] = [{"label": lb, "probability": round(pr, 6)} for lb, pr in best]
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print("\t".join([shown(path)] + [f"{lb}\t{pr:.4f}" for lb, pr in best]), flush=True)
    if bad:
        raise PipelineError(f"{bad} of {len(files)} file(s) could not be classified (see the warnings above)")


if __name__ == "__main__":
    main("predict", run, tensorflow=True)
