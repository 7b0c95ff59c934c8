"""Study files become typed configs at the boundary; bad keys and values are refused with the key named."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leukotune.data import AUGMENTATIONS, SPLIT_METHODS
from leukotune.models import list_models, list_optimizers
from leukotune.tuner.config import ConfigError, apply_overrides, build_study, load_study, model_kwargs
from leukotune.tuner.metrics import reported_metric_names
from leukotune.tuner.tune.space import resolve_space, sample_points

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", ["smoke.yaml", "paper.yaml"])
def test_shipped_studies_load_and_their_spaces_sample(name):
    study = load_study(STUDIES / name)
    space = resolve_space(study, draws=32)
    assert space


def test_overrides_are_parsed_as_yaml_types():
    study = load_study(STUDIES / "smoke.yaml", ["train.lr=3e-4", "train.epochs=7", "data.split=image"])
    assert study.train.lr == pytest.approx(3e-4) and study.train.epochs == 7 and study.data.split == "image"


# (override, fragments the one-line message must hold): the key, and what is allowed, taken from the registries.
BAD_VALUES = [
    ("train.weight_decay=abc", ["train.weight_decay", "'abc'", "number"]),
    ("train.seed=x", ["train.seed", "'x'", "integer"]),
    ("tune.metric=val_nonsense", ["tune.metric", "val_f1_weighted", "val_roc_auc", "train_loss"]),
    ("train.model=vgg", ["train.model", "'vgg'", *list_models()]),
    ("train.nonsense=1", ["train.nonsense", "accepted under 'train'", "weight_decay"]),
    ("train.optimizer=lion", ["train.optimizer", *list_optimizers()]),
    ("train.augment=mixup", ["train.augment", *AUGMENTATIONS]),
    ("data.split=random", ["data.split", *SPLIT_METHODS]),
    ("train.lr=-1", ["train.lr", "greater than or equal to"]),
    ("tune.scheduler=pbt", ["tune.scheduler", "'asha'", "'fifo'"]),
    ("resources.use_gpu=maybe", ["resources.use_gpu", "'auto'"]),
    ("train.conv_layers=6", ["train", "conv_layers=6"]),  # 6 pooling layers leave nothing of 64 px
    ("tunning.num_samples=3", ["tunning", "accepted under '<top>'", "tune"]),
]


@pytest.mark.parametrize("override, fragments", BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_bad_values_are_refused_in_one_line_naming_key_value_and_choices(override, fragments):
    with pytest.raises(ConfigError) as info:
        load_study(STUDIES / "smoke.yaml", [override])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_every_metric_the_loop_reports_is_a_valid_tune_metric():
    names = reported_metric_names()
    assert {"val_f1_weighted", "val_accuracy", "val_roc_auc", "val_loss", "val_recall_all"} <= set(names)
    for name in names:
        assert load_study(STUDIES / "smoke.yaml", [f"tune.metric={name}"]).tune.metric == name


def test_yaml_spellings_users_write_are_accepted():
    study = load_study(STUDIES / "smoke.yaml", ["train.lr=1e-4", "resources.use_gpu=false", "train.epochs=3"])
    assert study.train.lr == pytest.approx(1e-4) and study.resources.use_gpu == "false"


def test_a_resolved_config_round_trips_through_its_dict():
    study = load_study(STUDIES / "paper.yaml")
    assert build_study(study.to_dict()) == study


@pytest.mark.parametrize("space, fragment", [
    ({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, "not a train setting"),
    ({"lr": {"loguniform": [0, 1e-2]}}, "invalid"),
    ({"lr": {"gaussian": [0, 1]}}, "needs exactly one of"),
    ({"kernel_size": {"choice": []}}, "non-empty"),
    ({"conv_layers": {"int": [2, 4], "when": {"model": "cnn"}}, "model": {"choice": ["cnn"]}}, "sampled above"),
    ({"image_size": {"choice": [64, 8]}}, "unusable trial"),
])
def test_unsampleable_spaces_are_refused_before_any_trial(space, fragment):
    study = load_study(STUDIES / "smoke.yaml")
    bad = study.model_copy(update={"tune": study.tune.model_copy(update={"space": space})})
    with pytest.raises(ConfigError) as info:
        resolve_space(bad, draws=16)
    assert fragment in str(info.value)


def test_conv_layers_are_capped_by_image_size_in_the_paper_space():
    study = load_study(STUDIES / "paper.yaml")
    points = sample_points(study.tune.space, study.train.to_dict(), 200, seed=1)
    cnn_points = [p for p in points if p["model"] == "cnn"]
    assert cnn_points and all(p["conv_layers"] <= 5 for p in cnn_points if p["image_size"] == 64)
    assert not any("conv_layers" in p for p in points if p["model"] != "cnn")  # conditional parameter


def test_apply_overrides_nesting():
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_model_kwargs_follow_the_registry():
    cnn = load_study(STUDIES / "smoke.yaml")
    assert model_kwargs(cnn.train)["conv_layers"] == 3
    transfer = load_study(STUDIES / "smoke.yaml", ["train.model=mobilenet_v2"])
    assert "conv_layers" not in model_kwargs(transfer.train) and model_kwargs(transfer.train)["in_channels"] == 3


CLI_BAD_VALUES = ["train.weight_decay=abc", "train.seed=x", "tune.metric=val_nonsense", "train.model=vgg",
                  "train.nonsense=1"]


@pytest.mark.parametrize("command", ["train", "tune", "submit"])
def test_commands_refuse_bad_values_before_ray_starts(command, tmp_path):
    """Each bad value: exit 2 and one error line, no traceback, and no Ray session folder ever created."""
    ray_tmp = tmp_path / "ray"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""}
    script = ("import sys\nfrom leukotune.tuner.cli import main\n"
              "codes = [main([sys.argv[1], '--config', sys.argv[2], '--set', value]) for value in sys.argv[3:]]\n"
              "assert 'ray' not in sys.modules or not __import__('ray').is_initialized()\n"
              "print('codes', *codes)")
    result = subprocess.run([sys.executable, "-c", script, command, str(STUDIES / "smoke.yaml"), *CLI_BAD_VALUES],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["codes"] + ["2"] * len(CLI_BAD_VALUES)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(CLI_BAD_VALUES) and all(line.startswith("error: ") for line in errors), errors
    for line, value in zip(errors, CLI_BAD_VALUES):
        assert value.split("=")[0] in line
    assert "Traceback" not in result.stderr
    assert not ray_tmp.exists()
