"""The one schema of a study: YAML defaults, `--set key=value` overrides, one resolved dict saved with every run.

Every value a study may hold is typed, ranged or chosen here, with the choices taken from where they live (the
model registry, the optimiser table, the split methods, the augmentations, the metrics the loop reports), never
copied. A bad value is refused in one line naming the key, the value and what is allowed, before Ray starts.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from collections.abc import Collection, Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leukotune.data import AUGMENTATIONS, SPLIT_METHODS
from leukotune.models import (
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    get_model_spec,
    list_models,
    list_optimizers,
    validate_model_kwargs,
)
from leukotune.tuner.metrics import reported_metric_names


class ConfigError(ValueError):
    """A study file or override that cannot be used; the message names the key and what is allowed."""


class StudyFileNotFoundError(FileNotFoundError):
    """--config names a file that is not there."""


def _one_of(value: Any, allowed: Collection[str]) -> Any:
    if value not in allowed:
        raise ValueError(f"choose one of {', '.join(map(str, allowed))}")
    return value


def _compile_mode(value: Any) -> Any:
    if value not in ("default", "reduce-overhead"):
        raise ValueError("choose one of false, true, default, reduce-overhead (true and false unquoted)")
    return value


class _Section(BaseModel):
    # Frozen: a resolved config is a value, passed to workers and saved with runs; `extra="forbid"` refuses typos.
    # Strict: no silent coercion between booleans, numbers and text (lax pydantic reads `epochs: true` as 1 and
    # `class_weights: "no"` as False). An int where a float belongs is still a number (`lr: 1`); what else the
    # schema takes on purpose is said by its validators (`use_gpu: true`, `log_models: false`, a fold number).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SynthConfig(_Section):
    """Synthetic stand-in for C-NMC, used when `data.path` is empty."""

    subjects: int = Field(12, ge=4, le=10_000)
    cells_per_subject: int = Field(30, ge=1, le=100_000)
    seed: int = 0


class DataConfig(_Section):
    path: str | None = None
    synthetic: SynthConfig = Field(default_factory=SynthConfig)
    # subject-disjoint by default: cells of one patient must not sit on both sides of the split.
    split: str = "subject"
    val_fraction: float = Field(0.2, ge=0.01, le=0.99)
    val_fold: str | None = None  # a C-NMC fold: "0", "1", "2" (`val_fold: 1` is that fold too) or "prelim"
    # Subjects per class set aside (before the train/val split, always subject-disjoint) for one evaluation after
    # the search; 0: no test side. Ignored when the C-NMC preliminary test folder is present: that is the test set.
    test_fraction: float = Field(0.2, ge=0.0, le=0.9)
    seed: int = 0
    cache_dir: str | None = None
    # Cross-validation inside every trial: K folds of the non-test patients (stratified by class), K models trained
    # side by side and scored by their mean; the trial's model is their ensemble. 0: one train/validation split.
    # With split: fold the folds are C-NMC's own (K must be their number); with split: image, folds of cells.
    # val_fraction and val_fold do not apply then: each fold is a validation side in turn.
    cv_folds: int = Field(0, ge=0, le=20)

    _split = field_validator("split")(lambda v: _one_of(v, SPLIT_METHODS))

    @field_validator("cv_folds")
    @classmethod
    def _no_single_fold(cls, value: int) -> int:
        if value == 1:
            raise ValueError("use 0 for one train/validation split, or 2 or more folds")
        return value

    @field_validator("val_fold", mode="before")
    @classmethod
    def _fold_number_as_name(cls, value: Any) -> Any:
        # Folds are named by their numbers; a whole number is exactly its digits, so nothing is guessed.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class TrainConfig(_Section):
    """Everything one training run needs besides data: the knobs Tune searches live here too."""

    model: str = "cnn"
    conv_layers: int = Field(5, ge=1, le=12)
    kernel_size: int = Field(3, ge=1, le=15)
    base_filters: int = Field(16, ge=1, le=1024)
    dropout: float = Field(0.2, ge=0.0, le=0.95)
    dense: int = Field(128, ge=1, le=65_536)
    weights: str | None = None
    unfreeze: int = Field(0, ge=0, le=1000)
    optimizer: str = "rmsprop"
    lr: float = Field(1e-4, ge=1e-7, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    batch_size: int = Field(32, ge=1, le=4096)
    epochs: int = Field(10, ge=1, le=10_000)
    image_size: int = Field(256, ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)
    color: Literal["rgb", "gray"] = "rgb"
    augment: str = "rot90"
    augment_mode: Literal["online", "materialize"] = "online"
    class_weights: bool = False
    seed: int = Field(0, ge=0)
    # Stop when the loss is not finite: a diverged trial wastes the rest of its budget.
    stop_on_nan: bool = True
    # device: the uint8 split lives on the training device, batches are made there (tuner/train/pipeline.py);
    # loader: torch's DataLoader; auto: device when the split fits in a quarter of the device's free memory.
    pipeline: Literal["auto", "device", "loader"] = "auto"
    # torch.compile the model (in place, after the DDP wrap): false | true (= default) | default | reduce-overhead
    # (CUDA graphs: for small batches, where kernel launches on the host set the pace). Off by default: compiling
    # costs time in every trial, and its gain has not been measured on a GPU yet (BENCHMARKS.md).
    compile: bool | Literal["default", "reduce-overhead"] = False
    _compile = field_validator("compile", mode="before")(lambda v: v if isinstance(v, bool) else _compile_mode(v))

    _model = field_validator("model")(lambda v: _one_of(v, list_models()))
    _optimizer = field_validator("optimizer")(lambda v: _one_of(v, list_optimizers()))
    _augment = field_validator("augment")(lambda v: _one_of(v, tuple(AUGMENTATIONS)))

    @model_validator(mode="after")
    def _builder_accepts(self) -> "TrainConfig":
        # The builder is the one place that knows which combinations work (e.g. a CNN too deep for its image).
        validate_model_kwargs(self.model, model_kwargs(self))
        return self


class ResourcesConfig(_Section):
    workers: int = Field(1, ge=1, le=1024)
    cpus_per_worker: int = Field(1, ge=1, le=512)
    use_gpu: Literal["auto", "true", "false"] = "auto"
    # inline: the loop runs in the Tune trial actor (no per-trial Train controller, ~0 s start-up);
    # ray_train: a TorchTrainer per trial (DDP over `workers`); auto picks ray_train only when workers > 1.
    trial_runtime: Literal["auto", "inline", "ray_train"] = "auto"
    max_failures: int = Field(2, ge=0, le=1000)
    # GPU share of one inline trial or of each Ray Train worker: 0.25 packs four on a GPU (a small CNN uses a
    # sliver of an H200). At most 1: the loop trains on one device.
    gpus_per_trial: float = Field(1.0, gt=0.0, le=1.0)
    # How long a study waits for the autoscaler to start a first node that holds one trial (a cluster that bills
    # GPUs only while a study runs starts with none; cloud GPU nodes take minutes to boot). Then it gives up.
    wait_for_nodes_s: float = Field(900.0, gt=0.0, le=86_400.0)

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _bool_as_text(cls, value: Any) -> Any:
        # YAML reads `use_gpu: true` as a boolean; both spellings mean the same setting.
        return str(value).lower() if isinstance(value, bool) else value


SpaceEntry = dict[str, Any]


class OptunaConfig(_Section):
    """How TPE is set up for the study it runs in (`tune.search: optuna`); ignored by random search."""

    # auto: a quarter of tune.num_samples, at least 3, at most Optuna's own 10. Optuna's fixed 10 made every study
    # of up to 10 trials pure random search; 3 is the fewest finished trials TPE can split into good and bad.
    n_startup_trials: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = "auto"
    # One joint density over the parameters rather than one per parameter: lr and optimizer interact.
    multivariate: bool = True
    # The space is conditional (conv_layers, kernel_size only for the CNN); group fits each sub-space on the trials
    # that have it, where plain multivariate TPE falls back to independent sampling for those parameters.
    group: bool = True
    # auto: on when trials run concurrently, so a new trial is not sampled next to a running one whose result TPE
    # has not seen yet; with one trial at a time there is nothing running to avoid.
    constant_liar: bool | Literal["auto"] = "auto"

    # Checked before pydantic tries each member of the unions, so a bad value gets one message, not one per member.
    @field_validator("n_startup_trials", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError("use auto or a whole number of trials >= 1")
        return value

    @field_validator("constant_liar", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        if value != "auto" and not isinstance(value, bool):
            raise ValueError("use auto, true or false")
        return value

    @field_validator("group")
    @classmethod
    def _group_needs_multivariate(cls, value: bool, info) -> bool:
        if value and not info.data.get("multivariate", True):
            raise ValueError("group needs multivariate: true (Optuna splits the joint density into sub-spaces)")
        return value


class SearchConfig(_Section):
    num_samples: int = Field(8, ge=1, le=100_000)
    max_concurrent: int = Field(0, ge=0, le=10_000)  # 0: as many as the cluster's resources allow
    search: Literal["optuna", "random"] = "optuna"  # optuna (TPE) | random
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, le=10_000)
    reduction_factor: int = Field(2, ge=2, le=100)
    metric: str = "val_f1_weighted"
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    space: dict[str, SpaceEntry] = {}
    points_to_evaluate: list[dict[str, Any]] = []
    # The best trials by validation evaluated once on the test side after the search (0: none).
    test_top_k: int = Field(3, ge=0, le=1000)
    optuna: OptunaConfig = Field(default_factory=OptunaConfig)
    # An earlier study (its id) or MLflow experiment (its name: every study in it) whose finished trials the searcher
    # is given before the first new trial, those that fit this study's space (tuner/tune/warm_start.py).
    warm_start: Annotated[str, Field(min_length=1)] | None = None

    _metric = field_validator("metric")(lambda v: _one_of(v, reported_metric_names()))


class TrackingConfig(_Section):
    experiment: Annotated[str, Field(min_length=1)] = "leukotune"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else SQLite under the working directory
    # Models exported (as MLflow LoggedModels) for the study's top N trials by tune.metric once it completes; 0 for
    # none, all for every finished trial. `false` still means 0; `true` (it meant every trial) is refused.
    log_models: Annotated[int, Field(ge=0, le=100_000)] | Literal["all"] = 3

    @field_validator("log_models", mode="before")
    @classmethod
    def _count_or_all(cls, value: Any) -> Any:
        if value is False:
            return 0
        if value != "all" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError("use a number of top trials >= 0 (default 3), 0 for none, or all"
                             + (" (true no longer means every trial: say all)" if value is True else ""))
        return value


class StudyConfig(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "study"
    storage_path: str = ".leukotune/runs"
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tune: SearchConfig = Field(default_factory=SearchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _folds_train_in_one_process(self) -> StudyConfig:
        # A cross-validated trial trains its K fold models side by side in one process; K models under DDP would
        # need K process groups in step. Packing trials on GPUs gives the same throughput without it.
        if self.data.cv_folds and self.resources.workers > 1:
            raise ValueError(f"data.cv_folds={self.data.cv_folds} trains the fold models in one process; use "
                             f"resources.workers=1 (pack trials with resources.gpus_per_trial instead)")
        return self


def build_study(values: dict[str, Any] | None) -> StudyConfig:
    """A typed study from a loose dict (a YAML file, a saved config, a worker's payload); ConfigError if bad."""
    try:
        return StudyConfig.model_validate(values or {})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    """The first problem as `key=value: what is allowed`, plus a count of any others."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "<top>"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        section = ".".join(str(part) for part in first["loc"][:-1])
        text = f"unknown config key {key}; accepted under '{section or '<top>'}': {_accepted(first['loc'][:-1])}"
    elif isinstance(first.get("input"), dict):  # a rule across keys of a section: its message names them
        text = message if key == "<top>" else f"{key}: {message}"
    else:
        text = f"{key}={first.get('input')!r} is not allowed: {message}{_type_hint(first['type'], first.get('input'))}"
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


# Why strict typing refused a value, by (pydantic's error type, what YAML made of the value). Numbers in text fields
# are refused rather than turned back into text: YAML has already changed them (`1.10` is 1.1, `0123` is 83).
_TYPE_HINTS = {
    ("string_type", "boolean"): "YAML reads it unquoted as a boolean; quote it to mean text",
    ("string_type", "number"): "YAML reads it unquoted as a number; quote it to mean text",
    ("int_type", "boolean"): "true and false are not numbers",
    ("float_type", "boolean"): "true and false are not numbers",
    ("int_type", "quoted number"): "a quoted number is text; write it unquoted",
    ("float_type", "quoted number"): "a quoted number is text; write it unquoted",
    ("int_type", "number"): "write a whole number",
    ("bool_type", "text"): "write true or false, unquoted",
    ("bool_type", "quoted number"): "write true or false, unquoted",
    ("bool_type", "number"): "write true or false",
}


def _type_hint(error_type: str, value: Any) -> str:
    hint = _TYPE_HINTS.get((error_type, _yaml_kind(value)))
    return f" ({hint})" if hint else ""


def _yaml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return "text"
        return "quoted number"
    return "other"


def _accepted(section: tuple) -> str:
    model: type[BaseModel] = StudyConfig
    for part in section:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "?"
        model = annotation
    return ", ".join(model.model_fields)


class _StudyLoader(yaml.SafeLoader):
    """YAML as PyYAML reads it, plus numbers like `3e-4` and `1.0e3`, which YAML 1.1 leaves as text (every YAML
    1.2 parser reads them as floats, and so does anyone writing a learning rate)."""


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - a SafeLoader with one more number form


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-3` -> (["train", "lr"], 0.001); values are parsed as YAML so types come out right."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), _parse_value(raw)


def _parse_value(raw: str) -> Any:
    if raw == "":
        return None
    try:
        return _read_yaml(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=value` applied."""
    merged = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
        node[path[-1]] = value
    return merged


def load_study(path: str | Path | None, overrides: Sequence[str] = (), data_path: str | None = None) -> StudyConfig:
    """Read a study YAML (or defaults), apply overrides, validate every value."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise StudyFileNotFoundError(f"study file not found: {path}")
        try:
            raw = _read_yaml(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if raw is None or raw == {}:
            # Not the built-in defaults: an empty file is a truncated copy or the wrong path far more often.
            raise ConfigError(f"{path}: the study file is empty; write its sections (as in studies/smoke.yaml)")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a study file must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides))
    if data_path is not None:
        raw.setdefault("data", {})["path"] = data_path
    return build_study(raw)


def model_kwargs(train: TrainConfig) -> dict[str, Any]:
    """The builder kwargs for `train.model`, taken from the flat train section (saved in every checkpoint)."""
    spec = get_model_spec(train.model)
    candidates = {
        "conv_layers": train.conv_layers,
        "kernel_size": train.kernel_size,
        "base_filters": train.base_filters,
        "dropout": train.dropout,
        "dense": train.dense,
        "weights": train.weights,
        "unfreeze": train.unfreeze,
        "in_channels": 1 if train.color == "gray" else 3,
        "image_size": train.image_size,
    }
    return {k: v for k, v in candidates.items() if k in spec.takes}


def train_keys() -> set[str]:
    """The settings a search space may sample."""
    return set(TrainConfig.model_fields)


def replace_train(study: StudyConfig, params: dict[str, Any]) -> StudyConfig:
    """A copy of the study whose train section has `params` (a Tune trial's sample) applied, validated."""
    unknown = sorted(set(params) - train_keys())
    if unknown:
        raise ConfigError(f"search space names unknown train keys: {', '.join(unknown)}")
    return build_study({**study.to_dict(), "train": {**study.train.to_dict(), **params}})
