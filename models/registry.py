"""One registry turns a model name into a network and its preprocessing facts.

Like torchvision's ``models/_api.py`` and timm's ``_registry.py``: builders register themselves with a
decorator, and everything else (the tuner, ``data/``, tests) goes through ``get_model`` / ``get_model_spec``.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

import torch
from torch import nn

from .ensemble import FoldEnsemble

__all__ = [
    "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "ModelSpec",
    "UnknownModelError",
    "check_choice",
    "check_range",
    "get_model",
    "get_model_spec",
    "list_models",
    "rebuild_network",
    "register_model",
    "validate_model_kwargs",
]

# Every model accepts square inputs in this range: below 64 px a cell is a few blobs, above 256 px is
# larger than the C-NMC images (cropped at 300 px around a ~100-200 px cell) and only costs memory.
MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 256

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


class UnknownModelError(KeyError):
    """A model (or architecture) name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:
        # KeyError would repr() the message and show it quoted on one line.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelSpec:
    """Facts a model owns about its input, so ``data/`` and the tuner ask instead of guessing.

    Any image size from MIN_IMAGE_SIZE to MAX_IMAGE_SIZE is accepted here (a builder may still refuse a size that
    does not fit its other arguments, e.g. a CNN too deep for it). ``mean=None`` means
    "normalise with the train split's own statistics" (a from-scratch network has no pretraining to match).
    ``takes`` is the set of keyword arguments the builder accepts.
    """

    name: str
    default_image_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    takes: frozenset[str]

    def normalization(self, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Mean and std for ``in_channels`` inputs, or None to use train-split statistics.

        A grayscale input is repeated to RGB inside transfer models, so it is normalised with the average of
        the RGB statistics: that keeps the repeated channels close to what the pretrained stem expects.
        """
        if self.mean is None or self.std is None:
            return None
        if in_channels == len(self.mean):
            return self.mean, self.std
        if in_channels == 1:
            return (sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),)
        raise ValueError(f"{self.name}: no normalisation for in_channels={in_channels}; expected 1 or {len(self.mean)}")


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    spec: ModelSpec


_MODELS: dict[str, _Entry] = {}


def register_model(
    name: str,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name``; raises ValueError if the name is taken.

    The builder must take keyword-only arguments including ``image_size``, whose default becomes the spec's
    ``default_image_size`` so the two cannot drift apart.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].builder.__qualname__})")
        params = inspect.signature(builder).parameters.values()
        if any(p.kind is not inspect.Parameter.KEYWORD_ONLY for p in params):
            raise TypeError(f"builder for {name!r} must take keyword-only arguments (put them after `*`)")
        defaults = {p.name: p.default for p in params}
        if "image_size" not in defaults:
            raise TypeError(f"builder for {name!r} must take an `image_size` keyword argument")
        spec = ModelSpec(
            name=name,
            default_image_size=int(defaults["image_size"]),
            mean=mean,
            std=std,
            takes=frozenset(defaults),
        )
        _MODELS[name] = _Entry(builder, spec)
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def _entry(name: str) -> _Entry:
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(list_models())}") from None


def get_model_spec(name: str) -> ModelSpec:
    """The preprocessing facts and accepted arguments of model ``name``."""
    return _entry(name).spec


def _check_keys(spec: ModelSpec, kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(kwargs) - spec.takes)
    if unknown:
        raise ValueError(
            f"model {spec.name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(spec.takes))}"
        )


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with the builder's keyword arguments (unknown keys raise a ValueError)."""
    entry = _entry(name)
    _check_keys(entry.spec, kwargs)
    return entry.builder(**kwargs)


def rebuild_network(name: str, model_kwargs: Mapping[str, Any], state: Mapping[str, Any],
                    ensemble_members: int = 0) -> nn.Module:
    """A trained network from its registry name, its saved builder kwargs and its state dict, in eval mode;
    with `ensemble_members` (a cross-validated trial's fold models), a `FoldEnsemble` of that many.

    Built from random initialisation, never from a weights file: the state dict carries every weight, and a model
    rebuilt years later on another machine must not look for ImageNet files.
    """
    kwargs = dict(model_kwargs)
    if "weights" in kwargs:
        kwargs["weights"] = None
    if ensemble_members:
        model: nn.Module = FoldEnsemble([get_model(name, **kwargs) for _ in range(ensemble_members)])
    else:
        model = get_model(name, **kwargs)
    model.load_state_dict(state)
    return model.eval()


def validate_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ValueError if ``kwargs`` cannot build model ``name``; cheap enough to run before any trial.

    Checks the keys, the image size against the spec and the weights argument's type, then runs the builder
    on the meta device (no memory, no weights read) so every range and cross-argument check lives in exactly
    one place: the builder. Whether ImageNet weights are on disk is ``models.resolve_weights_path``'s job.
    """
    spec = get_model_spec(name)
    _check_keys(spec, kwargs)
    image_size = kwargs.get("image_size", spec.default_image_size)
    check_range("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    dry_kwargs = dict(kwargs)
    if "weights" in dry_kwargs:
        weights = dry_kwargs.pop("weights")
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise ValueError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")
    with torch.device("meta"):
        _entry(name).builder(**dry_kwargs)


def check_range(
    name: str, value: Any, low: float, high: float, *, integer: bool = True, high_inclusive: bool = True
) -> None:
    """Raise ValueError unless ``low <= value <= high`` (``< high`` if not inclusive), and an int if asked."""
    kind = (int,) if integer else (int, float)
    # bool is an int subclass, but `conv_layers=True` is always a config mistake.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    above = value > high if high_inclusive else value >= high
    if value < low or above:
        closing = "]" if high_inclusive else ")"
        raise ValueError(f"{name}={value!r} is out of range [{low}, {high}{closing}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices`` (listed in the message)."""
    choices = tuple(choices)
    # Keep bools and ints apart (True == 1): `in_channels=True` or `freeze=1` is a mistake, not a choice.
    if isinstance(value, bool) != any(isinstance(c, bool) for c in choices) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
