"""MLflow plumbing on a real SQLite store: run status, params, tags, linking stage runs."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from imgclf import tracking
from imgclf.errors import PipelineError

from .helpers import list_runs

EXP = "test-exp"


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


def test_run_logs_params_tags_and_finishes(mlflow_store: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    monkeypatch.setenv("MLFLOW_RUN_ID", "not-a-run")  # must not be resumed
    with tracking.run("train", EXP, params={"train": {"epochs": 2, "conv_filters": [4, 8]}},
                      tags={tracking.TAG_DATA_MD5: "abc"}) as active:
        mlflow.log_metric("loss", 0.5)
    run = mlflow.get_run(active.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert run.data.params == {"train.epochs": "2", "train.conv_filters": "[4, 8]"}
    assert run.data.tags[tracking.TAG_STAGE] == "train"
    assert run.data.tags["dvc.exp_name"] == "exp-abc"
    assert run.data.tags[tracking.TAG_DATA_MD5] == "abc"
    assert len(run.data.tags[tracking.TAG_GIT_COMMIT]) == 40


@pytest.mark.parametrize("exc, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_run_closes_failed_or_killed(mlflow_store: str, exc: BaseException, status: str):
    with pytest.raises(type(exc)):
        with tracking.run("train", EXP):
            raise exc
    (run,) = _runs("train")
    assert run.info.status == status
    assert mlflow.active_run() is None


def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(PipelineError, match="127.0.0.1:9"):
        tracking.setup(EXP)


def test_linking_reparents_fresh_runs_and_copies_cached_ones(mlflow_store: str):
    with tracking.run("augment", EXP, params={"data": {"image_size": 16}},
                      tags={tracking.TAG_DATA_MD5: "d1"}):
        mlflow.log_metric("images", 30)
    exp_id = tracking.setup(EXP)
    source = tracking.find_stage_run(exp_id, "augment", tracking.TAG_DATA_MD5, "d1")
    assert source is not None
    assert tracking.find_stage_run(exp_id, "augment", tracking.TAG_DATA_MD5, "other") is None

    with tracking.run(tracking.PIPELINE, EXP) as first:
        shown = tracking.link_stage_run(first.info.run_id, EXP, "augment", source)
    assert shown == source.info.run_id
    assert mlflow.get_run(shown).data.tags[tracking.TAG_PARENT] == first.info.run_id

    # A second pipeline reusing the cached augment result gets its own linked child.
    source = tracking.find_stage_run(exp_id, "augment", tracking.TAG_DATA_MD5, "d1")
    with tracking.run(tracking.PIPELINE, EXP) as second:
        linked = tracking.link_stage_run(second.info.run_id, EXP, "augment", source)
    run = mlflow.get_run(linked)
    assert linked != source.info.run_id
    assert run.data.tags[tracking.TAG_PARENT] == second.info.run_id
    assert run.data.tags[tracking.TAG_LINKED_FROM] == source.info.run_id
    assert run.data.params == {"data.image_size": "16"}
    assert run.data.metrics == {"images": 30.0}
    # The original stays under the first pipeline.
    assert mlflow.get_run(source.info.run_id).data.tags[tracking.TAG_PARENT] == first.info.run_id


def test_deferred_run_keeps_its_start_time_params_and_failure(mlflow_store: str):
    import time

    before = int(time.time() * 1000)
    with pytest.raises(RuntimeError):
        with tracking.run("augment", EXP, params={"data": {"image_size": 16}}, defer=True):
            time.sleep(0.3)  # the stage's work, while the store opens in the background
            raise RuntimeError("boom")
    (run,) = _runs("augment")
    assert run.info.status == "FAILED"
    assert before <= run.info.start_time < before + 250
    assert run.data.params == {"data.image_size": "16"}


def test_deferred_run_reports_a_dead_server_when_first_used(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(PipelineError, match="127.0.0.1:9"):
        with tracking.run("train", EXP, defer=True) as active:
            active.ready()
