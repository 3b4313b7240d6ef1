"""A tracking server stopped mid-training on the demo, as issue 22 asks: prints what happened.

    python -m benchmarks.outage [--down 60] [--epochs 5]

Clones this repository (its committed state) into a temporary folder, starts a real
`mlflow server` on loopback, runs `dvc repro` against it, stops the server once training has
checkpointed its first epoch, starts it again ``--down`` seconds later, and waits for the repro.
Then it prints the repro's exit status, its wall time, the console lines about the server, the
train run's status and the steps of its per-epoch metric, and whether every epoch is there once.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from tests.helpers import MlflowServer, Project

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--down", type=float, default=60.0, help="seconds the server stays down")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    top = Path(tempfile.mkdtemp(prefix="imgclf-outage-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(top / "project")], check=True)
    p = Project(top / "project")
    p.sh("dvc", "config", "core.analytics", "false")
    server = MlflowServer(f"sqlite:///{top / 'server.db'}", top, p.env)
    server.start()
    p.env.update(MLFLOW_TRACKING_URI=server.url, IMGCLF_CHECKPOINT_DIR=str(top / "checkpoints"))
    p.sh("dvc", "repro", "augment")
    p.set_params(train={"epochs": args.epochs})
    start = time.monotonic()
    dvc = subprocess.Popen(
        ["dvc", "repro"], cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    while True:
        states = list((top / "checkpoints").glob("train-*/state.json"))
        try:
            if states and json.loads(states[0].read_text())["epoch"] >= 1:
                break
        except ValueError:
            pass
        if dvc.poll() is not None:
            print(dvc.stdout.read()[-3000:])
            return 1
        time.sleep(0.1)
    server.stop()
    print(f"server stopped at {time.monotonic() - start:.0f} s (epoch 1 checkpointed), down for {args.down:.0f} s")
    time.sleep(args.down)
    server.start()
    print(f"server started again at {time.monotonic() - start:.0f} s")
    out, _ = dvc.communicate()
    print(f"dvc repro exited {dvc.returncode} after {time.monotonic() - start:.0f} s")
    for line in out.splitlines():
        if re.search(r"unreachable|is back after|epoch \d+/\d+:|error:", line):
            print("  ", line[:200])
    client = mlflow.MlflowClient(server.url)
    exp = client.get_experiment_by_name("image-classification")
    (run,) = client.search_runs([exp.experiment_id], "tags.`imgclf.stage` = 'train'")
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    pipelines = client.search_runs([exp.experiment_id], "tags.`imgclf.stage` = 'pipeline'")
    print(f"train run {run.info.status}, loss at steps {steps}; pipeline rows: {len(pipelines)}")
    whole = run.info.status == "FINISHED" and steps == list(range(1, args.epochs + 1))
    print("every epoch once in a FINISHED run:", whole)
    server.stop()
    return 0 if dvc.returncode == 0 and whole else 1


if __name__ == "__main__":
    sys.exit(main())
