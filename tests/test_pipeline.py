"""End to end: the real ``dvc`` CLI on a temporary git copy of the project with tiny images.

Each test checks one thing users rely on and stands alone. The first ``dvc repro`` (the expensive
part) runs once per session: tests that only read its results take the ``template`` (read-only);
tests that change a project take ``project``, their own copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from imgclf import tracking
from imgclf.core.fileio import md5_file

from .helpers import QUEUED, ROOT, Project

pytestmark = pytest.mark.slow

_OWN = "timing/mlflow_seconds"  # a stage run's own cost in MLflow


def _system(run) -> set[str]:
    return {k for k in run.data.metrics if k.startswith("system/")}


def _inputs(uri: str, run) -> set[tuple[str, str, str]]:
    """(name, digest, context) of each dataset input of ``run``."""
    items = mlflow.MlflowClient(uri).get_run(run.info.run_id).inputs.dataset_inputs
    return {(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"]) for i in items}


def test_repro_writes_metrics_model_and_reports(template: Project):
    project = template
    metrics = project.json("reports/metrics.json")
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] >= 0
    # The DVC metrics: few, comparable figures; counts and per-class figures live elsewhere.
    assert set(metrics) == {"test_accuracy", "test_loss", "test_macro_f1", "test_macro_precision", "test_macro_recall"}
    assert set(project.json("reports/train.json")) == {
        "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate", "best_epoch", "epochs_run"
    }  # fmt: skip
    per_class = (project.root / "reports/per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1,support" and [r.split(",")[0] for r in per_class[1:]] == [
        "blue", "green", "red"
    ]  # fmt: skip
    assert sum(int(r.split(",")[4]) for r in per_class[1:]) == 6  # 25% of 8 images in each of 3 classes
    report = project.json("reports/augment.json")
    # 24 originals -> 6 test; of the 18 left, 20% for validation; the rest x 2 angles x 2 (flip).
    assert report["test_images"] == 6 and report["images"] == 24
    assert report["train_images"] == (24 - 6 - report["val_images"]) * 4
    history = (project.root / "reports/train_history.csv").read_text().splitlines()
    assert history[0].split(",")[:3] == ["epoch", "accuracy", "loss"] and len(history) == 3
    confusion = (project.root / "reports/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 7
    for png in ("reports/confusion.png", "reports/training_curves.png", "reports/misclassified.png"):
        assert (project.root / png).read_bytes()[:4] == b"\x89PNG"
    page = (project.root / "reports/report.html").read_text()
    assert "test_accuracy" in page and "train.epochs" in page and page.count("data:image/png;base64,") == 3

    import keras

    model = keras.models.load_model(project.root / "models/model.h5", compile=False, safe_mode=True)
    x_test = np.load(project.root / "data/prepared/x_test.npy", allow_pickle=False)
    assert x_test.dtype == np.uint8 and model.inputs[0].dtype == "uint8"
    assert model.predict(x_test, verbose=0).shape == (6, 3)


def _stage_runs(project: Project) -> tuple:
    """The template's pipeline run and its augment, train and evaluate runs (one each)."""
    (pipeline,) = project.runs("pipeline")
    stages = {name: project.runs(name) for name in ("augment", "train", "evaluate")}
    assert all(len(runs) == 1 for runs in stages.values()), {k: len(v) for k, v in stages.items()}
    return pipeline, *(stages[n][0] for n in ("augment", "train", "evaluate"))


def test_every_stage_run_finishes_under_one_pipeline_run(template: Project):
    pipeline, *stage_runs = _stage_runs(template)
    for name, run in zip(("augment", "train", "evaluate"), stage_runs):
        assert run.info.status == "FINISHED"
        assert run.data.tags[tracking.TAG_PARENT] == pipeline.info.run_id, name
        assert run.data.tags[tracking.TAG_STAGE] == name
        assert len(run.data.tags[tracking.TAG_GIT_COMMIT]) == 40
    # Fingerprints link the stages.
    _, augment, train, _ = _stage_runs(template)
    assert augment.data.tags[tracking.TAG_DATA_MD5] == train.data.tags[tracking.TAG_DATA_MD5]
    assert train.data.tags[tracking.TAG_MODEL_MD5] == md5_file(template.root / "models/model.h5")


def test_each_run_has_the_params_that_shape_it_and_the_pipeline_run_all_of_them(template: Project):
    pipeline, augment, train, _ = _stage_runs(template)
    assert augment.data.params["data.image_size"] == "16" and "train.epochs" not in augment.data.params
    assert train.data.params["train.epochs"] == "2" and train.data.params["base.seed"] == "42"
    assert {"data.source", "augment.flip", "train.epochs", "base.seed"} <= set(pipeline.data.params)
    # Settings shape nothing: no run has them.
    assert not [k for k in pipeline.data.params if k in ("train.resume", "augment.workers") or k.startswith("mlflow.")]
    # Counts are params.
    assert augment.data.params["dataset.images"] == pipeline.data.params["dataset.images"] == "24"


def test_metrics_fall_into_groups_and_the_pipeline_run_has_the_results(template: Project):
    pipeline, augment, train, evaluate = _stage_runs(template)
    augment_speed = {"timing/augment_seconds", "timing/augment_images_per_second"}
    assert set(augment.data.metrics) - _system(augment) == augment_speed | {_OWN}
    assert set(train.data.metrics) - _system(train) == {
        *("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "best_epoch", "epochs_run"),
        *("best/loss", "best/accuracy", "best/val_loss", "best/val_accuracy", "best/learning_rate"),
        *("timing/train_seconds", "timing/train_images_per_second", _OWN),
    }
    overall = {"test_accuracy", "test_loss", "test_macro_f1", "test_macro_precision", "test_macro_recall"}
    per_class = {f"test_{m}/{c}" for m in ("precision", "recall", "f1") for c in ("blue", "green", "red")}
    assert set(evaluate.data.metrics) - _system(evaluate) == overall | per_class | {_OWN}
    assert "system/cpu_utilization_percentage" in evaluate.data.metrics
    trained = set(train.data.metrics) - _system(train) - {_OWN}
    assert set(pipeline.data.metrics) == overall | per_class | trained | augment_speed
    # ... with the learning curves, epoch by epoch.
    client = mlflow.MlflowClient(template.tracking_uri)
    assert [m.step for m in client.get_metric_history(pipeline.info.run_id, "val_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_loss")] == [1, 2]
    metrics = template.json("reports/metrics.json")
    assert evaluate.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert pipeline.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_dataset_inputs_carry_dvc_digests(template: Project):
    pipeline, augment, train, evaluate = _stage_runs(template)
    lock = yaml.safe_load((template.root / "dvc.lock").read_text())
    source_md5 = next(d["md5"] for d in lock["stages"]["augment"]["deps"] if d["path"] == "data/tiny")
    prepared = augment.data.tags[tracking.TAG_DATA_MD5]
    expected = {
        ("tiny", source_md5[:10], "source"),
        ("tiny/train", prepared[:10], "train"),
        ("tiny/val", prepared[:10], "val"),
        ("tiny/test", prepared[:10], "test"),
    }
    uri = template.tracking_uri
    assert _inputs(uri, pipeline) == expected
    assert _inputs(uri, augment) | _inputs(uri, train) | _inputs(uri, evaluate) == expected


def test_the_model_and_reports_are_artifacts_beside_the_store(template: Project):
    _, _, train, evaluate = _stage_runs(template)
    mlflow.set_tracking_uri(template.tracking_uri)  # MLflow resolves logged models through the global URI
    client = mlflow.MlflowClient()
    artifacts = [a.path for a in client.list_artifacts(train.info.run_id, "model")]
    assert artifacts == ["model/labels.json", "model/model.h5"]
    assert "keras_model/MLmodel" in {a.path for a in client.list_artifacts(train.info.run_id, "keras_model")}
    local = Path(mlflow.artifacts.download_artifacts(run_id=train.info.run_id, artifact_path="model/model.h5"))
    assert md5_file(local) == md5_file(template.root / "models/model.h5")
    assert (template.root / "mlartifacts").is_dir()
    reports = {a.path for a in client.list_artifacts(evaluate.info.run_id, "reports")}
    assert {
        "reports/metrics.json",
        "reports/confusion.png",
        "reports/confusion.csv",
        "reports/report.html",
        "reports/misclassified.png",
    } <= reports


def test_the_first_registered_model_becomes_champion_and_the_runs_say_so(template: Project):
    pipeline, _, train, evaluate = _stage_runs(template)
    client = mlflow.MlflowClient(template.tracking_uri)
    (version,) = client.search_model_versions("name = 'image-classifier'")
    assert version.run_id == train.info.run_id
    assert client.get_model_version_by_alias("image-classifier", "champion").version == version.version
    assert evaluate.data.tags["imgclf.promoted"] == "true"
    assert pipeline.data.tags["imgclf.promotion"] == evaluate.data.tags["imgclf.promotion"]
    assert pipeline.data.tags["imgclf.promoted"] == "true"
    metrics = template.json("reports/metrics.json")
    assert float(version.tags["imgclf.test_accuracy"]) == pytest.approx(metrics["test_accuracy"])


def test_predict_from_the_pipeline_a_run_and_the_registry(project: Project, monkeypatch, capsys):
    import stages.predict

    (train,) = project.runs("train")
    args = ["data/tiny/red", "--top", "2"]
    # The command line once (the pipeline's own model); then a run and the registry through the
    # same entry point in this process, where TensorFlow is already started.
    lines = {None: project.sh(sys.executable, "-m", "stages.predict", *args).stdout.splitlines()}
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
    for model in (f"runs:/{train.info.run_id}", "models:/image-classifier@champion"):
        stages.predict.run([*args, "--model", model])
        lines[model] = capsys.readouterr().out.splitlines()
    for out in lines.values():
        assert len(out) == 8 and all(len(line.split("\t")) == 5 for line in out), out
    # Same model three ways (the first evaluation made it the champion): same answers
    # (probabilities printed to 4 places).
    assert lines[None] == lines[f"runs:/{train.info.run_id}"] == lines["models:/image-classifier@champion"]


def test_mlflow_models_predict_serves_the_registered_model(project: Project, tmp_path: Path):
    x = np.load(project.root / "data/prepared/x_test.npy", allow_pickle=False)[:2]
    (tmp_path / "in.json").write_text(json.dumps({"inputs": x.tolist()}))
    out = project.sh(
        "mlflow",
        "models",
        "predict",
        "-m",
        "models:/image-classifier@champion",  # the alias a deployment follows
        "-i",
        str(tmp_path / "in.json"),
        "-t",
        "json",
        "--env-manager",
        "local",
        "-o",
        str(tmp_path / "out.json"),
    )
    assert out.returncode == 0
    predictions = np.asarray(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert predictions.shape == (2, 3)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, atol=1e-3)


def test_second_repro_does_nothing(project: Project):
    before = len(project.runs())
    assert "up to date" in project.sh("dvc", "status").stdout
    out = project.sh("dvc", "repro").stdout
    assert "Running stage" not in out
    assert "up to date" in out
    assert len(project.runs()) == before


def _metrics_files(project: Project) -> dict[str, bytes]:
    """Every file dvc.yaml declares as a metric, with its bytes."""
    import yaml

    stages = yaml.safe_load((project.root / "dvc.yaml").read_text())["stages"]
    names = [next(iter(m)) if isinstance(m, dict) else m for st in stages.values() for m in st.get("metrics", [])]
    assert set(names) == {"reports/train.json", "reports/metrics.json"}
    return {name: (project.root / name).read_bytes() for name in names}


def test_changing_a_train_param_reruns_train_and_evaluate_only(project: Project):
    project.commit()
    project.set_params(train={"epochs": 1})
    proc = project.sh("dvc", "repro")
    out = proc.stdout
    assert "Running stage 'augment'" not in out
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    # A quiet console: the stages' own lines, none of TensorFlow's, absl's or CUDA's start-up.
    console = proc.stdout + proc.stderr
    for chatter in (r"^[IWE]\d{4} ", "cuInit", "oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard"):
        assert not re.search(chatter, console, re.M), (chatter, console)
    assert "epoch 1/1:" in console and "test accuracy" in console
    diff = json.loads(project.sh("dvc", "params", "diff", "--json").stdout)
    change = diff["params.yaml"]["train.epochs"]
    assert (change["old"], change["new"]) == (2, 1)
    metrics_diff = json.loads(project.sh("dvc", "metrics", "diff", "--json").stdout)
    assert "reports/train.json" in metrics_diff
    # The cached augment stage still shows under the new pipeline run, linked to its first run.
    newest = max(project.runs("pipeline"), key=lambda r: r.info.start_time)
    children = [r for r in project.runs() if r.data.tags.get(tracking.TAG_PARENT) == newest.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["augment", "evaluate", "train"]
    (linked,) = [r for r in children if r.info.run_name == "augment"]
    assert tracking.TAG_LINKED_FROM in linked.data.tags
    assert newest.data.params["train.epochs"] == "1"


def test_a_fresh_clone_reproduces_the_results_bit_for_bit_and_lands_whole_in_mlflow(project: Project, tmp_path: Path):
    project.commit()
    arrays, metrics = project.array_md5s(), _metrics_files(project)
    clone = Project(tmp_path / "clone", project.env)
    project.sh("git", "clone", "-q", str(project.root), str(clone.root))
    out = clone.sh("dvc", "repro").stdout
    # The same arrays, model and metrics files: no timing or other run-to-run noise in what
    # `dvc metrics diff` compares.
    assert clone.array_md5s() == arrays
    assert md5_file(clone.root / "models/model.h5") == md5_file(project.root / "models/model.h5")
    assert _metrics_files(clone) == metrics
    assert json.loads(clone.sh("dvc", "metrics", "diff", "--json").stdout or "{}") == {}
    # The model matches the committed dvc.lock bit for bit, and evaluate runs all the same.
    assert "Running stage 'evaluate'" in out
    (result,) = clone.runs("pipeline")
    assert result.data.metrics["test_accuracy"] == pytest.approx(clone.json("reports/metrics.json")["test_accuracy"])
    stage_runs = {name: clone.runs(name) for name in ("augment", "train", "evaluate")}
    assert all(len(runs) == 1 and runs[0].info.status == "FINISHED" for runs in stage_runs.values()), stage_runs
    for name, (run,) in stage_runs.items():
        assert run.data.tags[tracking.TAG_PARENT] == result.info.run_id, name
    # Its Duration spans the stages, from augment's start to evaluate's end.
    assert result.info.start_time == stage_runs["augment"][0].info.start_time
    assert result.info.end_time >= stage_runs["evaluate"][0].info.end_time
    top = [r.info.run_name for r in clone.runs() if tracking.TAG_PARENT not in r.data.tags]
    assert top == ["pipeline"]  # the row of runs without a result shows only while it holds one
    # A second repro adds no run.
    before = len(clone.runs())
    assert "Running stage" not in clone.sh("dvc", "repro").stdout
    assert len(clone.runs()) == before


def test_exp_show_fits_a_screen_without_flags(template: Project):
    header = template.sh("dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    # 67 on this project: each param, metric and dep is a column (the backbone and fine-tuning
    # params took it past 60); `make exps` shows only what differs between experiments.
    assert len(header) <= 70, (len(header), header)
    # No settings (they shape no stage) and no single code files among the columns.
    assert not [c for c in header if c.startswith(("tune.", "mlflow.")) or c in ("train.resume", "augment.workers")]
    assert not [c for c in header if c.startswith("imgclf/") and c.endswith(".py")], header


def test_editing_code_that_shapes_no_output_reruns_nothing_and_keeps_the_checkpoint(project: Project):
    from imgclf.training.checkpoint import code_digest

    root = project.root

    def status() -> dict:
        return json.loads(project.sh("dvc", "status", "--json").stdout or "{}")

    def edit(rel: str) -> None:
        with open(root / rel, "a", encoding="utf-8") as fh:
            fh.write("\n# an edit\n")

    assert status() == {}
    key = code_digest(root)
    for rel in ("imgclf/tracking/recorder.py", "imgclf/tracking/system.py", "imgclf/console/progress.py"):
        edit(rel)
    (root / "imgclf/training/__pycache__").mkdir(exist_ok=True)
    (root / "imgclf/training/__pycache__/fit.cpython-311.pyc").write_bytes(b"bytecode")
    assert status() == {}
    # Evaluation and tuning code rerun evaluate at most; a training's checkpoint stays resumable.
    edit("imgclf/evaluation/scoring.py")
    edit("imgclf/tuning/search.py")
    assert code_digest(root) == key
    assert set(status()) == {"evaluate"}
    # Training code is the train stage's: it reruns, and a checkpoint of the old code is not resumed.
    edit("imgclf/training/fit.py")
    assert code_digest(root) != key
    assert set(status()) == {"train", "evaluate"}


def test_plots_render(project: Project):
    project.sh("dvc", "plots", "show", "-o", "plots_out")
    html = (project.root / "plots_out" / "index.html").read_text()
    assert "Confusion matrix" in html and "Loss" in html and "confusion.png" in html


def test_bad_param_through_exp_run_is_one_line_and_non_zero(project: Project):
    project.commit()
    proc = project.sh("dvc", "exp", "run", "--temp", "-S", "train.epochs=0", ok=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    (line,) = [ln for ln in out.splitlines() if ln.startswith("error: train:")]
    assert "'train.epochs' must be greater than or equal to 1 (got 0)" in line
    assert "Traceback" not in out


def _start_and_wait_for_epoch(project: Project, cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, cwd=project.root, env=project.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 180
    while "epoch 1/" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training never started:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def _new_runs(project: Project, name: str, old: set[str]) -> list:
    """Runs named ``name`` that are not among the run ids ``old``."""
    return [r for r in project.runs(name) if r.info.run_id not in old]


def _ids(runs: list) -> set[str]:
    return {r.info.run_id for r in runs}


def test_ctrl_c_during_dvc_repro_kills_the_run_and_leaves_no_model(project: Project, tmp_path: Path):
    project.set_params(train={"epochs": 500})
    pipelines = len(project.runs("pipeline"))
    trains = _ids(project.runs("train"))
    proc = _start_and_wait_for_epoch(project, ["dvc", "repro"], tmp_path / "repro.log")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(timeout=120) != 0
    log = (tmp_path / "repro.log").read_text()
    assert "error: train: interrupted" in log
    (killed,) = _new_runs(project, "train", trains)
    assert killed.info.status == "KILLED"
    assert len(project.runs("pipeline")) == pipelines
    models = project.root / "models"
    assert not (models / "model.h5").exists()
    assert [p.name for p in models.iterdir() if p.name != ".gitignore"] == []
    # The next run of the stage starts cleanly.
    project.set_params(train={"epochs": 1})
    project.sh("dvc", "repro", "train")
    assert (models / "model.h5").is_file()
    (rerun,) = _new_runs(project, "train", trains | {killed.info.run_id})
    assert rerun.info.status == "FINISHED"


def test_sigterm_during_training_keeps_the_previous_model(project: Project, tmp_path: Path):
    model = project.root / "models" / "model.h5"
    before = md5_file(model)
    project.set_params(train={"epochs": 500})
    trains = _ids(project.runs("train"))
    proc = _start_and_wait_for_epoch(project, [sys.executable, "-m", "stages.train"], tmp_path / "train.log")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    last = (tmp_path / "train.log").read_text().strip().splitlines()[-1]
    assert last.startswith("error: train: interrupted")
    (killed,) = _new_runs(project, "train", trains)
    assert killed.info.status == "KILLED"
    assert md5_file(model) == before
    assert sorted(p.name for p in model.parent.iterdir()) == [".gitignore", "model.h5", "model_run.json"]


@pytest.mark.xdist_group("queued")  # on one worker with the UI test: the experiments they read run once
def test_queued_experiments_in_parallel_all_land_in_the_main_store(queued_experiments: Project):
    # Two experiments on two workers (conftest.py): both ran at once, writing to the one SQLite store.
    project = queued_experiments
    status = project.sh("dvc", "queue", "status").stdout
    assert status.count("Success") >= 2 and "Failed" not in status, status
    names = set(QUEUED)
    # Each experiment's pipeline run is named after it; its stage runs carry its name and params.
    pipelines = [r for r in project.runs() if r.info.run_name in names]
    assert len(pipelines) == 2 and all(r.info.status == "FINISHED" for r in pipelines)
    assert all(r.data.tags[tracking.TAG_STAGE] == "pipeline" for r in pipelines)
    trains = [r for r in project.runs("train") if r.data.tags.get("dvc.exp_name") in names]
    assert len(trains) == 2
    assert sorted(r.data.params["train.learning_rate"] for r in trains) == sorted(QUEUED.values())
    # Both closed a result and left no run without one: the top level is the three results,
    # the row of runs without a result retired rather than left empty.
    top = sorted(r.info.run_name for r in project.runs() if tracking.TAG_PARENT not in r.data.tags)
    assert top == sorted(["pipeline", *names])
    # They ran in DVC's temporary copies (as `dvc exp run --temp` does), yet their store and
    # artifacts are the main project's, not the deleted copies'.
    assert all(r.info.artifact_uri.startswith((project.root / "mlartifacts").as_uri()) for r in trains)
    assert not list((project.root / ".dvc" / "tmp").rglob("mlflow.db"))
    # `make exps` (the README's `dvc exp show`): the test metrics, the best epoch, the param
    # that differs, and not much else.
    drop = re.search(r"^EXPS_DROP := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).replace("$$", "$")

    flags = ("--csv", "--only-changed", "--precision", "4", "--drop", drop)
    shown = set(project.sh("dvc", "exp", "show", *flags).stdout.splitlines()[0].split(","))
    metrics = {"best_epoch", "val_accuracy", "val_loss", "test_accuracy", "test_loss", "test_macro_f1"}
    table = {"Experiment", "rev", "typ", "Created", "State", "Executor"}  # the last two for queued runs
    assert "train.learning_rate" in shown  # metrics show where they differ (tiny data: they may not)
    assert shown <= metrics | table | {"train.learning_rate"}, shown


def test_dvc_push_and_pull_round_trip(project: Project, tmp_path: Path):
    project.sh("dvc", "remote", "add", "-f", "-d", "local", str(tmp_path / "remote"))
    before = project.array_md5s(), md5_file(project.root / "models" / "model.h5")
    project.sh("dvc", "push")
    for path in ("data/prepared", "models/model.h5", ".dvc/cache"):
        target = project.root / path
        (shutil.rmtree if target.is_dir() else Path.unlink)(target)
    project.sh("dvc", "pull")
    assert (project.array_md5s(), md5_file(project.root / "models" / "model.h5")) == before
    assert "up to date" in project.sh("dvc", "status").stdout
