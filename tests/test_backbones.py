"""Pretrained backbones, offline: random weights, a weights file in Keras's cache, a model of ours
as the start (its head kept, reordered or new), the two fine-tuning phases and a resume in the
second one."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras")

from imgclf.core.errors import PipelineError  # noqa: E402
from imgclf.core.params import TrainParams, parse  # noqa: E402
from imgclf.core.saved_model import load_model  # noqa: E402
from imgclf.training import backbones, checkpoint  # noqa: E402
from imgclf.training.backbones import Phase, backbone_of, phases  # noqa: E402
from imgclf.training.checkpoint import open_checkpoints  # noqa: E402
from imgclf.training.fit import Session, train  # noqa: E402
from imgclf.training.model import build_model  # noqa: E402
from imgclf.training.origin import Origin, copy_from, resolve  # noqa: E402

from .helpers import as_prepared, train_until_signal  # noqa: E402

SMALL = {"model": "mobilenet_v3_small", "batch_size": 8, "mixed_precision": "off"}


def _data(n: int = 32, size: int = 32):
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 3).astype(np.uint8)
    x = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    x[np.arange(n), :, :, y] += 180  # the class is the bright channel
    return as_prepared(x[: n * 3 // 4], y[: n * 3 // 4], x[n * 3 // 4 :], y[n * 3 // 4 :])


def _params(**train):
    return parse({"data": {"image_size": 32}, "train": {**SMALL, **train}})


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A Keras cache holding a MobileNetV3Small no-top weights file this test wrote (random
    weights, under the name Keras downloads the ImageNet ones to)."""
    import keras

    home = tmp_path_factory.mktemp("keras-home")
    (home / "models").mkdir()
    keras.utils.set_random_seed(7)
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.save(home / "models" / backbones.BACKBONES["mobilenet_v3_small"].weights_file)
    return home, base.get_weights()


@pytest.mark.slow
def test_a_backbone_takes_raw_images_and_its_h5_loads_back_the_same(tmp_path):
    x = _data().x["train"][:4]
    model = build_model(32, 3, TrainParams(**SMALL))
    assert model.name == "mobilenet_v3_small" and model.input.dtype == "uint8"
    assert model.get_layer("probabilities").output.shape[-1] == 3
    # From random weights, BatchNormalization's statistics must follow a few hundred steps.
    norms = [layer for layer in backbone_of(model).layers if type(layer).__name__ == "BatchNormalization"]
    assert norms and {layer.momentum for layer in norms} == {backbones.SCRATCH_BN_MOMENTUM}
    model.save(tmp_path / "model.h5")
    # MobileNetV3's `x + 3.0` nodes: Keras's own .h5 reader takes them for merge layers.
    again = load_model(tmp_path / "model.h5")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in backbones.BACKBONES if n != "mobilenet_v3_small"])
def test_every_backbone_builds_for_raw_images(name):
    model = build_model(32, 4, TrainParams(model=name, mixed_precision="off"))
    out = model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    assert out.shape == (2, 4) and np.allclose(out.sum(axis=1), 1, atol=1e-5)


def test_imagenet_comes_from_keras_cache_with_its_md5(imagenet_like, monkeypatch):
    home, weights = imagenet_like
    monkeypatch.setenv("KERAS_HOME", str(home))
    p = TrainParams(**SMALL, init="imagenet")
    origin = resolve(p)
    assert origin.kind == "imagenet" and origin.file.parent == home / "models" and len(origin.md5) == 32
    assert origin.params()["init.md5"] == origin.md5
    model = build_model(32, 3, p, origin)
    for mine, theirs in zip(backbone_of(model).get_weights(), weights, strict=True):
        assert np.array_equal(mine, theirs)


def test_imagenet_missing_offline_is_one_line_naming_the_file_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    for proxy in ("https_proxy", "HTTPS_PROXY"):  # no network even where there is one: a closed port
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    p = TrainParams(**SMALL, init="imagenet")
    with pytest.raises(PipelineError) as err:
        build_model(32, 3, p, resolve(p))
    text = str(err.value)
    assert "\n" not in text
    assert backbones.BACKBONES["mobilenet_v3_small"].weights_file in text and str(tmp_path / "models") in text
    assert "KERAS_HOME" in text


def test_a_weights_file_starts_the_backbone(imagenet_like, tmp_path):
    home, weights = imagenet_like
    file = home / "models" / backbones.BACKBONES["mobilenet_v3_small"].weights_file
    p = TrainParams(**SMALL, init=str(file))
    origin = resolve(p)
    assert origin.kind == "weights"
    model = build_model(32, 3, p, origin)
    assert np.array_equal(backbone_of(model).get_weights()[0], weights[0])


def _saved(tmp_path, labels, **train):
    """A model of ours, with changed weights, saved with its labels.json; returns its folder."""
    import keras

    keras.utils.set_random_seed(3)
    model = build_model(32, len(labels), TrainParams(**{**SMALL, **train}))
    model.set_weights([w + 0.01 for w in model.get_weights()])
    folder = tmp_path / "ours"
    folder.mkdir(exist_ok=True)
    model.save(folder / "model.h5")
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder, model


@pytest.mark.slow
def test_a_model_of_ours_starts_it_head_and_all_in_this_datas_class_order(tmp_path):
    folder, ours = _saved(tmp_path, ["cat", "dog", "fish"])
    p = TrainParams(**SMALL, init=str(folder / "model.h5"))
    origin = resolve(p)
    assert origin.kind == "model" and origin.labels == ["cat", "dog", "fish"]
    model = build_model(32, 3, p, origin)
    copy_from(model, origin, ["fish", "cat", "dog"], "keep")
    x = _data().x["train"][:4]
    np.testing.assert_allclose(model.predict(x, verbose=0), ours.predict(x, verbose=0)[:, [2, 0, 1]], rtol=1e-5)


@pytest.mark.slow
def test_other_classes_are_named_unless_the_head_is_new(tmp_path):
    folder, ours = _saved(tmp_path, ["cat", "dog", "fish"])
    p = TrainParams(**SMALL, init=str(folder / "model.h5"))
    origin = resolve(p)
    model = build_model(32, 2, p, origin)
    with pytest.raises(PipelineError, match=r"here but not there \['bird'\], there but not here \['dog', 'fish'\]"):
        copy_from(model, origin, ["cat", "bird"], "keep")
    copy_from(model, origin, ["cat", "bird"], "new")
    assert np.array_equal(backbone_of(model).get_weights()[0], backbone_of(ours).get_weights()[0])


def test_a_model_of_another_architecture_or_size_is_one_line(tmp_path):
    folder, _ = _saved(tmp_path, ["a", "b", "c"], model="cnn", conv_filters=[4], dense_units=8)
    p = TrainParams(**SMALL, init=str(folder / "model.h5"))
    with pytest.raises(
        PipelineError, match="is a cnn model but train.model is mobilenet_v3_small: set train.model: cnn"
    ):
        copy_from(build_model(32, 3, p, resolve(p)), resolve(p), ["a", "b", "c"], "keep")
    cnn = TrainParams(model="cnn", conv_filters=[4], dense_units=8, init=str(folder / "model.h5"))
    with pytest.raises(PipelineError, match="layer dense holds .* there but .* here; data.image_size"):
        copy_from(build_model(48, 3, cnn, resolve(cnn)), resolve(cnn), ["a", "b", "c"], "keep")


def test_params_that_do_not_fit_the_model_are_one_line():
    for section, message in (
        ({"model": "mobilenet_v3_small", "dense_units": 64}, "train.dense_units applies to train.model cnn only"),
        ({"init": "imagenet"}, "ImageNet weights exist for the backbones only"),
        ({"fine_tune": {"frozen_epochs": 4}}, "train.fine_tune applies to the backbones only"),
        ({"init_head": "new"}, "train.init_head applies when train.init names a model"),
    ):
        with pytest.raises(PipelineError, match=message):
            parse({"train": section})
    with pytest.raises(PipelineError, match="too small for resnet50_v2"):
        parse({"data": {"image_size": 24}, "train": {"model": "resnet50_v2"}})


def test_phases_follow_the_params():
    ft = {"frozen_epochs": 2, "unfreeze": 10, "lr_factor": 0.5}
    assert phases(TrainParams(epochs=5), pretrained=True) == [Phase(1, 5, frozen=False)]
    p = TrainParams(model="mobilenet_v3_small", epochs=5, fine_tune=ft)
    assert phases(p, pretrained=False) == [Phase(1, 5, frozen=False)]
    assert phases(p, pretrained=True) == [Phase(1, 2, frozen=True), Phase(3, 5, frozen=False, rate=0.5)]
    assert phases(p.model_copy(update={"epochs": 2}), pretrained=True) == [Phase(1, 2, frozen=True)]
    none = p.model_copy(update={"fine_tune": p.fine_tune.model_copy(update={"unfreeze": 0})})
    assert phases(none, pretrained=True) == [Phase(1, 5, frozen=True)]


def _weights_by_name(model) -> dict[str, np.ndarray]:
    return {w.path: w.numpy().copy() for w in model.weights}


FINE_TUNE = {"init": "imagenet", "epochs": 3, "fine_tune": {"frozen_epochs": 1, "unfreeze": 12, "lr_factor": 0.1}}


@pytest.fixture(scope="module")
def fine_tuned(imagenet_like):
    """A backbone taken as pretrained, trained 3 epochs: 1 of the head alone, then 2 with its top
    12 layers. The start weights, the weights after each epoch, and the result."""
    home, _ = imagenet_like
    seen = {}
    end_epoch = Session.end_epoch

    def keep(self, epoch, logs, check_signal=True):
        seen[epoch] = _weights_by_name(self.model)
        return end_epoch(self, epoch, logs, check_signal)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(home))
        mp.setattr(Session, "end_epoch", keep)
        p = _params(**FINE_TUNE)
        start = _weights_by_name(build_model(32, 3, p.train, resolve(p.train)))
        trained = train(p, _data())
    return start, seen, trained


@pytest.mark.slow
@pytest.mark.xdist_group("fine-tuned")  # on one worker: the fine-tuning they share runs once
def test_the_head_learns_alone_then_the_top_layers_slower_and_batchnorm_never(fine_tuned):
    start, seen, trained = fine_tuned
    assert [row["learning_rate"] for row in trained.history] == pytest.approx([1e-3, 1e-4, 1e-4])

    def moved(a, b):
        return {k for k in a if not np.array_equal(a[k], b[k])}

    assert moved(start, seen[1]) == {"probabilities/kernel", "probabilities/bias"}
    later = moved(seen[1], seen[3])
    inner = backbone_of(trained.model).layers
    top = {w.path for layer in inner[-12:] if type(layer).__name__ != "BatchNormalization" for w in layer.weights}
    head = {"probabilities/kernel", "probabilities/bias"}
    assert later - head and later <= top | head
    batchnorm = {w.path for layer in inner if type(layer).__name__ == "BatchNormalization" for w in layer.weights}
    assert not moved(start, seen[3]) & batchnorm
    # The second phase started with a new optimizer's state: its step count is its own 2 epochs
    # of 3 steps (24 images, batch 8), so Adam's first steps for the top layers are corrected.
    assert int(trained.model.optimizer.iterations) == 2 * 3


@pytest.mark.slow
@pytest.mark.xdist_group("fine-tuned")
def test_a_resume_in_the_second_phase_ends_as_the_uninterrupted_run(imagenet_like, fine_tuned, monkeypatch, tmp_path):
    home, _ = imagenet_like
    _, _, full = fine_tuned  # the same params, uninterrupted
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv(checkpoint.ENV_DIR, str(tmp_path))
    p = _params(**FINE_TUNE)
    data = _data()

    init = resolve(p.train).key()
    train_until_signal(monkeypatch, p, data, at=(2, 2), init=init)  # the second phase, mid-epoch

    store = open_checkpoints(p, "data", init=init)
    assert (store.state["epoch"], store.state["step"]) == (1, 2)
    resumed = train(p, data, store)
    assert resumed.history == full.history
    for a, b in zip(resumed.model.get_weights(), full.model.get_weights(), strict=True):
        assert np.array_equal(a, b)
    store.close()
    assert open_checkpoints(p, "data", init={**init, "md5": "another file"}).state is None


def test_the_origin_is_what_the_checkpoint_and_the_run_record(imagenet_like, monkeypatch, tmp_path):
    home, _ = imagenet_like
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # the first run: Keras has not downloaded the file yet
    before = resolve(TrainParams(**SMALL, init="imagenet"))
    monkeypatch.setenv("KERAS_HOME", str(home))  # its resume: the file is there
    origin = resolve(TrainParams(**SMALL, init="imagenet"))
    assert before.md5 is None and origin.md5 and origin.params()["init.md5"] == origin.md5
    assert origin.key() == before.key() == {"kind": "imagenet", "source": "imagenet"}
    assert Origin("none", "none").params() == {"init.kind": "none"}
    uri = Origin("model", "models:/m@champion", file=home, md5="x").params()
    assert uri["init.uri"] == "models:/m@champion" and uri["init.md5"] == "x"


BACKBONE_RUN = {
    "data": {"image_size": 32},
    "train": {"model": "mobilenet_v3_small", "conv_filters": [32, 64], "dense_units": 512, "epochs": 1},
}


@pytest.mark.slow
def test_a_backbone_started_from_a_model_of_ours_trains_evaluates_and_records_its_origin(project, monkeypatch):
    from mlflow import MlflowClient

    from imgclf.core.fileio import md5_file
    from imgclf.tracking.models import fetch_model

    p = project
    labels = json.loads((p.root / "data/prepared/labels.json").read_text())
    folder, _ = _saved(p.root, labels)  # p.root/ours: a MobileNetV3Small of ours, with its labels
    p.set_params(**BACKBONE_RUN)
    out = p.sh("dvc", "exp", "run", "-S", "train.init=ours/model.h5", "-S", "train.epochs=2")
    assert "starting from ours/model.h5 (its head too)" in out.stdout + out.stderr
    (run,) = [r for r in p.runs("train") if r.data.params.get("train.init") == "ours/model.h5"]
    params = run.data.params
    assert params["train.model"] == "mobilenet_v3_small"
    assert (params["init.kind"], params["init.file"], params["init.md5"]) == (
        "model",
        "model.h5",
        md5_file(folder / "model.h5"),
    )
    parent = run.data.tags.get("mlflow.parentRunId")
    evaluated = [r for r in p.runs("evaluate") if r.data.tags.get("mlflow.parentRunId") == parent]
    assert evaluated and "test_accuracy" in evaluated[0].data.metrics
    from imgclf.predict import classify, collect, load_classifier

    (p.root / "models" / "labels.json").write_text(json.dumps(labels))  # beside a .h5 predict is given
    clf = load_classifier(str(p.root / "models" / "model.h5"))
    assert clf.labels == labels and clf.image_size == 32
    rows = list(classify(clf, collect([str(p.root / "data" / "tiny")])))
    assert len(rows) == 24 and all(top and top[0][0] in labels for _, top, error in rows if not error)

    # The trained model, fetched by its run and by its registered version, is models/model.h5.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", p.tracking_uri)
    trained = md5_file(p.root / "models" / "model.h5")
    by_run, by_run_labels = fetch_model(f"runs:/{run.info.run_id}")
    assert by_run_labels == labels and md5_file(by_run) == trained
    (version,) = MlflowClient(p.tracking_uri).search_model_versions(f"run_id = '{run.info.run_id}'")
    by_version, _ = fetch_model(f"models:/{version.name}/{version.version}")
    assert md5_file(by_version) == trained
    assert md5_file(fetch_model(f"models:/{version.name}/latest")[0]) == trained  # the newest version

    # The champion (the template's CNN) is not this architecture: one line, nothing trained.
    champion = TrainParams(**SMALL, init="models:/image-classifier@champion")
    origin = resolve(champion, fetch=fetch_model)
    with pytest.raises(PipelineError, match="is a cnn model but train.model is mobilenet_v3_small: set train.model"):
        copy_from(build_model(32, 3, champion, origin), origin, labels, "keep")
