"""Study files become typed configs at the boundary; bad keys and values are refused with the key named."""
from pathlib import Path

import pytest

from tuner.config import ConfigError, apply_overrides, load_study, model_kwargs
from tuner.study import check_search_space

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", ["smoke.yaml", "paper.yaml"])
def test_shipped_studies_load_and_their_spaces_sample(name):
    study = load_study(STUDIES / name)
    space = check_search_space(study, draws=32)
    assert space


def test_overrides_are_parsed_as_yaml_types():
    study = load_study(STUDIES / "smoke.yaml", ["train.lr=3e-4", "train.epochs=7", "data.split=image"])
    assert study.train.lr == pytest.approx(3e-4) and study.train.epochs == 7 and study.data.split == "image"


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=0.1", "train.lrr"),
    ("train.model=vgg", "cnn"),                      # unknown model lists the valid ones
    ("train.optimizer=lion", "rmsprop"),
    ("train.image_size=100", "64, 128, 224, 256"),
    ("data.split=random", "subject, image, fold"),
    ("train.lr=-1", "train.lr"),
    ("tune.scheduler=pbt", "asha, fifo"),
    ("train.conv_layers=6", "conv_layers"),          # 6 pooling layers leave nothing of 64 px
])
def test_bad_values_are_refused_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_study(STUDIES / "smoke.yaml", [override])
    assert fragment in str(info.value)


@pytest.mark.parametrize("space, fragment", [
    ({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, "not a train setting"),
    ({"lr": {"loguniform": [0, 1e-2]}}, "invalid"),
    ({"lr": {"gaussian": [0, 1]}}, "needs exactly one of"),
    ({"kernel_size": {"choice": []}}, "non-empty"),
    ({"conv_layers": {"int": [2, 4], "when": {"model": "cnn"}}, "model": {"choice": ["cnn"]}}, "sampled above"),
    ({"image_size": {"choice": [64, 96]}}, "unusable trial"),
])
def test_unsampleable_spaces_are_refused_before_any_trial(space, fragment):
    study = load_study(STUDIES / "smoke.yaml")
    from dataclasses import replace

    bad = replace(study, tune=replace(study.tune, space=space))
    with pytest.raises(ConfigError) as info:
        check_search_space(bad, draws=16)
    assert fragment in str(info.value)


def test_conv_layers_are_capped_by_image_size_in_the_paper_space():
    study = load_study(STUDIES / "paper.yaml")
    from tuner.space import sample_points
    points = sample_points(study.tune.space, dict(study.train.__dict__), 200, seed=1)
    cnn_points = [p for p in points if p["model"] == "cnn"]
    assert cnn_points and all(p["conv_layers"] <= 5 for p in cnn_points if p["image_size"] == 64)
    assert not any("conv_layers" in p for p in points if p["model"] != "cnn")  # conditional parameter


def test_unknown_section_and_apply_overrides_nesting():
    with pytest.raises(ConfigError, match="tunning"):
        load_study(None, ["tunning.num_samples=3"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_model_kwargs_follow_the_registry():
    cnn = load_study(STUDIES / "smoke.yaml")
    assert model_kwargs(cnn.train)["conv_layers"] == 3
    transfer = load_study(STUDIES / "smoke.yaml", ["train.model=mobilenet_v2"])
    assert "conv_layers" not in model_kwargs(transfer.train) and model_kwargs(transfer.train)["in_channels"] == 3
