"""Optimisers by name: every entry of the table steps, and frozen parameters stay out of it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from leukotune.models import UnknownOptimizerError, build_optimizer, get_model, list_optimizers

OPTIMIZERS = list_optimizers()


def _params() -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(torch.tensor([3.0, -2.0])), nn.Parameter(torch.ones(2), requires_grad=False)


def test_table_holds_the_expected_optimizers() -> None:
    assert OPTIMIZERS == ["adam", "adamw", "rmsprop", "sgd"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_steps_reduce_a_quadratic_and_skip_frozen(name: str) -> None:
    trainable, frozen = _params()
    optimizer = build_optimizer(name, [trainable, frozen], lr=0.05)
    assert [p for group in optimizer.param_groups for p in group["params"]] == [trainable]

    def loss() -> torch.Tensor:
        return (trainable**2).sum() + (frozen * trainable).sum()

    first = loss().item()
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < first
    assert torch.equal(frozen, torch.ones(2))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_hyperparameters_reach_the_optimizer(name: str) -> None:
    group = build_optimizer(name, [_params()[0]], lr=1e-4, weight_decay=0.01, momentum=0.8).param_groups[0]
    assert group["lr"] == 1e-4 and group["weight_decay"] == 0.01
    # Only SGD takes the momentum argument; RMSprop keeps the paper's (Keras') momentum-free update.
    assert group.get("momentum", 0) == (0.8 if name == "sgd" else 0)


def test_transfer_model_gets_only_its_head() -> None:
    model = get_model("mobilenet_v2", image_size=64)
    optimizer = build_optimizer("rmsprop", model.parameters(), lr=1e-4)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.head.parameters()}


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownOptimizerError) as info:
        build_optimizer("lbfgs", [_params()[0]], lr=0.1)
    assert "'lbfgs'" in str(info.value) and all(name in str(info.value) for name in OPTIMIZERS)


@pytest.mark.parametrize(
    ("params", "kwargs", "match"),
    [
        ([_params()[1]], {"lr": 0.1}, "no trainable parameters"),
        ([_params()[0]], {"lr": 0.0}, "lr must be > 0"),
        ([_params()[0]], {"lr": 0.1, "weight_decay": -1.0}, "weight_decay must be >= 0"),
    ],
)
def test_bad_arguments_are_refused(params, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_optimizer("adam", params, **kwargs)


@pytest.mark.parametrize("name", list_optimizers())
def test_state_values_per_parameter_are_what_the_optimiser_really_keeps(name: str) -> None:
    """The memory estimate counts optimizer_state_values per trainable value: after a step, each parameter has
    that many tensors of its own shape in the optimiser's state (Adam's `step` counter is a scalar, not counted)."""
    from leukotune.models import optimizer_state_values

    layer = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(name, layer.parameters(), lr=1e-3)
    layer(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    for parameter in layer.parameters():
        kept = [v for v in optimizer.state[parameter].values() if torch.is_tensor(v) and v.shape == parameter.shape]
        assert len(kept) == optimizer_state_values(name)
