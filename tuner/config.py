"""Typed study configuration: YAML defaults, `--set key=value` overrides, one resolved dict saved with every run.

The loose dict from YAML becomes frozen dataclasses here, at the boundary, so a typo in a study file fails before
Ray starts, with the unknown key and the accepted ones in the message.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A study file or override that cannot be used; the message names the key and what is allowed."""


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic stand-in for C-NMC, used when `data.path` is empty."""

    subjects: int = 12
    cells_per_subject: int = 30
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    # subject-disjoint by default: cells of one patient must not sit on both sides of the split.
    split: str = "subject"
    val_fraction: float = 0.2
    val_fold: str | None = None
    seed: int = 0
    cache_dir: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides data: the knobs Tune searches live here too."""

    model: str = "cnn"
    conv_layers: int = 5
    kernel_size: int = 3
    base_filters: int = 16
    dropout: float = 0.2
    dense: int = 128
    weights: str | None = None
    unfreeze: int = 0
    optimizer: str = "rmsprop"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 10
    image_size: int = 256
    color: str = "rgb"
    augment: str = "rot90"
    augment_mode: str = "online"
    class_weights: bool = False
    seed: int = 0
    # Stop when the loss is not finite: a diverged trial wastes the rest of its budget.
    stop_on_nan: bool = True


@dataclass(frozen=True)
class ResourcesConfig:
    workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: str = "auto"  # auto | true | false
    # inline: the loop runs in the Tune trial actor (no per-trial Train controller, ~0 s start-up);
    # ray_train: a TorchTrainer per trial (DDP over `workers`); auto picks ray_train only when workers > 1.
    trial_runtime: str = "auto"
    max_failures: int = 2


@dataclass(frozen=True)
class SearchConfig:
    num_samples: int = 8
    max_concurrent: int = 0  # 0: as many as the cluster's resources allow
    search: str = "optuna"  # optuna (TPE) | random
    scheduler: str = "asha"  # asha | fifo
    grace_period: int = 1
    reduction_factor: int = 2
    metric: str = "val_f1_weighted"
    mode: str = "max"
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "leukotune"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else SQLite under the working directory
    log_models: bool = True


@dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    storage_path: str = ".leukotune/runs"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tune: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(cls: type, values: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass `cls` from a dict, recursing into nested dataclasses and refusing unknown keys."""
    values = dict(values or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"Unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"accepted under '{where or '<top>'}': {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_type(known[name])
        path = f"{where}.{name}" if where else name
        if nested and isinstance(value, dict):
            value = from_dict(nested, value, path)
        elif known[name].type == "float" and isinstance(value, str):
            value = _parse_value(value)  # `lr: 1e-4` in YAML 1.1 arrives as a string
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_type(f: dataclasses.Field) -> type | None:
    default = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    if default is not None and dataclasses.is_dataclass(default):
        return default
    return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-3` -> (["train", "lr"], 0.001); values are parsed as YAML so types come out right."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), _parse_value(raw)


def _parse_value(raw: str) -> Any:
    if raw == "":
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:  # YAML 1.1 reads `3e-4` as a string; users mean the number
            return float(value)
        except ValueError:
            return value
    return value


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


def load_study(path: str | Path | None, overrides: list[str] = (), data_path: str | None = None) -> StudyConfig:
    """Read a study YAML (or defaults), apply overrides, validate types and ranges."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"study file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a study file must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides))
    if data_path is not None:
        raw.setdefault("data", {})["path"] = data_path
    study = from_dict(StudyConfig, raw)
    validate_study(study)
    return study


_CHOICES = {
    "data.split": ("subject", "image", "fold"),
    "train.color": ("rgb", "gray"),
    "train.augment": ("none", "rot90", "rot90_flip"),
    "train.augment_mode": ("online", "materialize"),
    "train.image_size": (64, 128, 224, 256),
    "resources.use_gpu": ("auto", "true", "false"),
    "resources.trial_runtime": ("auto", "inline", "ray_train"),
    "tune.search": ("optuna", "random"),
    "tune.scheduler": ("asha", "fifo"),
    "tune.mode": ("max", "min"),
}

_RANGES = {
    "data.val_fraction": (0.01, 0.99),
    "train.lr": (1e-7, 10.0),
    "train.dropout": (0.0, 0.95),
    "train.batch_size": (1, 4096),
    "train.epochs": (1, 10_000),
    "resources.workers": (1, 1024),
    "resources.cpus_per_worker": (1, 512),
    "tune.num_samples": (1, 100_000),
    "tune.max_concurrent": (0, 10_000),
    "tune.grace_period": (1, 10_000),
    "tune.reduction_factor": (2, 100),
}


def _get(study: StudyConfig, dotted: str) -> Any:
    node: Any = study
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate_study(study: StudyConfig) -> None:
    """Refuse out-of-range values and unknown names before anything starts; messages name key and allowed values."""
    for key, allowed in _CHOICES.items():
        value = _get(study, key)
        if str(value).lower() not in {str(a) for a in allowed}:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
    for key, (low, high) in _RANGES.items():
        value = _get(study, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{key}={value!r} is out of range; allowed {low} to {high}")
    _validate_names(study)


def _validate_names(study: StudyConfig) -> None:
    # Imported here: models/ is heavy (torchvision) and the config module should load in milliseconds.
    from models import get_model_spec, list_models, list_optimizers, validate_model_kwargs

    train = study.train
    if train.model not in list_models():
        raise ConfigError(f"train.model={train.model!r} is unknown; choose one of {', '.join(list_models())}")
    if train.optimizer not in list_optimizers():
        raise ConfigError(
            f"train.optimizer={train.optimizer!r} is unknown; choose one of {', '.join(list_optimizers())}"
        )
    try:
        validate_model_kwargs(train.model, model_kwargs(train))
    except ValueError as exc:
        raise ConfigError(f"train: {exc}") from exc
    spec = get_model_spec(train.model)
    if spec.allowed_image_sizes and train.image_size not in spec.allowed_image_sizes:
        raise ConfigError(
            f"train.image_size={train.image_size} cannot feed {train.model}; "
            f"allowed: {', '.join(map(str, spec.allowed_image_sizes))}"
        )


def model_kwargs(train: TrainConfig) -> dict[str, Any]:
    """The builder kwargs for `train.model`, taken from the flat train section (saved in every checkpoint)."""
    from models import get_model_spec

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


def replace_train(study: StudyConfig, params: dict[str, Any]) -> StudyConfig:
    """A copy of the study whose train section has `params` (a Tune trial's sample) applied."""
    unknown = sorted(set(params) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"search space names unknown train keys: {', '.join(unknown)}")
    return dataclasses.replace(study, train=dataclasses.replace(study.train, **params))
