"""Transfer models: a torchvision ImageNet backbone, frozen or partly fine-tuned, under the paper's small head."""
from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .registry import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_choice, check_range, register_model
from .weights import IMAGENET_MEAN, IMAGENET_STD, load_backbone_weights

__all__ = [
    "TransferNet",
    "build_convnext_tiny",
    "build_efficientnet_b0",
    "build_efficientnet_b1",
    "build_mobilenet_v2",
    "build_resnet50",
]

WeightsArg = str | os.PathLike[str] | None

# Every BatchNorm torch has (all of torch's private `_BatchNorm`), SyncBatchNorm for DDP included: the layers whose
# train mode overwrites pretrained state. TransferNet's rule (frozen subtrees in eval) no longer needs the list;
# tests/test_compat.py still checks it against each torch release.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


@dataclass(frozen=True)
class _Arch:
    """How to build one torchvision backbone, which of its layers the head replaces, and its unfreezable blocks."""

    factory: str  # the builder's name in torchvision.models
    # Dotted path of the ImageNet classifier layer(s) the paper's head replaces; what stays before it (ConvNeXt's
    # final LayerNorm) is part of the backbone and of its weights file.
    classifier: str
    blocks: Callable[[nn.Module], list[nn.Module]]  # bottom to top: `unfreeze=N` trains the last N


def _open_stages(features: nn.Sequential, stages: Collection[int]) -> list[nn.Module]:
    """``features`` bottom to top, with the entries at ``stages`` (each a Sequential of blocks) opened into blocks."""
    return [block for index, entry in enumerate(features) for block in (entry if index in stages else [entry])]


_ARCHS: dict[str, _Arch] = {
    # Blocks are the 16 bottlenecks of layer1..layer4 (3+4+6+3), not the 4 stages: unfreezing a whole stage
    # at once is too coarse a step (layer3 alone holds 7M parameters). The stem (conv1, bn1) stays frozen.
    "resnet50": _Arch(
        "resnet50",
        "fc",
        lambda net: [*net.layer1, *net.layer2, *net.layer3, *net.layer4],
    ),
    # Blocks are the 19 entries of `features`: the stem conv, 17 inverted residuals and the final 1x1 conv.
    # Its classifier is Dropout + Linear: the head brings its own dropout.
    "mobilenet_v2": _Arch("mobilenet_v2", "classifier", lambda net: list(net.features)),
    # Blocks, as for MobileNetV2, one MBConv at a time: the stem, the MBConv blocks of the 7 stages (B0: 16, B1: 23)
    # and the final 1x1 conv, so 18 and 25. The classifier is Dropout + Linear, replaced whole.
    "efficientnet_b0": _Arch("efficientnet_b0", "classifier", lambda net: _open_stages(net.features, range(1, 8))),
    "efficientnet_b1": _Arch("efficientnet_b1", "classifier", lambda net: _open_stages(net.features, range(1, 8))),
    # The classifier is LayerNorm2d + Flatten + Linear, and only the Linear is ImageNet's: the LayerNorm normalises
    # the pooled features the pretrained network ends with, so it stays, as the topmost block. Below it: the stem,
    # the 18 CNBlocks of the 4 stages (3+3+9+3) and the 3 downsampling layers between them, so 23 blocks.
    "convnext_tiny": _Arch(
        "convnext_tiny",
        "classifier.2",
        lambda net: [*_open_stages(net.features, (1, 3, 5, 7)), net.classifier[0]],
    ),
}


class TransferNet(nn.Module):
    """Backbone (pooled features) followed by the head; keeps the backbone's frozen parts in eval mode.

    Why eval: a frozen BatchNorm's running mean/var are part of the pretrained weights. In train mode it
    would normalise by the statistics of each small batch of stained blood cells and overwrite the ImageNet
    running stats with them, so the frozen features would drift and differ between training and evaluation,
    and the head would learn on features it never sees at test time. The same holds for the random layers inside
    frozen blocks (EfficientNet's and ConvNeXt's stochastic depth would drop residual branches of a frozen block).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_channels = in_channels

    def train(self, mode: bool = True) -> TransferNet:
        """Set train/eval mode, except the backbone's frozen parts, which always stay in eval mode."""
        super().train(mode)
        _keep_frozen_parts_in_eval(self.backbone)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channel(s), got a tensor of shape {tuple(x.shape)}")
        if self.in_channels == 1:
            # Grayscale is repeated to RGB (a view, no copy) so the pretrained 3-channel stem still applies.
            x = x.expand(-1, 3, -1, -1)
        return self.head(self.backbone(x))


def _keep_frozen_parts_in_eval(module: nn.Module) -> None:
    """Put every frozen subtree of ``module`` (parameters, none trainable) in eval mode, whole.

    Whole subtrees, not single layers: the parameterless layers of a frozen block (stochastic depth, dropout) are
    frozen with it, while those of a trainable block keep training as their block does.
    """
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        else:
            _keep_frozen_parts_in_eval(child)


def _remove_classifier(backbone: nn.Module, path: str) -> int:
    """Replace the ImageNet classifier at dotted ``path`` by an identity; returns the feature count it took."""
    parent_path, _, name = path.rpartition(".")
    parent = backbone.get_submodule(parent_path)
    classifier = parent.get_submodule(name)
    features = [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1].in_features
    setattr(parent, name, nn.Identity())
    return features


def _build_transfer(
    arch: str,
    *,
    weights: WeightsArg = None,
    freeze: bool = True,
    unfreeze: int = 0,
    dropout: float = 0.2,
    dense: int = 128,
    in_channels: int = 3,
    image_size: int = 224,
    num_classes: int = 2,
) -> TransferNet:
    """A torchvision ``arch`` with its classifier replaced by the paper's head (always trainable).

    ``freeze`` freezes the whole backbone; ``unfreeze=N`` then makes its last N blocks trainable again.
    ``image_size`` only needs checking: the backbones end in adaptive average pooling.
    """
    spec = _ARCHS[arch]
    check_choice("freeze", freeze, (False, True))
    check_range("dropout", dropout, 0.0, 1.0, integer=False, high_inclusive=False)
    check_range("dense", dense, 1, 4096)
    check_choice("in_channels", in_channels, (1, 3))
    check_range("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    check_range("num_classes", num_classes, 2, 1000)

    # Imported here, not at the top: torchvision costs about a second per process (it loads torch._dynamo), and
    # every trial process imports this registry, CNN trials included.
    import torchvision.models

    backbone = getattr(torchvision.models, spec.factory)(weights=None)  # never let torchvision download; weights are loaded from disk below
    blocks = spec.blocks(backbone)
    check_range("unfreeze", unfreeze, 0, len(blocks))
    if unfreeze and not freeze:
        raise ValueError(f"{arch}: unfreeze={unfreeze} needs freeze=True (with freeze=False everything trains)")
    features = _remove_classifier(backbone, spec.classifier)
    load_backbone_weights(backbone, arch, weights, removed=spec.classifier)

    if freeze:
        backbone.requires_grad_(False)
        for block in blocks[len(blocks) - unfreeze :]:
            block.requires_grad_(True)
    head = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(features, dense),
        nn.ReLU(inplace=True),
        nn.Linear(dense, num_classes),
    )
    # train() here, not only in the training loop: a freshly built module is in train mode with its frozen
    # BatchNorm layers too, and a first forward before any train()/eval() call would update their stats.
    return TransferNet(backbone, head, in_channels).train()


def _transfer_builder(arch: str, default_image_size: int, doc: str) -> Callable[..., TransferNet]:
    """The registered builder of one backbone: the same keyword arguments for every one (the registry reads them,
    and `image_size`'s default, from the signature), differing only in the architecture and its native size."""

    def build(
        *,
        weights: WeightsArg = None,
        freeze: bool = True,
        unfreeze: int = 0,
        dropout: float = 0.2,
        dense: int = 128,
        in_channels: int = 3,
        image_size: int = default_image_size,
        num_classes: int = 2,
    ) -> TransferNet:
        return _build_transfer(
            arch, weights=weights, freeze=freeze, unfreeze=unfreeze, dropout=dropout, dense=dense,
            in_channels=in_channels, image_size=image_size, num_classes=num_classes,
        )  # fmt: skip

    build.__name__ = build.__qualname__ = f"build_{arch}"
    build.__doc__ = doc
    return register_model(arch, mean=IMAGENET_MEAN, std=IMAGENET_STD)(build)


build_resnet50 = _transfer_builder(
    "resnet50", 224, "ResNet-50 under the paper's head; ``unfreeze`` counts bottleneck blocks (0-16) from the top.")
build_mobilenet_v2 = _transfer_builder(
    "mobilenet_v2", 224,
    "MobileNetV2 under the paper's head; ``unfreeze`` counts ``features`` entries (0-19) from the top.")
build_efficientnet_b0 = _transfer_builder(
    "efficientnet_b0", 224,
    "EfficientNet-B0 under the paper's head; ``unfreeze`` counts blocks (0-18: stem, 16 MBConv, 1x1 conv).")
# B1 was trained (and its weights evaluated) at 240 px, B0 at 224.
build_efficientnet_b1 = _transfer_builder(
    "efficientnet_b1", 240,
    "EfficientNet-B1 under the paper's head; ``unfreeze`` counts blocks (0-25: stem, 23 MBConv, 1x1 conv).")
build_convnext_tiny = _transfer_builder(
    "convnext_tiny", 224,
    "ConvNeXt-Tiny under the paper's head; ``unfreeze`` counts blocks (0-23: stem, 18 CNBlocks, 3 downsamplings, "
    "the final LayerNorm) from the top.")
