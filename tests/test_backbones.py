"""Today's backbones (issue 22): EfficientNet-B0/B1 and ConvNeXt-Tiny beside ResNet-50 and MobileNetV2.

Each builds with its own input size and normalisation, loads ImageNet weights from a file the test writes (nothing
can be downloaded here: a randomly initialised torchvision model's state dict, saved where studies look), keeps its
frozen parts frozen, is sized by the memory estimate, and trains one epoch on the real C-NMC sample at 64 px.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import ConvNeXt_Tiny_Weights, EfficientNet_B0_Weights, EfficientNet_B1_Weights
from torchvision.ops import StochasticDepth

from leukotune.models import (
    WeightsNotFoundError,
    build_optimizer,
    get_model,
    get_model_spec,
    list_models,
    resolve_weights_path,
)
from leukotune.tuner.config import TrainConfig, load_study
from leukotune.tuner.preflight import check_weights
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.memory import ACTIVATION_BYTES, estimate_trial_memory
from leukotune.tuner.train.sessions import LocalSession
from leukotune.tuner.tune.space import resolve_space

from conftest import REPO_ROOT, SMOKE

# torchvision's weights for each, read here independently of models/weights.py.
WEIGHTS = {
    "efficientnet_b0": EfficientNet_B0_Weights.IMAGENET1K_V1,
    "efficientnet_b1": EfficientNet_B1_Weights.IMAGENET1K_V2,
    "convnext_tiny": ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
}
NEW = list(WEIGHTS)
# The 1000-way ImageNet layer's keys in torchvision's files: the only keys the paper's head replaces. ConvNeXt's
# classifier.0 (its final LayerNorm) is not among them: it is loaded and kept.
IMAGENET_HEAD = {
    "efficientnet_b0": "classifier.1.",
    "efficientnet_b1": "classifier.1.",
    "convnext_tiny": "classifier.2.",
}
BLOCKS = {"efficientnet_b0": 18, "efficientnet_b1": 25, "convnext_tiny": 23}
SIZE = 64  # the smallest accepted size: every test here stays in seconds on two CPU cores
WEIGHT_ENV_VARS = ("LEUKOTUNE_WEIGHTS_DIR", *(f"LEUKOTUNE_WEIGHTS_{arch.upper()}" for arch in list_models()))


def file_name(arch: str) -> str:
    return Path(WEIGHTS[arch].url).name


@pytest.fixture(autouse=True)
def _no_weights_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Unset the weights env vars and point the torch hub cache at an empty temp dir; returns that dir."""
    for name in WEIGHT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


class ImagenetFiles(NamedTuple):
    folder: Path
    states: dict[str, dict[str, torch.Tensor]]  # arch -> the state dict saved in its file


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory: pytest.TempPathFactory) -> ImagenetFiles:
    """One weights file per new backbone, named as torchvision names it, in one folder."""
    folder = tmp_path_factory.mktemp("imagenet")
    states = {}
    for seed, arch in enumerate(NEW):
        torch.manual_seed(seed)
        states[arch] = getattr(torchvision.models, arch)(weights=None).state_dict()
        torch.save(states[arch], folder / file_name(arch))
    return ImagenetFiles(folder, states)


# ---------------------------------------------------------------- what each backbone is

@pytest.mark.parametrize("arch", NEW)
def test_registered_with_their_weights_own_size_and_normalisation(arch: str) -> None:
    spec, transforms = get_model_spec(arch), WEIGHTS[arch].transforms()
    assert spec.default_image_size == transforms.crop_size[0]  # B0 and ConvNeXt-Tiny 224, B1 240
    assert spec.mean == pytest.approx(tuple(transforms.mean)) and spec.std == pytest.approx(tuple(transforms.std))


@pytest.mark.parametrize("arch", NEW)
def test_weights_file_names_carry_the_hash_fetch_checks(arch: str) -> None:
    """`leukotune weights fetch` refuses a file whose SHA-256 does not start with the hash in its name."""
    found = torch.hub.HASH_REGEX.search(file_name(arch))
    assert found and len(found.group(1)) >= 8
    assert WEIGHTS[arch].url == f"https://download.pytorch.org/models/{file_name(arch)}"


# ---------------------------------------------------------------- ImageNet weights from a file

@pytest.mark.parametrize("arch", NEW)
def test_loads_imagenet_weights_from_the_weights_dir(arch, imagenet_files, monkeypatch) -> None:
    monkeypatch.setenv("LEUKOTUNE_WEIGHTS_DIR", str(imagenet_files.folder))
    model = get_model(arch, weights="imagenet", image_size=SIZE)
    loaded = model.backbone.state_dict()
    expected = {k: v for k, v in imagenet_files.states[arch].items() if not k.startswith(IMAGENET_HEAD[arch])}
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[key], tensor) for key, tensor in expected.items())
    assert model.eval()(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 2)


def test_loads_imagenet_weights_from_the_torch_hub_cache(imagenet_files, _no_weights_anywhere) -> None:
    arch = "convnext_tiny"
    _no_weights_anywhere.mkdir(parents=True)
    hub_file = _no_weights_anywhere / file_name(arch)
    hub_file.symlink_to(imagenet_files.folder / file_name(arch))
    assert resolve_weights_path(arch, "imagenet") == hub_file
    final_norm = get_model(arch, weights="imagenet", image_size=SIZE).backbone.classifier[0]
    assert torch.equal(final_norm.weight, imagenet_files.states[arch]["classifier.0.weight"])


@pytest.mark.parametrize("arch", NEW)
def test_missing_weights_say_how_to_provide_them(arch: str, _no_weights_anywhere: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        get_model(arch, weights="imagenet", image_size=SIZE)
    message = str(info.value)
    for needle in (f"leukotune weights fetch {arch}", WEIGHTS[arch].url, str(_no_weights_anywhere),
                   f"LEUKOTUNE_WEIGHTS_{arch.upper()}", "LEUKOTUNE_WEIGHTS_DIR"):
        assert needle in message


# ---------------------------------------------------------------- frozen or fine-tuned

@pytest.mark.parametrize(
    ("arch", "unfreeze", "trainable_prefixes"),
    [
        ("efficientnet_b0", 0, ("head.",)),
        ("efficientnet_b0", 1, ("head.", "backbone.features.8.")),  # the final 1x1 conv
        ("efficientnet_b0", 3, ("head.", "backbone.features.8.", "backbone.features.7.0.", "backbone.features.6.3.")),
        ("efficientnet_b0", 18, ("head.", "backbone.features.")),
        ("efficientnet_b1", 3, ("head.", "backbone.features.8.", "backbone.features.7.")),  # B1's last stage: 2
        ("efficientnet_b1", 25, ("head.", "backbone.features.")),
        ("convnext_tiny", 1, ("head.", "backbone.classifier.0.")),  # the final LayerNorm
        ("convnext_tiny", 5, ("head.", "backbone.classifier.0.", "backbone.features.7.", "backbone.features.6.")),
        ("convnext_tiny", 23, ("head.", "backbone.")),
    ],
)
def test_unfreeze_trains_exactly_the_last_blocks(arch: str, unfreeze: int, trainable_prefixes: tuple[str, ...]) -> None:
    model = get_model(arch, image_size=SIZE, unfreeze=unfreeze)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(trainable_prefixes)}


@pytest.mark.parametrize("arch", NEW)
def test_unfreeze_beyond_the_blocks_is_refused(arch: str) -> None:
    with pytest.raises(ValueError, match=rf"unfreeze={BLOCKS[arch] + 1} is out of range \[0, {BLOCKS[arch]}\]"):
        get_model(arch, image_size=SIZE, unfreeze=BLOCKS[arch] + 1)


def _frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def _frozen_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys a training step must not change: frozen parameters, and the buffers of frozen layers."""
    frozen_modules = {name for name, module in model.named_modules() if _frozen(module)}
    return ({name for name, p in model.named_parameters() if not p.requires_grad}
            | {name for name, _ in model.named_buffers() if name.rpartition(".")[0] in frozen_modules})


@pytest.mark.parametrize("arch", NEW)
def test_a_training_step_leaves_frozen_parts_untouched(arch: str) -> None:
    """Frozen BatchNorm keeps its ImageNet running stats, frozen LayerNorm its weights, and a frozen block's
    stochastic depth stays off (eval), so the head trains on the features it will see at test time."""
    torch.manual_seed(0)
    model = get_model(arch, image_size=SIZE, unfreeze=2).eval().train()  # the round trip must not undo it
    frozen = [m for m in model.backbone.modules() if _frozen(m)]
    assert all(not inner.training for module in frozen for inner in module.modules())
    depth = [m for m in model.backbone.modules() if isinstance(m, StochasticDepth)]
    assert any(m.training for m in depth) and any(not m.training for m in depth)  # a trainable block keeps its own
    assert any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in frozen)
    before = {key: value.clone() for key, value in model.state_dict().items()}

    optimizer = build_optimizer("adamw", model.parameters(), lr=1e-2, weight_decay=0.05)
    F.cross_entropy(model(torch.randn(4, 3, SIZE, SIZE)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()

    after = model.state_dict()
    assert all(torch.equal(after[key], before[key]) for key in _frozen_state_keys(model))
    assert not torch.equal(after["head.2.weight"], before["head.2.weight"])


@pytest.mark.parametrize("arch", NEW)
def test_fine_tuned_without_freezing_everything_trains(arch: str) -> None:
    model = get_model(arch, image_size=SIZE, freeze=False)
    assert all(p.requires_grad for p in model.parameters()) and all(m.training for m in model.modules())


# ---------------------------------------------------------------- sized by the memory estimate

def _activation_values_autograd_keeps(model: nn.Module, batch: int) -> int:
    """Values of the tensors autograd saves for backward in one forward (parameters and buffers not counted)."""
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.randn(batch, 3, SIZE, SIZE))
    return sum(saved.values())


@pytest.mark.parametrize("arch", NEW)
def test_memory_estimate_covers_what_a_fine_tuned_backbone_keeps_for_backward(arch: str) -> None:
    """The estimate hooks layers, and these backbones also multiply and add outside any layer (squeeze-excitation,
    layer scale, residuals): it must still hold at least what autograd keeps, in bf16."""
    batch = 2
    train = TrainConfig(model=arch, unfreeze=BLOCKS[arch], image_size=SIZE, batch_size=batch, optimizer="adamw")
    estimate = estimate_trial_memory(train)
    model = get_model(arch, image_size=SIZE, unfreeze=BLOCKS[arch])
    parameters = sum(p.numel() for p in model.parameters())
    assert estimate.weights == parameters * 4
    assert estimate.gradients_and_optimizer == parameters * 4 * 3  # gradients and AdamW's two moments
    assert estimate.activations >= _activation_values_autograd_keeps(model, batch) * ACTIVATION_BYTES


# ---------------------------------------------------------------- offered by studies/sota.yaml

def test_sota_study_searches_todays_backbones_and_every_sampled_trial_builds() -> None:
    study = load_study(REPO_ROOT / "studies" / "sota.yaml")
    space = resolve_space(study, draws=32)  # the preflight's check: each draw is built as a config
    assert set(space["model"]["choice"]) == {*NEW, "resnet50", "mobilenet_v2"}
    assert {"image_size", "unfreeze", "lr", "augment"} <= set(space)
    assert study.data.split == "subject" and study.data.cv_folds == 3
    with pytest.raises(WeightsNotFoundError, match="leukotune weights fetch"):
        check_weights(study, space)  # the preflight names the missing files before Ray starts


# ---------------------------------------------------------------- one epoch on the real sample

@pytest.mark.parametrize("arch", NEW)
def test_trains_one_epoch_on_the_real_sample(arch, cnmc_sample, imagenet_files, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LEUKOTUNE_WEIGHTS_DIR", str(imagenet_files.folder))
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = load_study(SMOKE, [f"train.model={arch}", "train.weights=imagenet", "train.unfreeze=2",
                               f"train.image_size={SIZE}", "train.batch_size=8", "train.epochs=1",
                               "train.optimizer=adamw", "data.val_fraction=0.3"], data_path=str(cnmc_sample))
    session = LocalSession(use_gpu="false")
    last = run_training(study, session, log=lambda _message: None)
    assert [report["epoch"] for report in session.reports] == [1]
    assert last["train_samples"] > 0 and last["val_samples"] > 0
    assert torch.isfinite(torch.tensor(last["train_loss"])) and 0.0 <= last["val_accuracy"] <= 1.0
