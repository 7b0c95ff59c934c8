"""No silent coercion between booleans, numbers and text in a study, and no study from an empty file.

Each case is a line of a real study file, read as `leukotune` reads it (YAML, then the schema). Refused values are one
line naming the key, the value as YAML read it, the expected type and why; accepted ones are the spellings the schema
takes on purpose.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from leukotune.tuner.config import ConfigError, load_study


def study_with(tmp_path: Path, line: str):
    """A study file holding one `section.key: value` line (YAML text), the rest left to the defaults."""
    dotted, _, value = line.partition(": ")
    *sections, key = dotted.split(".")
    text = "".join(f"{'  ' * depth}{name}:\n" for depth, name in enumerate(sections))
    path = tmp_path / "study.yaml"
    path.write_text(text + f"{'  ' * len(sections)}{key}: {value}\n")
    return load_study(path)


# (YAML line, fragments of the one-line refusal)
REFUSED = [
    # booleans where a number belongs (lax pydantic made them 1 and 0)
    ("train.epochs: true", ["train.epochs=True", "valid integer", "true and false are not numbers"]),
    ("train.lr: false", ["train.lr=False", "valid number", "not numbers"]),
    ("tune.num_samples: yes", ["tune.num_samples=True", "valid integer"]),  # YAML 1.1 reads yes as true
    ("resources.gpus_per_trial: true", ["resources.gpus_per_trial=True", "valid number"]),
    ("data.val_fraction: on", ["data.val_fraction=True", "valid number"]),
    # numbers (and booleans) where text belongs: refused, not turned back into text, because YAML already changed
    # them (`1.10` is 1.1, `0123` is 83); the message says to quote them
    ("name: 123", ["name=123", "valid string", "quote it to mean text"]),
    ("tracking.experiment: 1.10", ["tracking.experiment=1.1", "valid string", "quote it"]),
    ("storage_path: 2024", ["storage_path=2024", "valid string"]),
    ("train.weights: 0", ["train.weights=0", "valid string"]),
    ("tracking.experiment: true", ["tracking.experiment=True", "as a boolean; quote it"]),
    # text where a boolean belongs (lax pydantic read "yes", "no", "1", "off" as booleans)
    ("train.class_weights: \"yes\"", ["train.class_weights='yes'", "valid boolean", "true or false, unquoted"]),
    ("train.stop_on_nan: \"false\"", ["train.stop_on_nan='false'", "valid boolean"]),
    ("tune.optuna.multivariate: \"no\"", ["tune.optuna.multivariate='no'", "valid boolean"]),
    ("train.class_weights: 1", ["train.class_weights=1", "valid boolean", "write true or false"]),
    ("train.compile: \"true\"", ["train.compile='true'", "false, true, default, reduce-overhead", "unquoted"]),
    # quoted numbers, and fractions where a whole number belongs
    ("train.lr: \"0.001\"", ["train.lr='0.001'", "valid number", "quoted number is text"]),
    ("train.epochs: \"5\"", ["train.epochs='5'", "valid integer", "quoted number"]),
    ("train.epochs: 3.0", ["train.epochs=3.0", "valid integer", "whole number"]),
    # the settings that take text for true/false take only the booleans or their own words
    ("resources.use_gpu: 1", ["resources.use_gpu=1", "'auto'"]),
    ("resources.use_gpu: \"yes\"", ["resources.use_gpu='yes'", "'auto'"]),
    ("tracking.log_models: true", ["tracking.log_models=True", "say all"]),
]


@pytest.mark.parametrize("line, fragments", REFUSED, ids=[case[0] for case in REFUSED])
def test_values_of_the_wrong_type_are_refused_in_one_line(tmp_path, line, fragments):
    with pytest.raises(ConfigError) as refused:
        study_with(tmp_path, line)
    message = str(refused.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# (YAML line, dotted attribute, the value the study holds): what the schema takes on purpose
ACCEPTED = [
    ("train.lr: 1", "train.lr", 1.0),                                  # a whole number is a number
    ("train.lr: 3e-4", "train.lr", 3e-4),                              # YAML 1.1 would leave this as text
    ("train.weight_decay: 1.0e-3", "train.weight_decay", 1e-3),
    ("train.weight_decay: 5E-4", "train.weight_decay", 5e-4),
    ("resources.use_gpu: true", "resources.use_gpu", "true"),         # the boolean names the setting
    ("resources.use_gpu: false", "resources.use_gpu", "false"),
    ("resources.use_gpu: auto", "resources.use_gpu", "auto"),
    ("tracking.log_models: false", "tracking.log_models", 0),          # false still means none
    ("tracking.log_models: all", "tracking.log_models", "all"),
    ("train.compile: true", "train.compile", True),
    ("train.compile: reduce-overhead", "train.compile", "reduce-overhead"),
    ("train.class_weights: yes", "train.class_weights", True),         # YAML 1.1's own boolean word
    ("data.val_fold: 1", "data.val_fold", "1"),                        # folds are named by their numbers
    ("data.val_fold: prelim", "data.val_fold", "prelim"),
    ("name: \"123\"", "name", "123"),                                  # quoted, a number is text
    ("tune.optuna.n_startup_trials: auto", "tune.optuna.n_startup_trials", "auto"),
]


@pytest.mark.parametrize("line, attribute, expected", ACCEPTED, ids=[case[0] for case in ACCEPTED])
def test_the_spellings_the_schema_takes_on_purpose(tmp_path, line, attribute, expected):
    value = study_with(tmp_path, line)
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected), (value, expected)


def test_a_study_file_reads_exponents_as_numbers_for_the_search_space_too(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("name: exponents\ntrain:\n  lr: 1e-3\ntune:\n  space:\n    lr: {loguniform: [1e-5, 1e-2]}\n")
    study = load_study(path)
    assert study.train.lr == 1e-3 and study.tune.space["lr"] == {"loguniform": [1e-5, 1e-2]}


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "{}\n"],
                         ids=["empty", "blank lines", "comment only", "empty mapping"])
def test_an_empty_study_file_is_refused_naming_it(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_study(path)
    assert str(refused.value) == f"{path}: the study file is empty; write its sections (as in studies/smoke.yaml)"


def test_an_empty_study_file_is_exit_2_in_one_line_from_the_command(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# to be written\n")
    result = subprocess.run([sys.executable, "-m", "leukotune.tuner.cli", "train", "--config", str(path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {path}: the study file is empty; write its sections "
                                                  f"(as in studies/smoke.yaml)"]
    assert "Ray:" not in result.stdout
