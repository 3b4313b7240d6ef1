"""The search's pieces without training: the space, a trial's params, the winner's command."""

from __future__ import annotations

import json
import shlex

import pytest

from imgclf.core.errors import PipelineError
from imgclf.core.params import parse

optuna = pytest.importorskip("optuna")

from imgclf.tuning import space, storage, winner  # noqa: E402

SPACE = {
    "train.learning_rate": {"low": 0.0001, "high": 0.01, "log": True},
    "train.batch_size": {"choices": [16, 32, 64]},
    "train.conv_filters": {"choices": [[16, 32], [32, 64]]},
    "train.dense_units": {"low": 64, "high": 256, "step": 64},
    "train.lr_schedule": {"choices": ["constant", "cosine"]},
}


def _params(**tune):
    return parse({"tune": {"epochs": 3, "space": SPACE, **tune}})


def test_a_trial_gets_values_as_params_yaml_spells_them():
    p = _params()
    trial = optuna.trial.FixedTrial(
        {
            "train.learning_rate": 0.002,
            "train.batch_size": 64,
            "train.conv_filters": "[16, 32]",
            "train.dense_units": 128,
            "train.lr_schedule": "cosine",
        }
    )
    values = space.suggest(trial, p)
    assert values["train.conv_filters"] == [16, 32]  # a list choice comes back as a list
    assert values["train.dense_units"] == 128 and isinstance(values["train.dense_units"], int)
    tp = space.trial_params(p, values)
    assert tp.train.conv_filters == [16, 32]
    assert tp.train.learning_rate == 0.002 and tp.train.lr_schedule == "cosine"
    assert tp.train.epochs == 3  # the study's budget, not params.yaml's
    assert p.train.epochs == 5 and p.train.conv_filters == [32, 64]  # the base is untouched


def test_the_first_trial_is_params_yaml_own_values_where_the_space_has_them():
    # params.yaml's batch_size 32 and conv_filters [32, 64] are choices; dense_units 512 is out
    # of its range, so the sampler picks it.
    first = space.baseline(_params())
    assert first == {
        "train.learning_rate": 0.001,
        "train.batch_size": 32,
        "train.conv_filters": "[32, 64]",
        "train.lr_schedule": "constant",
    }


def test_enqueue_reads_lists_and_names_bad_keys():
    p = _params()
    got = space.parse_enqueue("train.conv_filters=[32,64], train.learning_rate=5e-3", p)
    assert got == {"train.conv_filters": "[32, 64]", "train.learning_rate": 0.005}
    with pytest.raises(PipelineError, match="train.epochs=3.*one of tune.space: train.learning_rate"):
        space.parse_enqueue("train.epochs=3", p)


def test_winner_command_sets_every_searched_param_and_the_epochs():
    p = _params()
    study = optuna.create_study(study_name="s", direction="minimize")
    dists = {
        "train.learning_rate": optuna.distributions.FloatDistribution(0.0001, 0.01, log=True),
        "train.conv_filters": optuna.distributions.CategoricalDistribution(["[16, 32]", "[32, 64]"]),
    }
    for value, lr in ((0.5, 0.001), (0.25, 0.0031622776601683794), (0.75, 0.002)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.learning_rate": lr, "train.conv_filters": "[16, 32]"}, distributions=dists, value=value
            )
        )
    cmd = winner.winner_command(p, study)
    assert cmd[:5] == ["dvc", "exp", "run", "-n", "s-trial-1"]
    sets = [cmd[i + 1] for i, part in enumerate(cmd) if part == "-S"]
    assert sets == ["train.learning_rate=0.0031622776601683794", "train.conv_filters=[16,32]", "train.epochs=3"]
    assert shlex.split(shlex.join(cmd)) == cmd  # printed as a shell line, it reads back the same


def test_processes_joining_one_study_draw_different_points_and_one_process_draws_the_same_again():
    from imgclf.tuning.objective import trial_seeded_tpe

    p = _params()

    def draws(study, n: int) -> list[dict]:
        return [space.suggest(study.ask(), p) for _ in range(n)]

    # Two processes with the same params (a second machine on the same storage, a resume after a
    # kill): each opens the study with its own sampler, asking in turn before any trial ends.
    storage = optuna.storages.InMemoryStorage()
    name = optuna.create_study(storage=storage, study_name="s").study_name
    a, b = (optuna.load_study(study_name=name, storage=storage, sampler=trial_seeded_tpe(42, 10)) for _ in "ab")
    drawn = [d for _ in range(3) for d in (draws(a, 1) + draws(b, 1))]
    assert len({json.dumps(d, sort_keys=True) for d in drawn}) == len(drawn)
    # One process alone draws the same points each time it runs the study anew.
    again = [draws(optuna.create_study(sampler=trial_seeded_tpe(42, 10)), 4) for _ in range(2)]
    assert again[0] == again[1]


def test_a_range_over_a_count_that_may_be_a_word_draws_whole_numbers():
    # train.fine_tune.unfreeze is a count of layers or "all" (its default): a range draws counts.
    p = parse(
        {
            "data": {"image_size": 32},
            "train": {"model": "mobilenet_v3_small", "init": "imagenet"},
            "tune": {"space": {"train.fine_tune.unfreeze": {"low": 0, "high": 30}}},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.suggest(study.ask(), p)["train.fine_tune.unfreeze"] for _ in range(5)]
    assert all(type(v) is int and 0 <= v <= 30 for v in drawn), drawn
    assert space.trial_params(p, {"train.fine_tune.unfreeze": drawn[0]}).train.fine_tune.unfreeze == drawn[0]
    with pytest.raises(PipelineError, match="is a whole number"):
        parse({"tune": {"space": {"train.fine_tune.unfreeze": {"low": 0, "high": 30.5}}}})


@pytest.mark.parametrize(
    "space, fragment",
    [
        ({"train.foo": {"low": 1, "high": 2}}, "tune.space.train.foo: not a train or augment param"),
        ({"train.epochs": {"choices": [1, 2]}}, "tune.space.train.epochs: cannot be searched"),
        ({"data.image_size": {"choices": [16]}}, "tune.space.data.image_size: not a train or augment param"),
        ({"train.learning_rate": {"low": 0.01, "high": 0.001}}, "low 0.01 must be below high 0.001"),
        ({"train.learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log needs low above 0"),
        ({"train.batch_size": {"low": 8, "high": 64.5}}, "is a whole number"),
        ({"train.dropout_conv": {"choices": [0.1], "low": 0.0}}, "either choices or low/high"),
    ],
)
def test_a_bad_space_names_the_entry(space: dict, fragment: str):
    with pytest.raises(PipelineError, match="^settings.yaml: .*" + fragment.replace("[", r"\[").replace("(", r"\(")):
        parse({"tune": {"space": space}}, "params.yaml", "settings.yaml")


@pytest.mark.parametrize(
    "space, fragment",
    [
        ({"train.optimizer": {"choices": ["adam", "lion"]}}, "tune.space.train.optimizer: 'lion' is not a valid value"),
        ({"train.conv_filters": {"choices": [[8, 8], [16, 32, 64, 64, 64]]}}, "too small for 5 conv blocks"),
        ({"train.learning_rate": {"low": 0.001, "high": 20}}, "less than or equal to 10"),
    ],
)
def test_tune_checks_every_value_the_space_can_give(space: dict, fragment: str):
    from imgclf.core.params import check_space

    p = parse({"tune": {"space": space}})  # the stages accept it: it fits the params' shape
    with pytest.raises(PipelineError, match="^settings.yaml: .*" + fragment):
        check_space(p)


def test_storage_defaults_to_the_main_repository_and_takes_postgres_urls(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert storage.storage_url(None) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert storage.storage_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert storage.storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_storage_password_is_never_shown():
    assert (
        storage.shown("postgresql+psycopg://ann:s3cret@db:5432/optuna") == "postgresql+psycopg://ann:***@db:5432/optuna"
    )
    assert storage.shown("sqlite:////x/optuna.db") == "sqlite:////x/optuna.db"


def test_a_resume_refuses_other_fixed_params_and_queues_its_enqueued_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    stored = storage.open_storage(url, stale_after=60)
    storage.open_study(_params(), "s", False, (), stored, url)
    changed = parse({"train": {"optimizer": "sgd"}, "tune": {"epochs": 3, "space": SPACE}})
    with pytest.raises(PipelineError, match="study 's' was made with train.optimizer 'adam', params.yaml has 'sgd'"):
        storage.open_study(changed, "s", True, (), stored, url)
    # Another machine keeps its images elsewhere: it joins. --enqueue queues its trial once.
    elsewhere = parse({"data": {"source": "/mnt/photos"}, "tune": {"epochs": 3, "space": SPACE}})
    for _ in range(2):
        study = storage.open_study(elsewhere, "s", True, ("train.learning_rate=0.005",), stored, url)
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert waiting.count({"train.learning_rate": 0.005}) == 1
    # A study made before its fixed params were recorded resumes, checked on the rest.
    old = storage.settings(_params())
    del old["fixed"]
    study.set_user_attr("settings", old)
    assert storage.open_study(changed, "s", True, (), stored, url).study_name == "s"


def test_a_space_over_models_sets_what_does_not_apply_to_a_trials_model_back():
    from imgclf.core.params import check_space, parse
    from imgclf.tuning.space import trial_params

    space = {
        "train.model": {"choices": ["cnn", "mobilenet_v3_small"]},
        "train.init": {"choices": ["none", "imagenet"]},
        "train.fine_tune.frozen_epochs": {"low": 0, "high": 3},
        "train.dense_units": {"choices": [64, 128]},
    }
    p = parse({"train": {"conv_filters": [16, 32]}, "tune": {"space": space}})
    check_space(p)  # each value fits some model
    backbone = trial_params(p, {"train.model": "mobilenet_v3_small", "train.init": "imagenet", "train.dense_units": 64})
    assert (backbone.train.conv_filters, backbone.train.dense_units, backbone.train.init) == ([32, 64], 512, "imagenet")
    cnn = trial_params(p, {"train.model": "cnn", "train.init": "imagenet", "train.fine_tune.frozen_epochs": 3})
    assert (cnn.train.conv_filters, cnn.train.init, cnn.train.fine_tune.frozen_epochs) == ([16, 32], "none", 2)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # heartbeats, as the stage has them
def test_a_trial_left_running_before_its_first_heartbeat_is_failed_and_queued_again(tmp_path):
    import time

    stored = storage.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", stale_after=1)
    study = optuna.create_study(study_name="s", storage=stored)
    orphan = study.ask()  # its process killed before the heartbeat thread's first beat
    working = study.ask()
    working.set_user_attr(storage.ATTR_WORKER, "0")  # it reached the objective: its heartbeats decide
    assert storage.fail_unstarted(study, stored) == 0  # too young to tell
    time.sleep(1.2)
    optuna.storages.fail_stale_trials(study)  # Optuna's own check passes over a trial with no heartbeat
    assert study.trials[orphan.number].state.name == "RUNNING"

    assert storage.fail_unstarted(study, stored) == 1
    states = {t.number: t.state.name for t in study.trials}
    assert (states[orphan.number], states[working.number]) == ("FAIL", "RUNNING")
    queued = [t for t in study.trials if t.state.name == "WAITING"]
    assert [t.system_attrs["failed_trial"] for t in queued] == [orphan.number]
    assert storage.fail_unstarted(study, stored) == 0  # once


CLOSING_WORKER = """
import sys, time
from imgclf.console import interrupt
interrupt.install()
interrupt.stop_when_closed(sys.stdin.buffer)
open(sys.argv[1] + ".ready", "w").close()
try:
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    with interrupt.deferred():  # as a trial's run is closed after Ctrl-C
        time.sleep(1.0)
        open(sys.argv[1], "w").write("closed")
    raise
"""


def test_the_other_processes_of_a_study_close_their_trials_whether_or_not_they_had_the_signal(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from stages.tune import stop_workers

    # One had the terminal's Ctrl-C too; the other not (`kill` of the command alone, a scheduler).
    procs = [
        subprocess.Popen([sys.executable, "-c", CLOSING_WORKER, str(tmp_path / name)], stdin=subprocess.PIPE)
        for name in ("signalled", "not")
    ]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"{name}.ready").exists() for name in ("signalled", "not")):
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    procs[0].send_signal(signal.SIGINT)
    start = time.monotonic()
    stop_workers(procs)
    assert all(proc.poll() is not None for proc in procs) and time.monotonic() - start < 20
    assert [(tmp_path / name).read_text() for name in ("signalled", "not")] == ["closed", "closed"]
