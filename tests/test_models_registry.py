"""The model registry and every registered model, with random weights, at a small image size."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leukotune.models import (
    ModelSpec,
    UnknownModelError,
    build_cnn,
    build_optimizer,
    get_model,
    get_model_spec,
    list_models,
    register_model,
    registry,
    validate_model_kwargs,
)

SIZE = 64  # the smallest accepted size keeps ResNet-50 forwards well under a second on two CPU cores
MODELS = list_models()
# Registry-driven: any model that takes `freeze` is a transfer model with a frozen backbone.
TRANSFER = [name for name in MODELS if "freeze" in get_model_spec(name).takes]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _batch(in_channels: int = 3, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, in_channels, SIZE, SIZE), torch.tensor([0, 1] * (n // 2))


def _batchnorms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_registry_lists_the_paper_models_and_todays_backbones() -> None:
    assert MODELS == ["cnn", "convnext_tiny", "efficientnet_b0", "efficientnet_b1", "mobilenet_v2", "resnet50"]
    assert TRANSFER == ["convnext_tiny", "efficientnet_b0", "efficientnet_b1", "mobilenet_v2", "resnet50"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape_and_finite(name: str, in_channels: int) -> None:
    model = get_model(name, in_channels=in_channels, image_size=SIZE).eval()
    x, _ = _batch(in_channels)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_step_moves_trainable_params_only(name: str) -> None:
    model = get_model(name, image_size=SIZE).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer("rmsprop", model.parameters(), lr=1e-3)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()

    after = dict(model.named_parameters())
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert bool(frozen) == (name in TRANSFER)
    for n in frozen:
        assert torch.equal(after[n], before[n]), f"frozen {n} moved"
    head = [n for n in after if n.startswith("head.")]
    assert head
    for n in head:
        assert not torch.equal(after[n], before[n]), f"head {n} did not move"


@pytest.mark.parametrize(
    ("name", "unfreeze", "trainable_prefixes"),
    [
        ("resnet50", 0, ("head.",)),
        ("resnet50", 1, ("head.", "backbone.layer4.2.")),
        ("resnet50", 4, ("head.", "backbone.layer4.", "backbone.layer3.5.")),
        ("resnet50", 16, ("head.", "backbone.layer1.", "backbone.layer2.", "backbone.layer3.", "backbone.layer4.")),
        ("mobilenet_v2", 0, ("head.",)),
        ("mobilenet_v2", 1, ("head.", "backbone.features.18.")),
        ("mobilenet_v2", 3, ("head.", "backbone.features.16.", "backbone.features.17.", "backbone.features.18.")),
        ("mobilenet_v2", 19, ("head.", "backbone.features.")),
    ],
)
def test_unfreeze_makes_exactly_the_last_blocks_trainable(
    name: str, unfreeze: int, trainable_prefixes: tuple[str, ...]
) -> None:
    model = get_model(name, image_size=SIZE, unfreeze=unfreeze)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.startswith(trainable_prefixes)}
    assert trainable == expected


@pytest.mark.parametrize("name", TRANSFER)
def test_freeze_false_trains_everything(name: str) -> None:
    model = get_model(name, image_size=SIZE, freeze=False)
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in _batchnorms(model).values())


@pytest.mark.parametrize("name", TRANSFER)
@pytest.mark.parametrize("round_trip", [False, True], ids=["fresh", "eval-train"])
def test_frozen_batchnorm_stats_survive_a_train_forward(name: str, round_trip: bool) -> None:
    model = get_model(name, image_size=SIZE, unfreeze=1)
    if not _batchnorms(model):
        pytest.skip(f"{name} normalises with LayerNorm (no running stats); tests/test_backbones.py covers it")
    if round_trip:  # eval() then train() must not put frozen BatchNorm back in train mode
        model.eval().train()
    bns = _batchnorms(model)
    frozen = {n for n, bn in bns.items() if not bn.weight.requires_grad}
    assert frozen and frozen != set(bns), "need both frozen and unfrozen BatchNorm layers"
    before = {n: (bn.running_mean.clone(), bn.running_var.clone()) for n, bn in bns.items()}

    model(_batch(n=4)[0])

    assert model.training
    for n, bn in bns.items():
        unchanged = torch.equal(bn.running_mean, before[n][0]) and torch.equal(bn.running_var, before[n][1])
        assert unchanged == (n in frozen), n
        assert bn.training == (n not in frozen), n


@pytest.mark.parametrize("name", TRANSFER)
def test_transfer_refuses_wrong_channel_count(name: str) -> None:
    model = get_model(name, in_channels=1, image_size=SIZE)
    with pytest.raises(ValueError, match="expected 1 input channel"):
        model(_batch(in_channels=3)[0])


def test_duplicate_registration_raises() -> None:
    spec = get_model_spec("cnn")
    with pytest.raises(ValueError, match="'cnn' is already registered"):
        register_model("cnn")(build_cnn)
    assert get_model_spec("cnn") is spec


def test_register_derives_the_spec_from_the_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model("toy")
    def build_toy(*, width: int = 4, image_size: int = 96) -> nn.Module:
        return nn.Linear(width, 2)

    assert "toy" in list_models()
    assert get_model_spec("toy") == ModelSpec("toy", 96, None, None, frozenset({"width", "image_size"}))
    validate_model_kwargs("toy", {"image_size": 128})
    with pytest.raises(ValueError, match="image_size"):
        validate_model_kwargs("toy", {"image_size": 4})
    with pytest.raises(TypeError, match="keyword-only"):
        register_model("positional")(lambda image_size=64: nn.Identity())


@pytest.mark.parametrize("lookup", [get_model, get_model_spec, lambda n: validate_model_kwargs(n, {})])
def test_unknown_name_lists_valid_names(lookup) -> None:
    with pytest.raises(UnknownModelError) as info:
        lookup("vgg16")
    message = str(info.value)
    assert "'vgg16'" in message
    assert all(name in message for name in MODELS)


@pytest.mark.parametrize(
    ("name", "spec_values"),
    [
        ("cnn", (256, None, None)),
        ("resnet50", (224, IMAGENET_MEAN, IMAGENET_STD)),
        ("mobilenet_v2", (224, IMAGENET_MEAN, IMAGENET_STD)),
    ],
)
def test_spec_values(name: str, spec_values: tuple) -> None:
    spec = get_model_spec(name)
    assert (spec.default_image_size, spec.mean, spec.std) == spec_values
    assert "image_size" in spec.takes and "in_channels" in spec.takes


def test_grayscale_normalization_averages_rgb() -> None:
    mean, std = get_model_spec("resnet50").normalization(1)
    assert mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and std == pytest.approx((sum(IMAGENET_STD) / 3,))
    assert get_model_spec("resnet50").normalization(3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert get_model_spec("cnn").normalization(1) is None


@pytest.mark.parametrize("name", MODELS)
def test_defaults_validate(name: str) -> None:
    validate_model_kwargs(name, {})


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("cnn", {"conv_layers": 2, "kernel_size": 7, "image_size": 64, "in_channels": 1, "batch_norm": True}),
        ("cnn", {"conv_layers": 6, "image_size": 128}),
        ("resnet50", {"weights": "imagenet", "unfreeze": 16, "image_size": 256}),
        ("mobilenet_v2", {"freeze": False, "dropout": 0.5, "dense": 64}),
    ],
)
def test_valid_kwargs_pass(name: str, kwargs: dict) -> None:
    validate_model_kwargs(name, kwargs)  # "imagenet" is not looked up here: resolve_weights_path does that


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("cnn", {"layers": 5, "lr": 1e-4}, r"unknown argument\(s\) layers, lr; it accepts: base_filters, batch_norm"),
        ("resnet50", {"conv_layers": 5}, r"unknown argument\(s\) conv_layers; it accepts: dense, dropout"),
        ("cnn", {"conv_layers": 7}, r"conv_layers=7 is out of range \[2, 6\]"),
        ("cnn", {"conv_layers": 2.0}, "conv_layers must be an integer"),
        ("cnn", {"kernel_size": 4}, "kernel_size=4 is not one of 3, 5, 7"),
        ("cnn", {"in_channels": True}, "in_channels=True is not one of 1, 3"),
        ("cnn", {"dropout": 1.0}, r"dropout=1.0 is out of range \[0.0, 1.0\)"),
        ("cnn", {"image_size": 32}, r"image_size=32 is out of range \[64, 256\]"),
        ("cnn", {"image_size": 96, "conv_layers": 6}, "pools the feature map to 1x1"),
        ("resnet50", {"image_size": 512}, r"image_size=512 is out of range \[64, 256\]"),
        ("resnet50", {"unfreeze": 17}, r"unfreeze=17 is out of range \[0, 16\]"),
        ("mobilenet_v2", {"unfreeze": 20}, r"unfreeze=20 is out of range \[0, 19\]"),
        ("mobilenet_v2", {"freeze": False, "unfreeze": 2}, "needs freeze=True"),
        ("mobilenet_v2", {"weights": 3}, "weights must be None, 'imagenet' or a file path"),
        ("resnet50", {"num_classes": 1}, r"num_classes=1 is out of range"),
    ],
)
def test_invalid_kwargs_are_refused(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_model_kwargs(name, kwargs)


def test_get_model_refuses_unknown_kwargs() -> None:
    with pytest.raises(ValueError, match=r"unknown argument\(s\) depth"):
        get_model("cnn", depth=3)


def test_cnn_refuses_too_deep_config() -> None:
    with pytest.raises(ValueError) as info:
        build_cnn(image_size=64, conv_layers=6)
    assert all(s in str(info.value) for s in ("image_size=64", "conv_layers=6", "1x1"))


def test_cnn_paper_parameter_count() -> None:
    # Paper: 256x256 RGB, five 3x3 conv layers (16..256 filters, with bias), each halving the map, 8x8x256 flattened.
    conv = sum(c_in * c_out * 9 + c_out for c_in, c_out in [(3, 16), (16, 32), (32, 64), (64, 128), (128, 256)])
    dense = (8 * 8 * 256) * 128 + 128 + 128 * 2 + 2
    model = get_model("cnn")
    assert conv + dense == 2_490_146
    assert sum(p.numel() for p in model.parameters()) == conv + dense  # known before any forward


def test_cnn_filters_double_and_cap() -> None:
    model = build_cnn(conv_layers=6, base_filters=128, image_size=128)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [128, 256, 512, 512, 512, 512]


def test_models_never_import_ray_or_mlflow() -> None:
    # A fresh interpreter: in this one, other test files may already have imported ray or mlflow.
    code = "import sys, models; print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", TRANSFER)
def test_registered_normalization_is_torchvisions_for_the_weights(name: str) -> None:
    """The registry holds ImageNet's mean and std as constants (registering needs no torchvision import); they must
    stay what torchvision's weight enum says its files were trained with."""
    from leukotune.models.weights import imagenet_normalization

    mean, std = imagenet_normalization(name)
    assert get_model_spec(name).mean == pytest.approx(mean) and get_model_spec(name).std == pytest.approx(std)


def test_a_cnn_trial_process_never_imports_torchvision_or_the_drivers_libraries() -> None:
    """Every Tune trial process imports the trainable: torchvision (about a second: it loads torch._dynamo) and the
    driver's MLflow, matplotlib and Optuna would be paid again by each one."""
    probe = ("import sys, leukotune.tuner.tune.trainable, leukotune.tuner.evaluation.test_side; "
             "print(sorted(m for m in ('torchvision', 'mlflow', 'matplotlib', 'optuna') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
