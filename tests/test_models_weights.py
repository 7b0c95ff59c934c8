"""Offline ImageNet weights: the tests write their own weights files, since nothing can be downloaded."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights

from leukotune.models import UnknownModelError, WeightsFileError, WeightsNotFoundError, get_model, resolve_weights_path

# File names as torchvision (and torch.hub) spell them, read here independently of models/weights.py.
FILE_NAMES = {
    "resnet50": Path(ResNet50_Weights.IMAGENET1K_V2.url).name,
    "mobilenet_v2": Path(MobileNet_V2_Weights.IMAGENET1K_V2.url).name,
}
ENV_VARS = ("LEUKOTUNE_WEIGHTS_RESNET50", "LEUKOTUNE_WEIGHTS_MOBILENET_V2", "LEUKOTUNE_WEIGHTS_DIR")
ARCH = "mobilenet_v2"  # 14 MB of weights, against ResNet-50's 100 MB: most tests use it
SIZE = 64


@pytest.fixture(autouse=True)
def _offline_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No weights anywhere: the env vars are unset and the torch hub dir is an empty temp dir."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _write_weights(arch: str, path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """Save the state dict of a randomly initialised torchvision ``arch`` (classifier included) to ``path``."""
    torch.manual_seed(seed)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("weights") / FILE_NAMES[ARCH]
    return path, _write_weights(ARCH, path)


def _assert_backbone_equals(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v2"])
def test_load_from_explicit_path(arch: str, tmp_path: Path) -> None:
    state = _write_weights(arch, tmp_path / "backbone.pth")
    model = get_model(arch, weights=str(tmp_path / "backbone.pth"), image_size=SIZE)
    _assert_backbone_equals(model, state)
    assert model.eval()(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 2)


def test_load_imagenet_from_weights_dir(monkeypatch, tmp_path, mobilenet_file) -> None:
    path, state = mobilenet_file
    monkeypatch.setenv("LEUKOTUNE_WEIGHTS_DIR", str(path.parent))
    assert resolve_weights_path(ARCH, "imagenet") == path
    _assert_backbone_equals(get_model(ARCH, weights="imagenet", image_size=SIZE), state)


def test_load_imagenet_from_torch_hub_cache(_offline_home, mobilenet_file) -> None:
    path, state = mobilenet_file
    _offline_home.mkdir(parents=True)
    (_offline_home / path.name).symlink_to(path)
    assert resolve_weights_path(ARCH, "imagenet") == _offline_home / path.name
    _assert_backbone_equals(get_model(ARCH, weights="imagenet", image_size=SIZE), state)


def test_load_imagenet_from_arch_env_var(monkeypatch, tmp_path, mobilenet_file) -> None:
    path, state = mobilenet_file
    monkeypatch.setenv("LEUKOTUNE_WEIGHTS_MOBILENET_V2", str(path))
    _assert_backbone_equals(get_model(ARCH, weights="imagenet", image_size=SIZE), state)


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (("env", "dir", "hub"), "env"),
        (("dir", "hub"), "dir"),
        (("hub",), "hub"),
    ],
)
def test_imagenet_lookup_order(monkeypatch, tmp_path, _offline_home, present, expected) -> None:
    places = {
        "env": tmp_path / "explicit.pth",
        "dir": tmp_path / "weights_dir" / FILE_NAMES[ARCH],
        "hub": _offline_home / FILE_NAMES[ARCH],
    }
    monkeypatch.setenv("LEUKOTUNE_WEIGHTS_MOBILENET_V2", str(places["env"]))
    monkeypatch.setenv("LEUKOTUNE_WEIGHTS_DIR", str(places["dir"].parent))
    for place in present:
        places[place].parent.mkdir(parents=True, exist_ok=True)
        places[place].write_bytes(b"")  # lookup only checks existence
    assert resolve_weights_path(ARCH, "imagenet") == places[expected]


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v2"])
def test_missing_imagenet_weights_say_where_and_how(arch: str, _offline_home: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights_path(arch, "imagenet")
    message = str(info.value)
    for needle in (
        str(_offline_home / FILE_NAMES[arch]),
        f"LEUKOTUNE_WEIGHTS_{arch.upper()}",
        "LEUKOTUNE_WEIGHTS_DIR",
        f"https://download.pytorch.org/models/{FILE_NAMES[arch]}",
    ):
        assert needle in message
    with pytest.raises(WeightsNotFoundError):
        get_model(arch, weights="imagenet", image_size=SIZE)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        resolve_weights_path(ARCH, tmp_path / "nope.pth")


def test_no_weights_means_random_init() -> None:
    assert resolve_weights_path(ARCH, None) is None


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(UnknownModelError, match="mobilenet_v2, resnet50"):
        resolve_weights_path("vgg16", "imagenet")


def test_truncated_file_is_refused_by_name(tmp_path: Path, mobilenet_file) -> None:
    data = mobilenet_file[0].read_bytes()
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match=r"truncated\.pth.*truncated or corrupt"):
        get_model(ARCH, weights=broken, image_size=SIZE)


def _touch(path: str) -> None:
    Path(path).touch()


class _Payload:
    """Unpickling this would call _touch: proof that the loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _touch, (str(self.marker),)


def test_pickled_object_is_refused_by_weights_only(tmp_path: Path) -> None:
    marker, path = tmp_path / "code-ran", tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": _Payload(marker)}, path)
    with pytest.raises(WeightsFileError, match=r"evil\.pth.*weights_only"):
        get_model(ARCH, weights=path, image_size=SIZE)
    assert not marker.exists()


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict_is_accepted(tmp_path: Path, mobilenet_file, wrapper: str) -> None:
    state = mobilenet_file[1]
    torch.save({wrapper: state, "epoch": 3}, tmp_path / "checkpoint.pth")
    _assert_backbone_equals(get_model(ARCH, weights=tmp_path / "checkpoint.pth", image_size=SIZE), state)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update({"features.0.0.weight": torch.zeros(1)}), "size mismatch"),
        (lambda s: s.pop("features.0.0.weight"), "Missing key"),
        (lambda s: s.update({"extra.weight": torch.zeros(1)}), "Unexpected key"),
    ],
)
def test_wrong_architecture_file_is_refused_by_name(tmp_path: Path, mobilenet_file, edit, match: str) -> None:
    state = dict(mobilenet_file[1])
    edit(state)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(WeightsFileError, match=rf"other\.pth does not fit a mobilenet_v2 backbone(.|\n)*{match}"):
        get_model(ARCH, weights=tmp_path / "other.pth", image_size=SIZE)


def test_file_without_tensors_is_refused(tmp_path: Path) -> None:
    torch.save({"lr": 0.1}, tmp_path / "config.pth")
    with pytest.raises(WeightsFileError, match=r"config\.pth does not hold a state dict"):
        get_model(ARCH, weights=tmp_path / "config.pth", image_size=SIZE)
