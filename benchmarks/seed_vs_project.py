"""The seed's way against this project's, on the same images: speed, memory and accuracy.

    python benchmarks/seed_vs_project.py                  # scikit-learn's digits at 100x100, 2 epochs
    python benchmarks/seed_vs_project.py --images DIR     # your own class folders
    python benchmarks/seed_vs_project.py --shapes --per-class 300   # generated shapes instead
    python benchmarks/seed_vs_project.py --epochs 1 --steps 40      # a quicker look
    python benchmarks/seed_vs_project.py --camera 900 --only augment # camera-sized JPEGs: decoding

The default data is the demo's: 1,797 real handwritten digits (about 180 per class, shipped
inside scikit-learn) resized to 100x100 RGB by both sides, as the seed resized its photos.

Every phase runs in its own child process (so each peak RSS is that phase's alone, read with
``os.wait4``) on the same images, the same test split, the same CNN, epochs and batch size:

1. the seed, re-created faithfully: a per-image PIL loop (rotations -20..15 by 5, each also
   mirrored) into Python lists, arrays cast to ``float64 / 256``, one-hot labels, ``model.fit`` on
   in-memory arrays, the seed's Sequential CNN with Adam's defaults;
2. this project's real stage entry points (``python -m stages.augment`` / ``train`` /
   ``evaluate``) in a throw-away copy of the project, with its default settings;
3. streaming: the project's training input pipeline on the prepared arrays and on a copy four
   times larger, a fixed number of steps each, to show memory does not grow with the data;
4. the CPU's float32 and bfloat16 matmul ceilings, to put the achieved training FLOP/s in
   proportion.

``--camera N`` makes N camera-sized JPEGs (1600x1200, quality 90) from the digits, each digit
a blurred, coloured object on a shaded, noisy scene, and adds a decoding phase: milliseconds an
image for a full decode and resize against the project's decoder (JPEG draft mode).

It prints a table and writes it as JSON (``--out``). Nothing here asserts a time: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED_ANGLES = list(range(-20, 20, 5))
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def generate_shapes(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """Class folders of JPEG 'photos': one shape per class, random colours, place, size, noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for shape in SHAPES[:classes]:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            bg = tuple(int(v) for v in rng.integers(0, 256, 3))
            fg = tuple(int(v) for v in (np.array(bg) + rng.integers(80, 176, 3)) % 256)
            noise = rng.normal(0, 12, (size, size, 3))
            img = Image.fromarray(np.clip(np.array(bg) + noise, 0, 255).astype(np.uint8), "RGB")
            draw = ImageDraw.Draw(img)
            r = rng.uniform(0.18, 0.38) * size
            cx, cy = rng.uniform(r, size - r, 2)
            box = (cx - r, cy - r, cx + r, cy + r)
            if shape == "circle":
                draw.ellipse(box, fill=fg)
            elif shape == "square":
                draw.rectangle(box, fill=fg)
            elif shape == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
            elif shape == "cross":
                w = r / 3
                draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
                draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
            elif shape == "ring":
                draw.ellipse(box, outline=fg, width=max(2, int(r / 4)))
            else:
                draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fg)
            img.save(folder / f"{n:04d}.jpg", quality=90)
    return root


def generate_camera(root: Path, count: int, seed: int = 0, width: int = 1600, height: int = 1200) -> Path:
    """``count`` camera-sized JPEG 'photos' of the digits in class folders: each digit scaled up
    and blurred into an object that stands out from a shaded scene, with sensor-like noise.

    The object's colour differs from the scene's in every channel by 80-175 levels (mod 256) and
    it fills half to nine tenths of the frame's height, off-centre by up to a fifth of the free
    room, as a photographer would frame it: a task the seed's CNN learns in its 2 epochs."""
    from PIL import Image, ImageFilter
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    xx = np.arange(width, dtype=np.float32)[None, :, None]
    # Sensor noise: one field drawn once, each photo a crop of it at a random offset (drawing
    # 5.8 million normals an image took most of the generation time).
    noise = rng.standard_normal((height + 256, width + 256, 3), dtype=np.float32) * 5
    for n in range(count):
        k = n % len(digits.images)
        label = str(digits.target[k])
        side = int(rng.uniform(0.5, 0.9) * height)
        glyph = Image.fromarray((digits.images[k] * 255 / 16).astype(np.uint8), "L").resize((side, side), Image.BICUBIC)
        glyph = np.asarray(glyph.filter(ImageFilter.GaussianBlur(side / 60)), dtype=np.float32)[..., None] / 255
        background = rng.integers(30, 226, 3)
        colour = (background + rng.integers(80, 176, 3)) % 256
        shade = 0.85 + 0.15 * np.sin(xx / width * rng.uniform(1, 4) + rng.uniform(0, 6))
        scene = np.broadcast_to(background * shade, (height, width, 3)).astype(np.float32)
        free_x, free_y = (width - side) / 2, (height - side) / 2
        x0 = int(free_x + rng.uniform(-0.2, 0.2) * free_x)
        y0 = int(free_y + rng.uniform(-0.2, 0.2) * free_y)
        patch = scene[y0 : y0 + side, x0 : x0 + side]
        scene[y0 : y0 + side, x0 : x0 + side] = patch * (1 - glyph) + colour * glyph
        dy, dx = rng.integers(0, 256, 2)
        scene += noise[dy : dy + height, dx : dx + width]
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.clip(0, 255).astype(np.uint8), "RGB").save(folder / f"{n:05d}.jpg", quality=90)
    return root


def rss_mb_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Phases (each runs in a child process: `--phase NAME`)
# ---------------------------------------------------------------------------------------------


def phase_seed_augment(w: Path, args) -> dict:
    """The seed's augmentation loop (its split replaced by the shared test list, for fairness)."""
    from PIL import Image

    test_files = set(json.loads((w / "test_files.json").read_text()))
    labels = json.loads((w / "labels.json").read_text())
    x_train, y_train, x_test, y_test = [], [], [], []
    start = time.perf_counter()
    for index, label in enumerate(labels):
        for file in sorted((Path(args.images) / label).iterdir()):
            image = Image.open(file)
            image = image.convert("RGB")
            image = image.resize((args.size, args.size))
            data = np.asarray(image)
            if str(file) in test_files:
                x_test.append(data)
                y_test.append(index)
                continue
            for angle in SEED_ANGLES:
                img_r = image.rotate(angle)
                x_train.append(np.asarray(img_r))
                y_train.append(index)
                img_trans = img_r.transpose(Image.FLIP_LEFT_RIGHT)
                x_train.append(np.asarray(img_trans))
                y_train.append(index)
    out = w / "seed"
    out.mkdir(exist_ok=True)
    # The seed pickled a tuple into one .npy; four plain files cost the same to write.
    for name, arr in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        np.save(out / f"{name}.npy", np.array(arr))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_out": len(x_train) + len(x_test)}


def phase_seed_train(w: Path, args) -> dict:
    """The seed's training: float64 / 256, one-hot, Sequential CNN, model.fit on arrays."""
    import keras
    from keras.layers import Activation, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
    from keras.models import Sequential

    keras.utils.set_random_seed(args.seed)
    labels = json.loads((w / "labels.json").read_text())
    d = w / "seed"
    x_train = np.load(d / "x_train.npy").astype("float") / 256
    x_test = np.load(d / "x_test.npy").astype("float") / 256
    y_train = keras.utils.to_categorical(np.load(d / "y_train.npy"), len(labels))
    y_test = keras.utils.to_categorical(np.load(d / "y_test.npy"), len(labels))

    model = Sequential()
    model.add(keras.Input(x_train.shape[1:]))
    model.add(Conv2D(32, (3, 3), padding="same"))
    model.add(Activation("relu"))
    model.add(Conv2D(32, (3, 3)))
    model.add(Activation("relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))
    model.add(Conv2D(64, (3, 3), padding="same"))
    model.add(Activation("relu"))
    model.add(Conv2D(64, (3, 3)))
    model.add(Activation("relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))
    model.add(Flatten())
    model.add(Dense(512))
    model.add(Activation("relu"))
    model.add(Dropout(0.5))
    model.add(Dense(len(labels)))
    model.add(Activation("softmax"))
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {
        "seconds": seconds,
        "images_per_second": len(x_train) * args.epochs / seconds,
        "test_accuracy": float(accuracy),
        "flops_per_image": training_flops(model),
    }


def phase_stream(_w: Path, args) -> dict:
    """The project's input pipeline and model for a fixed number of steps on ``args.prepared``."""
    sys.path.insert(0, str(ROOT))
    from imgclf.core.params import TrainParams
    from imgclf.core.prepared import load_prepared
    from imgclf.training.model import build_model
    from imgclf.training.runtime import seed_everything, set_precision
    from imgclf.training.streaming import training_batches

    data = load_prepared(Path(args.prepared))
    p = TrainParams(batch_size=args.batch_size)
    seed_everything(args.seed, True)
    set_precision(p.mixed_precision)
    model = build_model(data.x["train"].shape[1], len(data.labels), p)
    epochs = -(-args.steps * p.batch_size // len(data.y["train"])) + 1  # enough batches for the steps
    ds = training_batches(data.x["train"], data.y["train"], p.batch_size, args.seed, 1, epochs)
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "train_images": int(len(data.y["train"])),
        "images_per_second": args.steps * p.batch_size / seconds,
    }


def phase_ceiling(_w: Path, _args) -> dict:
    """4096x4096 matmul throughput with TensorFlow on all cores, in float32 and bfloat16."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    n, reps, out = 4096, 6, {}
    for name, dtype in (("gflops", tf.float32), ("gflops_bf16", tf.bfloat16)):
        a = tf.cast(tf.random.uniform((n, n)), dtype)
        b = tf.cast(tf.random.uniform((n, n)), dtype)
        tf.linalg.matmul(a, b).numpy()
        start = time.perf_counter()
        for _ in range(reps):
            c = tf.linalg.matmul(a, b)
        c.numpy()
        out[name] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
    return out


def phase_decode(_w: Path, args) -> dict:
    """Milliseconds an image: a full decode then one resize, against the project's decoder."""
    from PIL import Image

    from imgclf.data.dataset import scan
    from imgclf.data.images import load_array

    files = scan(Path(args.images)).files
    out = {"files": len(files)}
    for name in ("full", "project"):
        start = time.perf_counter()
        for path in files:
            if name == "full":
                with Image.open(path) as img:
                    np.asarray(img.convert("RGB").resize((args.size, args.size), Image.Resampling.BILINEAR))
            else:
                load_array(path, args.size)
        out[f"{name}_ms"] = (time.perf_counter() - start) * 1000 / len(files)
    return out


def training_flops(model) -> float:
    """FLOPs to train on one image: forward multiply-adds x 2, and x 3 for the backward pass."""
    flops = 0.0
    for layer in model.layers:
        kind = layer.__class__.__name__
        if kind == "Conv2D":
            _, h, wd, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            flops += 2.0 * h * wd * kh * kw * c_in * c_out
        elif kind == "Dense":
            c_in, c_out = layer.kernel.shape
            flops += 2.0 * c_in * c_out
    return 3.0 * flops


def phase_grow(w: Path, args) -> dict:
    grow(Path(args.prepared), w / "prepared4x", 4)
    return {}


PHASES = {
    "seed_augment": phase_seed_augment,
    "seed_train": phase_seed_train,
    "stream": phase_stream,
    "grow": phase_grow,
    "ceiling": phase_ceiling,
    "decode": phase_decode,
}


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------


def run_child(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, float, int]:
    """Run one phase; return (wall seconds, peak RSS MB of it and its children, exit status)."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def phase(name: str, w: Path, args, env: dict, **extra) -> dict:
    out = w / f"{name}.json"
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        name,
        "--workdir",
        str(w),
        "--images",
        str(args.images),
        "--size",
        str(args.size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--result",
        str(out),
    ]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    wall, rss, code = run_child(cmd, ROOT, env, w / f"{name}.log")
    if code != 0:
        sys.exit(f"phase {name} failed ({code}); see {w / (name + '.log')}")
    return {**json.loads(out.read_text()), "wall": wall, "rss_mb": rss}


def stage(name: str, project: Path, env: dict, w: Path) -> dict:
    wall, rss, code = run_child([sys.executable, "-m", f"stages.{name}"], project, env, w / f"stage_{name}.log")
    if code != 0:
        sys.exit(f"stage {name} failed ({code}); see {w / f'stage_{name}.log'}")
    return {"wall": wall, "rss_mb": rss}


def make_project(w: Path, args) -> Path:
    import yaml

    project = w / "project"
    for name in ("imgclf", "stages"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["seed"] = args.seed
    params["data"].update(
        {"source": str(args.images), "image_size": args.size, "test_size": args.test_size, "val_size": 0.0}
    )
    params["augment"].update({"angles": SEED_ANGLES, "flip": True})
    # The seed has no validation split and keeps the last epoch: with "loss" as the monitor
    # the best epoch is almost always the last, and no validation work is timed.
    params["train"].update(
        {"epochs": args.epochs, "batch_size": args.batch_size, "early_stopping": {"monitor": "loss"}, "resume": False}
    )
    params["mlflow"]["experiment"] = "benchmark"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def grow(prepared: Path, target: Path, factor: int) -> None:
    """A copy of the prepared arrays with the training set repeated ``factor`` times."""
    shutil.copytree(prepared, target)
    x = np.load(prepared / "x_train.npy", mmap_mode="r")
    y = np.load(prepared / "y_train.npy")
    out = np.lib.format.open_memmap(
        target / "x_train.npy", mode="w+", dtype=x.dtype, shape=(len(x) * factor,) + x.shape[1:]
    )
    n = len(x)
    for k in range(factor):
        for s in range(0, n, 4096):
            e = min(s + 4096, n)
            out[k * n + s : k * n + e] = x[s:e]
    out.flush()
    np.save(target / "y_train.npy", np.tile(y, factor))


def noop_repro_seconds() -> float | None:
    """Time of `dvc repro` in this repository when everything is cached (None if it is not)."""
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    status = subprocess.run([dvc, "status", "--quiet"], cwd=ROOT, capture_output=True)
    if status.returncode != 0:
        return None
    start = time.perf_counter()
    subprocess.run([dvc, "repro"], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", help="class folders to use (default: scikit-learn's digits)")
    ap.add_argument("--shapes", action="store_true", help="generate shape 'photos' instead of the digits")
    ap.add_argument("--camera", type=int, metavar="N", help="generate N camera-sized JPEGs of the digits instead")
    ap.add_argument("--classes", type=int, default=6, help="with --shapes")
    ap.add_argument("--per-class", type=int, default=300, help="with --shapes")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--test-size", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--steps", type=int, default=150, help="training steps of each streaming phase")
    ap.add_argument("--workdir", help="where to put data and results (default: a new temp folder)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--only", choices=["augment"], help="run only the augmentation phases")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--prepared", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.phase:
        result = PHASES[args.phase](Path(args.workdir), args)
        Path(args.result).write_text(json.dumps(result))
        return

    sys.path.insert(0, str(ROOT))
    w = Path(args.workdir or tempfile.mkdtemp(prefix="imgclf-bench-"))
    w.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MLFLOW_TRACKING_URI": f"sqlite:///{w / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DVC_ROOT", None)
    print(f"work folder: {w}", flush=True)
    if not args.images and args.camera:
        args.images = str(generate_camera(w / "images", args.camera, args.seed))
    elif not args.images and args.shapes:
        args.images = str(generate_shapes(w / "images", args.classes, args.per_class, args.size, args.seed))
    elif not args.images:
        from imgclf.data.demo import write_digits

        write_digits(w / "images")
        args.images = str(w / "images")
    args.images = str(Path(args.images).resolve())

    # The project's own stratified split, shared with the seed so both test on the same images.
    from imgclf.data.dataset import scan, split_indices

    src = scan(Path(args.images))
    y = np.asarray(src.y)
    test = split_indices(y, args.test_size, 0.0, args.seed, src.labels)["test"]
    (w / "test_files.json").write_text(json.dumps([str(src.files[i]) for i in test]))
    (w / "labels.json").write_text(json.dumps(src.labels))
    print(f"{len(src.files)} images in {len(src.labels)} classes, {len(test)} held out", flush=True)

    r: dict = {
        "config": {
            k: getattr(args, k) for k in ("size", "epochs", "batch_size", "test_size", "seed", "images", "steps")
        }
    }
    project = make_project(w, args)
    # The store exists before the stages run, as it does after a project's first run: creating
    # its schema is a one-time cost of several seconds that would otherwise land on augment.
    subprocess.run(
        [sys.executable, "-c", "from imgclf import tracking; tracking.setup('benchmark')"],
        cwd=project,
        env=env,
        check=True,
    )
    print("decoding: full against the project's ...", flush=True)
    r["decode"] = phase("decode", w, args, env)
    print("seed: augment ...", flush=True)
    r["seed_augment"] = phase("seed_augment", w, args, env)
    print("project: augment ...", flush=True)
    r["project_augment"] = stage("augment", project, env, w)
    reports = project / "reports"
    r["project_augment"].update(json.loads((reports / "augment.json").read_text()))
    r["project_augment"].update(run_metrics(w, "augment"))
    if args.only == "augment":
        Path(args.out).with_name("results-augment.json").write_text(json.dumps(r, indent=2) + "\n")
        print_augment(r)
        return
    print("seed: train ...", flush=True)
    r["seed_train"] = phase("seed_train", w, args, env)
    for name in ("train", "evaluate"):
        print(f"project: {name} ...", flush=True)
        r[f"project_{name}"] = stage(name, project, env, w)
    r["project_train"].update(json.loads((reports / "train.json").read_text()))
    r["project_train"].update(run_metrics(w, "train"))
    r["project_evaluate"].update(json.loads((reports / "metrics.json").read_text()))

    print("streaming: 1x and 4x data ...", flush=True)
    prepared = project / "data" / "prepared"
    r["stream_1x"] = phase("stream", w, args, env, prepared=prepared, steps=args.steps)
    phase("grow", w, args, env, prepared=prepared)  # in a child: the parent stays small
    r["stream_4x"] = phase("stream", w, args, env, prepared=w / "prepared4x", steps=args.steps)
    shutil.rmtree(w / "prepared4x")
    print("matmul ceiling ...", flush=True)
    r["ceiling"] = phase("ceiling", w, args, env)
    r["noop_repro_seconds"] = noop_repro_seconds()

    Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    print_table(r)
    if not args.keep and not args.workdir:
        shutil.rmtree(w, ignore_errors=True)


def run_metrics(w: Path, stage: str) -> dict:
    """The final metrics of the latest MLflow run of ``stage`` in the benchmark's store: the
    timings the stages log there (``timing/augment_seconds``, ... ; returned without ``timing/``)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{w / 'mlflow.db'}")
    exp = client.get_experiment_by_name("benchmark")
    (run,) = client.search_runs(
        [exp.experiment_id], f"attributes.run_name = '{stage}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    # The stages log their timings under timing/ (timing/augment_seconds, ...).
    return {k.removeprefix("timing/"): v for k, v in run.data.metrics.items()}


def augment_rows(r: dict) -> list[tuple[str, float, float]]:
    """Rows of (what, seed, project): decoding and augmentation."""
    d = r["decode"]
    return [("decode + resize, ms/image", d["full_ms"], d["project_ms"])] + _augment_rows(r)


def _augment_rows(r: dict) -> list[tuple[str, float, float]]:
    sa, pa = r["seed_augment"], r["project_augment"]
    images = pa["train_images"] + pa["test_images"] + pa["val_images"]
    return [
        ("augmentation images/s", sa["images_out"] / sa["seconds"], images / pa["augment_seconds"]),
        ("  whole process, images/s", sa["images_out"] / sa["wall"], images / pa["wall"]),
        ("peak RSS augment (MB)", sa["rss_mb"], pa["rss_mb"]),
    ]


def print_rows(rows: list[tuple[str, float, float]]) -> None:
    print()
    print(f"{'':28s}{'seed':>12s}{'project':>12s}{'project/seed':>14s}")
    for name, a, b in rows:
        print(f"{name:28s}{a:12.4g}{b:12.4g}{b / a:14.2f}")
    print()


def print_mlflow_share(name: str, rep: dict) -> None:
    print(
        f"MLflow share of the {name} stage: {rep['mlflow_seconds']:.2f} s of {rep['wall']:.1f} s "
        f"({rep['mlflow_seconds'] / rep['wall']:.1%})"
    )


def print_augment(r: dict) -> None:
    print_rows(augment_rows(r))
    print_mlflow_share("augment", r["project_augment"])


def print_table(r: dict) -> None:
    st = r["seed_train"]
    pa, pt, pe = r["project_augment"], r["project_train"], r["project_evaluate"]
    s1, s4, ceil, ceil16 = r["stream_1x"], r["stream_4x"], r["ceiling"]["gflops"], r["ceiling"]["gflops_bf16"]
    flops = st["flops_per_image"]
    rows = augment_rows(r) + [
        ("training images/s", st["images_per_second"], pt["train_images_per_second"]),
        (
            "  whole process, images/s",
            st["images_per_second"] * st["seconds"] / st["wall"],
            pt["train_images_per_second"] * pt["train_seconds"] / pt["wall"],
        ),
        ("peak RSS train (MB)", st["rss_mb"], pt["rss_mb"]),
        ("held-out accuracy", st["test_accuracy"], pe["test_accuracy"]),
        ("training GFLOP/s", flops * st["images_per_second"] / 1e9, flops * pt["train_images_per_second"] / 1e9),
    ]
    print_rows(rows)
    print(
        f"float32 matmul ceiling: {ceil:.0f} GFLOP/s; training reaches "
        f"{flops * st['images_per_second'] / 1e9 / ceil:.0%} (seed) and "
        f"{flops * pt['train_images_per_second'] / 1e9 / ceil:.0%} (project) of it "
        f"({flops / 1e9:.2f} GFLOP per training image); bfloat16 matmul ceiling: {ceil16:.0f} GFLOP/s"
    )
    print(
        f"streaming, same steps: {s1['train_images']} images -> {s1['rss_mb']:.0f} MB peak; "
        f"{s4['train_images']} images -> {s4['rss_mb']:.0f} MB ({s4['rss_mb'] / s1['rss_mb'] - 1:+.1%})"
    )
    for name, rep in (("augment", pa), ("train", pt)):
        print_mlflow_share(name, rep)
    noop = r["noop_repro_seconds"]
    print(
        f"no-op dvc repro: {noop:.2f} s" if noop is not None else "no-op dvc repro: skipped (pipeline not up to date)"
    )


if __name__ == "__main__":
    main()
