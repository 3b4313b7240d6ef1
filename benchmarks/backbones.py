"""What the backbones cost and what they buy, on this machine (issue 23).

    python -m benchmarks.backbones speed        # training images/s and peak RSS, each model x 96/128/160 px
    python -m benchmarks.backbones accuracy     # few camera-like photos a class: CNN, backbone, fine-tuned

``speed`` trains each model (random weights, the stage's dtype policy, batch 32) for a few
steps after one warm-up step, each in its own process, and prints images/s and the process's
peak RSS. ``accuracy`` makes camera-like JPEG photos of digits (benchmarks/seed_vs_project.py's
generator), trains with the same epochs (a) the CNN from scratch and (b) a backbone from scratch
on five classes with few photos each, and (c) the backbone fine-tuned from a model this project
trained on the five other digits (``train.init`` its ``.h5``, ``init_head: new``), and prints
each one's accuracy on the held-out photos. Results go to ``benchmarks/results-backbones.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("cnn", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50_v2")
SIZES = (96, 128, 160)
RESULTS = Path(__file__).with_name("results-backbones.json")


def one_speed(model: str, size: int, steps: int) -> dict:
    """Train ``model`` at ``size`` px for ``steps`` batches of 32 after a warm-up; in this process."""
    from imgclf.core.params import TrainParams
    from imgclf.training.model import build_model
    from imgclf.training.runtime import set_precision

    policy = set_precision("auto")
    net = build_model(size, 6, TrainParams(model=model))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32 * (steps + 1), size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 6, len(x)).astype(np.uint8)
    net.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)  # tracing, first allocations
    start = time.perf_counter()
    net.fit(x[32:], y[32:], batch_size=32, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "model": model,
        "image_size": size,
        "dtype_policy": policy,
        "parameters": net.count_params(),
        "images_per_second": round(32 * steps / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def speed(steps: int) -> list[dict]:
    rows = []
    for model in MODELS:
        for size in SIZES:
            cmd = [sys.executable, "-m", "benchmarks.backbones", "one-speed", model, str(size), "--steps", str(steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{model:20s} {size:4d} px  {row['images_per_second']:7.1f} img/s  "
                f"peak RSS {row['peak_rss_mb']:5d} MB  {row['parameters']:>10,} weights",
                flush=True,
            )
    return rows


def _prepared(source: Path, folder: Path, p):
    from imgclf.core.prepared import load_prepared
    from imgclf.data import dataset
    from imgclf.data.augmentation import prepare

    prepare(p, dataset.scan(source), folder)
    return load_prepared(folder)


def _accuracy(model, data) -> float:
    probs = model.predict(data.x["test"], batch_size=64, verbose=0)
    return float((probs.argmax(1) == data.y["test"]).mean())


def accuracy(per_class: int, epochs: int, size: int, backbone: str, donor_per_class: int, donor_epochs: int) -> dict:
    """Test accuracy of the three ways on five digits with ``per_class`` photos each; the model
    fine-tuned from was trained on ``donor_per_class`` photos of each of the five other digits."""
    import keras

    from benchmarks.seed_vs_project import generate_camera
    from imgclf.core.params import parse
    from imgclf.training.fit import train
    from imgclf.training.origin import resolve

    w = Path(tempfile.mkdtemp(prefix="imgclf-bench-backbones-"))
    photos = generate_camera(w / "all", count=10 * max(per_class, donor_per_class), width=640, height=480)
    few, other = w / "few", w / "other"
    for digit in range(10):
        files = sorted((photos / str(digit)).glob("*.jpg"))
        target, keep = (few, per_class) if digit >= 5 else (other, donor_per_class)
        (target / str(digit)).mkdir(parents=True)
        for f in files[:keep]:
            f.rename(target / str(digit) / f.name)
    base = {
        "data": {"image_size": size, "test_size": 0.3, "val_size": 0.2},
        "augment": {"angles": [-10, 0, 10], "flip": True},
        "train": {"epochs": epochs, "batch_size": 32, "early_stopping": {"monitor": "val_accuracy"}},
    }
    backbone_train = {"model": backbone, "learning_rate": 0.001}
    results: dict = {
        "per_class": per_class,
        "epochs": epochs,
        "image_size": size,
        "backbone": backbone,
        "donor_per_class": donor_per_class,
        "donor_epochs": donor_epochs,
    }

    def run(name: str, source: Path, train_section: dict) -> tuple[float, object]:
        p = parse({**base, "train": {**base["train"], **train_section}})
        data = _prepared(source, w / f"prepared-{name}", p)
        started = time.perf_counter()
        trained = train(p, data, origin=resolve(p.train))
        acc = _accuracy(trained.model, data)
        best = trained.best
        results[name] = {
            "test_accuracy": round(acc, 4),
            "best_epoch": trained.best_epoch,
            "train_accuracy": round(best["accuracy"], 4),
            "val_accuracy": round(best["val_accuracy"], 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(
            f"{name:42s} test accuracy {acc:.3f} ({len(data.y['test'])} photos; best epoch {trained.best_epoch}: "
            f"train {best['accuracy']:.3f}, val {best['val_accuracy']:.3f}; {results[name]['seconds']:.0f} s)",
            flush=True,
        )
        return acc, trained.model

    run("cnn from scratch", few, {})
    keras.backend.clear_session()
    run(f"{backbone} from scratch", few, backbone_train)
    keras.backend.clear_session()
    _, donor = run(f"{backbone} on the other 5 digits", other, {**backbone_train, "epochs": donor_epochs})
    donor.save(w / "donor.h5")
    keras.backend.clear_session()
    run(f"{backbone} fine-tuned from that", few, {**backbone_train, "init": str(w / "donor.h5"), "init_head": "new"})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "accuracy", "one-speed"])
    parser.add_argument("model", nargs="?")
    parser.add_argument("size", nargs="?", type=int)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--donor-per-class", type=int, default=300)
    parser.add_argument("--donor-epochs", type=int, default=10)
    args = parser.parse_args()
    if args.what == "one-speed":
        print(json.dumps(one_speed(args.model, args.size, args.steps)))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.what == "speed":
        results["speed"] = speed(args.steps)
    else:
        results["accuracy"] = accuracy(
            args.per_class, args.epochs, args.image_size, args.backbone, args.donor_per_class, args.donor_epochs
        )
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
