"""MLflow plumbing on a real SQLite store: the recorder, run status, tags, the pipeline run."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import pytest

from imgclf import tracking
from imgclf.core.errors import PipelineError
from imgclf.core.params import parse
from imgclf.tracking import lineage, outage, runs, store, system
from imgclf.tracking.result import DataInput, StageResult

from .helpers import list_runs

EXP = "test-exp"
P = parse({"mlflow": {"experiment": EXP}, "train": {"epochs": 2, "conv_filters": [4, 8]}})


def _runs(name: str | None = None):
    return list_runs(mlflow.get_tracking_uri(), name, experiment=EXP)


def test_default_store_is_anchored_at_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup(EXP)
    exp = mlflow.MlflowClient().get_experiment_by_name(EXP)
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert (tmp_path / "mlflow.db").is_file()


def test_recorder_logs_shaping_params_progress_and_result(mlflow_store: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    monkeypatch.setenv("MLFLOW_RUN_ID", "not-a-run")  # must not be resumed
    report = tmp_path / "report.json"
    report.write_text("{}")
    split = DataInput("demo/train", "train", "0123456789abcdef", str(tmp_path), {"images_per_class": {"a": 3}})
    with tracking.recorder("train", P, inputs=[split]) as rec:
        rec.log_params({"model.parameters": 1234})
        for epoch in (1, 2):
            rec.log_epoch(epoch, {"val_loss": 1.0 / epoch})
        rec.record(
            StageResult(
                metrics={"accuracy": 0.5, "per class: cats!": 1.0},
                facts={"dataset.images": 30},
                fingerprints={"data": "abc"},
                artifacts=[(report, "reports")],
            )
        )
    (run,) = _runs("train")
    assert run.info.status == "FINISHED"
    # Exactly the sections that shape the stage, flattened as DVC names them, plus what it found out.
    assert set(run.data.params) == set(P.shaping("train")) | {"model.parameters", "dataset.images"}
    # The data it read, as a dataset input: our digest (shortened), its context and profile.
    (item,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert (item.dataset.name, item.dataset.digest) == ("demo/train", "0123456789")
    assert [(t.key, t.value) for t in item.tags] == [("mlflow.data.context", "train")]
    assert '"images_per_class": {"a": 3}' in item.dataset.profile
    # Machine figures, host-wide and of the stage's own process, even for a run this short.
    assert {"system/cpu_utilization_percentage", "system/process_memory_rss_megabytes"} <= set(run.data.metrics)
    assert run.data.metrics["system/process_memory_rss_megabytes"] > 50
    assert {"base.seed", "train.epochs", "train.early_stopping.patience"} <= set(run.data.params)
    assert run.data.params["train.conv_filters"] == "[4, 8]" and run.data.params["model.parameters"] == "1234"
    assert run.data.tags[tracking.TAG_STAGE] == "train" and run.data.tags["dvc.exp_name"] == "exp-abc"
    assert run.data.tags[tracking.TAG_DATA_MD5] == "abc"
    assert len(run.data.tags[tracking.TAG_GIT_COMMIT]) == 40
    assert run.data.metrics["accuracy"] == 0.5 and run.data.metrics["per class_ cats_"] == 1.0
    assert run.data.metrics["timing/mlflow_seconds"] > 0
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "reports")] == ["reports/report.json"]


def test_a_resumed_training_continues_its_run_and_logs_the_epochs_it_missed(mlflow_store: str, caplog):
    with pytest.raises(KeyboardInterrupt), tracking.recorder("train", P) as rec:
        rec.log_epoch(1, {"epoch": 1, "loss": 0.9})
        raise KeyboardInterrupt  # epoch 2 was checkpointed, but the kill came before it was logged
    killed = rec.run_id
    history = [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.8}]
    with tracking.recorder("train", P, continue_run=killed) as rec:
        rec.log_history(history)
        rec.log_epoch(3, {"epoch": 3, "loss": 0.7})
    assert rec.run_id == killed
    (run,) = _runs("train")
    assert run.info.status == "FINISHED"
    steps = mlflow.MlflowClient().get_metric_history(killed, "loss")
    assert [(m.step, m.value) for m in steps] == [(1, 0.9), (2, 0.8), (3, 0.7)]
    # A run the store no longer has (deleted, another store): a new run, and a warning.
    mlflow.MlflowClient().delete_run(killed)
    with tracking.recorder("train", P, continue_run=killed) as rec:
        pass
    assert rec.run_id != killed and "not in this store any more" in caplog.text


@pytest.mark.parametrize("exc, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_recorder_closes_failed_or_killed(mlflow_store: str, exc: BaseException, status: str):
    with pytest.raises(type(exc)), tracking.recorder("augment", P):
        raise exc
    (run,) = _runs("augment")
    assert run.info.status == status
    assert mlflow.active_run() is None


def _refuse_closing(monkeypatch, calls: int, err: Exception) -> list:
    """Make MlflowClient.set_terminated raise ``err`` for train runs ``calls`` times, then close
    them again (other runs close as usual)."""
    real = mlflow.MlflowClient.set_terminated
    refused: list = []

    def set_terminated(self, run_id, *args, **kwargs):
        if len(refused) < calls and self.get_run(run_id).info.run_name == "train":
            refused.append(run_id)
            raise err
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", set_terminated)
    monkeypatch.setattr(outage, "FIRST_PAUSE", 0.05)
    return refused


def test_a_close_lost_in_an_outage_is_tried_again_and_the_run_ends_finished(mlflow_store: str, monkeypatch):
    import requests

    refused = _refuse_closing(monkeypatch, 1, requests.exceptions.ConnectionError("[Errno 111] Connection refused"))
    with tracking.recorder("train", P) as rec:
        rec.log_epoch(1, {"loss": 0.5})
    assert refused == [rec.run_id]
    (run,) = _runs("train")
    assert run.info.status == "FINISHED" and mlflow.active_run() is None


def test_a_failure_to_close_a_failed_run_leaves_the_stages_own_error_and_no_active_run(
    mlflow_store: str, monkeypatch, caplog
):
    from mlflow.exceptions import MlflowException

    _refuse_closing(monkeypatch, 99, MlflowException("(sqlite3.OperationalError) database or disk is full"))
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(OSError, match="No space left"),
        tracking.recorder("train", P),
    ):
        raise OSError(28, "No space left on device")
    assert "could not close train run" in caplog.text and "disk is full" in caplog.text
    assert mlflow.active_run() is None  # MLflow's exit hook has no run to close FINISHED


def test_unreachable_server_is_waited_for_then_fails_before_the_stage_works(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(outage.WAIT_ENV, "2")
    worked = []
    start = time.monotonic()
    with (
        pytest.raises(PipelineError, match="127.0.0.1:9 unreachable for 2 s .connection refused"),
        tracking.recorder("train", P),
    ):
        worked.append(True)
    assert worked == [] and time.monotonic() - start >= 2


def test_a_bad_wait_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(outage.WAIT_ENV, "soon")
    with pytest.raises(PipelineError, match=f"{outage.WAIT_ENV}='soon' is not a number of seconds"):
        outage.wait_limit()


def _failing_for(monkeypatch, calls: int) -> list:
    """Make MlflowClient.log_batch refuse to connect ``calls`` times (a server that is gone),
    then reach the real store again; returns the list of refused calls."""
    import requests

    real = mlflow.MlflowClient.log_batch
    refused: list = []

    def log_batch(self, *args, **kwargs):
        if len(refused) < calls:
            refused.append(args)
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", log_batch)
    monkeypatch.setattr(outage, "FIRST_PAUSE", 0.05)
    return refused


def test_an_outage_keeps_the_epochs_and_sends_them_in_order_once_when_it_ends(mlflow_store, monkeypatch, caplog):
    refused = _failing_for(monkeypatch, 3)
    with caplog.at_level(logging.WARNING, logger="imgclf.tracking"), tracking.recorder("train", P) as rec:
        for epoch in range(1, 6):
            rec.log_epoch(epoch, {"epoch": epoch, "loss": 1.0 / epoch})
    assert len(refused) == 3
    (run,) = _runs("train")
    assert run.info.status == "FINISHED"
    steps = mlflow.MlflowClient().get_metric_history(rec.run_id, "loss")
    assert sorted((m.step, m.value) for m in steps) == [(e, 1.0 / e) for e in range(1, 6)]
    said = [r.getMessage() for r in caplog.records if r.name == "imgclf.tracking"]
    assert len([m for m in said if "unreachable (connection refused)" in m]) == 1, said
    assert len([m for m in said if "is back after" in m]) == 1, said


def test_what_cannot_wait_is_retried_until_the_server_answers(mlflow_store, monkeypatch):
    refused = _failing_for(monkeypatch, 2)
    client = outage.client()
    run = client.create_run(tracking.setup(EXP))
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param("a", "1")])
    assert len(refused) == 2 and mlflow.MlflowClient().get_run(run.info.run_id).data.params == {"a": "1"}


def test_linking_reparents_fresh_runs_and_copies_cached_ones(mlflow_store: str):
    with tracking.recorder("augment", parse({"mlflow": {"experiment": EXP}, "data": {"image_size": 16}})) as rec:
        rec.record(StageResult(metrics={"images": 30}, fingerprints={"data": "d1"}))
    exp_id = tracking.setup(EXP)
    source = lineage.find_stage_run(exp_id, "augment", tracking.TAG_DATA_MD5, "d1")
    assert source is not None
    assert lineage.find_stage_run(exp_id, "augment", tracking.TAG_DATA_MD5, "other") is None

    pending = lineage.pending_row(exp_id)
    assert source.data.tags[tracking.TAG_PARENT] == pending  # no result has taken it yet
    first = runs.write_run(exp_id, "pipeline", {}, {}, {})
    shown = lineage.link_stage_run(first, "augment", source, pending)
    assert shown == source.info.run_id
    assert mlflow.get_run(shown).data.tags[tracking.TAG_PARENT] == first

    # A second pipeline reusing the cached augment result gets its own linked child.
    source = lineage.find_stage_run(exp_id, "augment", tracking.TAG_DATA_MD5, "d1")
    second = runs.write_run(exp_id, "pipeline", {}, {}, {})
    linked = lineage.link_stage_run(second, "augment", source, pending)
    run = mlflow.get_run(linked)
    assert linked != source.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_PARENT] == second
    assert run.data.tags[tracking.TAG_LINKED_FROM] == source.info.run_id
    assert run.data.params == source.data.params and run.data.params["data.image_size"] == "16"
    assert run.data.metrics == source.data.metrics and run.data.metrics["images"] == 30.0
    # The original stays under the first pipeline.
    assert mlflow.get_run(source.info.run_id).data.tags[tracking.TAG_PARENT] == first


def _data(name: str, context: str) -> DataInput:
    return DataInput(name, context, "d1" * 8, "/data", {})


def test_closing_a_result_writes_the_pipeline_run_over_the_stage_runs(mlflow_store: str, monkeypatch, caplog):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-42")
    with tracking.recorder("augment", P, inputs=[_data("demo", "source")]) as rec:
        rec.record(
            StageResult(
                metrics={"timing/augment_seconds": 3}, facts={"dataset.images": 30}, fingerprints={"data": "d1"}
            )
        )
    with tracking.recorder("train", P, inputs=[_data("demo/train", "train"), _data("demo/val", "val")]) as rec:
        for epoch, value in ((1, 0.5), (2, 0.75)):
            rec.log_epoch(epoch, {"val_accuracy": value})
        rec.record(StageResult(metrics={"best/val_accuracy": 0.75}, fingerprints={"data": "d1", "model": "m1"}))
    with tracking.recorder("evaluate", P, inputs=[_data("demo/test", "test")]) as rec:
        rec.record(StageResult(metrics={"test_accuracy": 0.5}, fingerprints={"data": "d1", "model": "m1"}))
    assert not _runs("exp-42")  # the recorder itself writes no pipeline run
    (pending,) = _runs(lineage.PENDING_NAME)
    with caplog.at_level(logging.INFO, logger="imgclf.tracking.recorder"):
        assert tracking.close_result(P, rec) == _runs("exp-42")[0].info.run_id
    (pipeline,) = _runs("exp-42")
    # The last line a run of the pipeline prints: where the result is in the UI.
    page = f"#/experiments/{pipeline.info.experiment_id}/runs/{pipeline.info.run_id}?workflowType=machine_learning"
    assert f"pipeline run {pipeline.info.run_id}: http://127.0.0.1:5000/{page} (after `mlflow ui`)" in caplog.text
    assert pipeline.info.status == "FINISHED" and pipeline.data.tags[tracking.TAG_STAGE] == "pipeline"
    # Every param that shaped the result, and the facts the stages found (counts, the model's size).
    assert set(pipeline.data.params) == set(P.shaping("pipeline")) | set(P.shaping("evaluate")) | {"dataset.images"}
    assert pipeline.data.metrics["test_accuracy"] == 0.5
    assert pipeline.data.metrics["best/val_accuracy"] == 0.75 and pipeline.data.metrics["timing/augment_seconds"] == 3
    # The learning curves, for the chart view to compare results by.
    curve = mlflow.MlflowClient().get_metric_history(pipeline.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in curve] == [(1, 0.5), (2, 0.75)]
    assert "timing/mlflow_seconds" not in pipeline.data.metrics  # a stage's own cost, not the result's
    assert not any(k.startswith("system/") for k in pipeline.data.metrics)
    inputs = mlflow.get_run(pipeline.info.run_id).inputs.dataset_inputs
    assert sorted((i.dataset.name, i.tags[0].value) for i in inputs) == [
        ("demo", "source"),
        ("demo/test", "test"),
        ("demo/train", "train"),
        ("demo/val", "val"),
    ]
    assert pipeline.data.tags[tracking.TAG_MODEL_MD5] == "m1"
    stage_runs = {stage: _runs(stage)[0] for stage in ("augment", "train", "evaluate")}
    for stage, run in stage_runs.items():
        assert run.data.tags[tracking.TAG_PARENT] == pipeline.info.run_id, stage
    # Its Duration is the result's: from the first stage's start to the end of the last.
    assert pipeline.info.start_time == stage_runs["augment"].info.start_time
    assert pipeline.info.end_time >= stage_runs["evaluate"].info.end_time
    # The top level holds the result alone: the emptied row of runs without a result is deleted.
    top = sorted(r.info.run_name for r in _runs() if tracking.TAG_PARENT not in r.data.tags)
    assert top == ["exp-42"]
    assert mlflow.get_run(pending.info.run_id).info.lifecycle_stage == "deleted"
    # The next stage run restores that row (one row, not a new one each time).
    with tracking.recorder("augment", P) as rec:
        rec.record(StageResult(fingerprints={"data": "d2"}))
    assert [r.info.run_id for r in _runs(lineage.PENDING_NAME)] == [pending.info.run_id]
    assert _runs("augment")[0].data.tags[tracking.TAG_PARENT] == pending.info.run_id


def test_stage_runs_without_a_result_sit_under_one_row_that_says_so(mlflow_store: str):
    for _ in range(2):
        with tracking.recorder("augment", P) as rec:
            rec.record(StageResult(fingerprints={"data": "d1"}))
    with pytest.raises(RuntimeError), tracking.recorder("train", P):
        raise RuntimeError("stopped for good")
    (pending,) = _runs(lineage.PENDING_NAME)
    assert "no result has taken" in pending.data.tags["mlflow.note.content"]
    children = [r for r in _runs() if r.data.tags.get(tracking.TAG_PARENT) == pending.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["augment", "augment", "train"]
    assert [r.info.run_name for r in _runs() if tracking.TAG_PARENT not in r.data.tags] == [lineage.PENDING_NAME]


def test_the_row_stays_while_a_run_without_a_result_is_under_it(mlflow_store: str):
    with pytest.raises(RuntimeError), tracking.recorder("train", P):
        raise RuntimeError("stopped for good")
    for stage in ("augment", "train", "evaluate"):
        with tracking.recorder(stage, P) as rec:
            rec.record(StageResult(metrics={"test_accuracy": 0.5}, fingerprints={"data": "d1", "model": "m1"}))
    tracking.close_result(P, rec)
    (pending,) = _runs(lineage.PENDING_NAME)
    left = [r for r in _runs() if r.data.tags.get(tracking.TAG_PARENT) == pending.info.run_id]
    assert [(r.info.run_name, r.info.status) for r in left] == [("train", "FAILED")]


def test_a_result_closed_as_a_stage_starts_leaves_that_stage_run_shown(mlflow_store: str, monkeypatch):
    """The row is deleted between a stage naming it and its run starting under it (a result
    closed by another experiment in that instant): the stage run's row is restored."""
    with tracking.recorder("augment", P) as rec:
        rec.record(StageResult(fingerprints={"data": "d1"}))
    named = lineage.pending_row

    def named_then_retired(experiment_id):
        pending_id = named(experiment_id)
        assert lineage.retire_pending_row(experiment_id, pending_id) is False  # augment is under it
        client = mlflow.MlflowClient()
        for run in _runs("augment"):
            client.set_tag(run.info.run_id, tracking.TAG_PARENT, "elsewhere")  # as a closed result would
        assert lineage.retire_pending_row(experiment_id, pending_id) is True
        return pending_id

    monkeypatch.setattr(lineage, "pending_row", named_then_retired)
    with tracking.recorder("train", P) as rec:
        rec.record(StageResult(fingerprints={"model": "m1"}))
    (pending,) = _runs(lineage.PENDING_NAME)
    assert _runs("train")[0].data.tags[tracking.TAG_PARENT] == pending.info.run_id


def test_a_stage_run_starting_as_the_row_is_retired_keeps_it(mlflow_store: str, monkeypatch):
    """A stage run appears under the row between the retirement's look and its delete (before
    that run's own check): the retirement's second look restores the row."""
    exp_id = tracking.setup(EXP)
    pending = lineage.pending_row(exp_id)
    looks = []
    holds = lineage._holds_runs

    def a_run_starts_after_the_first_look(client, experiment_id, pending_id):
        held = holds(client, experiment_id, pending_id)
        if not looks:
            runs.write_run(experiment_id, "train", {tracking.TAG_PARENT: pending_id}, {}, {})
        looks.append(held)
        return held

    monkeypatch.setattr(lineage, "_holds_runs", a_run_starts_after_the_first_look)
    assert lineage.retire_pending_row(exp_id, pending) is False
    assert looks == [False, True]
    assert [r.info.run_id for r in _runs(lineage.PENDING_NAME)] == [pending]


def test_a_row_purged_meanwhile_is_left_to_the_next_stage_run(mlflow_store: str):
    tracking.setup(EXP)
    lineage.keep_pending_row("0" * 32)  # no such run (`mlflow gc` purged it): no error
    assert not _runs(lineage.PENDING_NAME)


def test_only_a_tracking_server_keeps_the_row_for_good():
    assert store.is_server("http://mlflow.example:5000") and store.is_server("https://h/x")
    assert not store.is_server("sqlite:////tmp/mlflow.db")
    assert not store.is_server("postgresql://u@db/mlflow")
    assert not store.is_server("/tmp/mlruns")


def test_only_a_stage_that_closes_results_can_close_one(mlflow_store: str):
    with tracking.recorder("train", P) as rec:
        rec.record(StageResult(fingerprints={"model": "m1"}))
    with pytest.raises(ValueError, match="train recorded no result that closes"):
        tracking.close_result(P, rec)


def test_a_failed_final_stage_writes_no_pipeline_run(mlflow_store: str):
    with pytest.raises(RuntimeError), tracking.recorder("evaluate", P) as rec:
        raise RuntimeError("boom")
    assert rec.result is None  # so evaluate never gets to close_result
    assert sorted(r.info.run_name for r in _runs()) == ["evaluate", lineage.PENDING_NAME]


def test_runs_that_can_never_end_are_closed_killed_when_a_stage_starts(mlflow_store: str):
    import subprocess
    import sys

    exp_id = tracking.setup(EXP)
    client = mlflow.MlflowClient()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)

    def running(process: str | None) -> str:
        tags = {runs.TAG_PROCESS: process} if process else {}
        return client.create_run(exp_id, tags=tags, run_name="train").info.run_id  # stays RUNNING

    dead = running(f"{runs.socket.gethostname()}:{dead_pid}:1")
    alive = running(runs._this_process())  # this test's own process
    elsewhere = running("another-host:1:1")  # cannot be checked from here
    discarded = running(runs._this_process())
    with tracking.recorder("augment", P, discarded=[(discarded, "its checkpoint was discarded")]):
        pass
    # The run a resumed training carries on is left to it, though its old process is gone.
    kept = running(runs._this_process().rsplit(":", 1)[0] + ":1")
    with tracking.recorder("train", P, continue_run=kept):
        pass
    status = {rid: client.get_run(rid) for rid in (dead, alive, elsewhere, discarded, kept)}
    assert status[dead].info.status == "KILLED" and f"pid {dead_pid}" in status[dead].data.tags[runs.TAG_END_REASON]
    assert status[discarded].info.status == "KILLED"
    assert status[discarded].data.tags[runs.TAG_END_REASON] == "its checkpoint was discarded"
    assert status[alive].info.status == status[elsewhere].info.status == status[kept].info.status == "RUNNING"


def test_class_names_that_make_one_metric_name_keep_both_figures():
    from imgclf.tracking.recorder import _metrics

    sent = _metrics({"test_f1/a+b": 0.5, "test_f1/a&b": 0.75, "test_f1/c": 1.0})
    assert len(sent) == 3 and sent["test_f1/c"] == 1.0
    assert sorted(v for k, v in sent.items() if k.startswith("test_f1/a_b-")) == [0.5, 0.75]


def test_metric_key_is_safe():
    assert runs.metric_key("sea lions!") == "sea lions_"
    assert runs.metric_key("猫") == "猫"


def test_a_sqlite_store_keeps_its_artifacts_beside_it(mlflow_store: str, tmp_path: Path):
    tracking.setup(EXP)
    exp = mlflow.MlflowClient().get_experiment_by_name(EXP)
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_the_pipeline_run_has_the_results_figures_not_the_stages_costs():
    from imgclf.tracking.lineage import _result_metrics

    train_run = {"loss": 0.5, "best/loss": 0.3, "best_epoch": 4, "timing/mlflow_seconds": 1.0}
    train_run["system/cpu_utilization_percentage"] = 50.0
    assert _result_metrics(train_run) == {"loss": 0.5, "best/loss": 0.3, "best_epoch": 4}


def test_system_metrics_pace_suits_short_and_long_stages():
    assert system.pace(0) == (1.0, 1) and system.pace(10 * 3600) == (10.0, 6)

    def points(seconds: float) -> int:
        age, n = 0.0, 0
        while age < seconds:
            interval, samples = system.pace(age)
            age, n = age + interval * samples, n + 1
        return n

    assert points(10) >= 9  # a point a second at the start
    assert 500 < points(10 * 3600) < 1000  # a point a minute after the first hour


def test_a_child_process_that_ends_as_it_is_listed_is_skipped(monkeypatch):
    import subprocess
    import sys

    import psutil

    monitor = system._process_monitor()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        reading = psutil.Process.cpu_percent

        def ended(self, *args, **kwargs):  # the fault: the child is gone by its first reading
            if self.pid == child.pid:
                raise psutil.NoSuchProcess(child.pid)
            return reading(self, *args, **kwargs)

        monkeypatch.setattr(psutil.Process, "cpu_percent", ended)
        monitor.collect_metrics()
        assert child.pid not in monitor.children
        monkeypatch.setattr(psutil.Process, "cpu_percent", reading)
        monitor.collect_metrics()  # still there: measured from now on
        assert child.pid in monitor.children
    finally:
        child.kill()
        child.wait()
    assert len(monitor.metrics["process_memory_rss_megabytes"]) == 2


def test_a_monitor_that_keeps_failing_warns_once_and_the_other_figures_go_on(mlflow_store: str, monkeypatch, caplog):
    exp_id = tracking.setup(EXP)
    run_id = mlflow.MlflowClient().create_run(exp_id).info.run_id
    calls = []

    class Broken:  # the fault: a monitor whose every reading fails (a GPU lost, say)
        metrics: dict = {}

        def collect_metrics(self):
            calls.append(1)
            raise OSError("a reading failed")

        def clear_metrics(self):
            pass

    monkeypatch.setattr(system, "FIRST_INTERVAL", 0.05)
    with caplog.at_level(logging.WARNING, logger=system.__name__):
        sampler = system.Sampler(run_id, 0)
        sampler.monitors.insert(0, Broken())
        sampler.thread.start()
        deadline = time.monotonic() + 10
        while sampler.step < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sampler.thread.is_alive()
        sampler.finish()
    outage.outbox().flush()
    assert len(calls) >= 3
    warnings = [r.message for r in caplog.records if "Broken failed" in r.message]
    assert warnings == ["system metrics: Broken failed, the other figures go on: OSError('a reading failed')"]
    history = mlflow.MlflowClient().get_metric_history(run_id, "system/process_cpu_percentage")
    assert len(history) >= 3


def test_the_champion_alias_moves_only_to_a_better_version(mlflow_store: str):
    from imgclf.tracking.models import CHAMPION, promote

    exp_id = tracking.setup(EXP)
    client = mlflow.MlflowClient()
    client.create_registered_model("clf")

    def evaluated(accuracy: float, minimum: float = 0.0, labels=("cat", "dog")) -> tuple[bool, str]:
        with tracking.recorder("train", P) as rec:  # a train run that registered its model
            pass
        client.create_model_version("clf", f"runs:/{rec.run_id}/keras_model", run_id=rec.run_id)
        return promote("clf", "test_accuracy", minimum, {"test_accuracy": accuracy}, rec.run_id, exp_id, list(labels))

    def champion() -> str:
        return str(client.get_model_version_by_alias("clf", CHAMPION).version)

    assert evaluated(0.90) == (True, "version 1 is the champion: test_accuracy 0.9000")
    promoted, why = evaluated(0.80)
    assert not promoted and why == "version 2: test_accuracy 0.8000 does not beat champion version 1's 0.9000"
    assert not evaluated(0.90)[0]  # a tie keeps the champion
    promoted, why = evaluated(0.95, minimum=0.97)
    assert not promoted and "below evaluate.promote.min 0.97" in why
    assert champion() == "1"
    assert evaluated(0.95) == (True, "version 5 is the champion (was version 1): test_accuracy 0.9500")
    assert champion() == "5"
    assert client.get_model_version("clf", "5").tags["imgclf.test_accuracy"] == "0.95"
    # Better figures on other classes (an easier dataset) never take the alias.
    for other in (("cat", "dog", "fox"), ("dog", "cat")):
        promoted, why = evaluated(0.99, labels=other)
        assert not promoted and "has other classes than champion version 5" in why
    assert champion() == "5" and client.get_model_version("clf", "5").tags["imgclf.labels"] == '["cat", "dog"]'
    # A model that was never registered is said so.
    promoted, why = promote("clf", "test_accuracy", 0.0, {"test_accuracy": 1.0}, "no-such-run", exp_id, ["cat"])
    assert not promoted and "mlflow.register: false" in why


def test_a_refused_param_loses_only_itself_not_the_metrics_sent_with_it(mlflow_store, caplog):
    with caplog.at_level(logging.WARNING, logger="imgclf.tracking"), tracking.recorder("train", P) as rec:
        rec.log_params({"found.width": 1})
        outage.outbox().flush()
        rec.log_params({"found.width": 2})  # a logged param cannot change: MLflow refuses it
        rec.log_epoch(1, {"epoch": 1, "loss": 0.5})
    run = mlflow.MlflowClient().get_run(rec.run_id)
    assert run.data.params["found.width"] == "1" and run.data.metrics["loss"] == 0.5
    assert "MLflow refused 1 params" in caplog.text


def test_a_runs_page_is_on_the_server_or_where_mlflow_ui_serves_a_local_store():
    page = "/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert store.ui_link("3", "abc", "sqlite:////data/mlflow.db") == "http://127.0.0.1:5000" + page
    assert store.ui_link("3", "abc", "/data/mlruns") == "http://127.0.0.1:5000" + page
    assert store.ui_link("3", "abc", "https://ann:secret@mlflow.example.com/") == "https://mlflow.example.com" + page
    assert store.ui_link("3", "abc", "http://10.0.0.5:5000/mlflow") == "http://10.0.0.5:5000/mlflow" + page
    assert store.ui_link("3", "abc", "postgresql://ann@db/mlflow") == "http://127.0.0.1:5000" + page
    assert store.ui_link("3", "abc", "databricks") is None
