"""The paper's from-scratch CNN: stacked 3x3 conv + max-pool blocks, then a small dense head."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .registry import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_choice, check_range, register_model

__all__ = ["build_cnn"]

# Doubling per block is the usual VGG-style trade of resolution for channels; the cap keeps a 6-block
# network from reaching 1024 channels and tens of millions of parameters in its last conv.
MAX_FILTERS = 512
# Below 2x2 the last pool throws away most of the spatial layout the dense layer is meant to read.
MIN_FEATURE_MAP = 2


def _conv_block(in_ch: int, out_ch: int, kernel_size: int, batch_norm: bool) -> nn.Sequential:
    """conv ('same' padding, so only the pool shrinks the map) [+ BatchNorm] + ReLU + 2x2 max-pool."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size, padding="same", bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


def max_conv_layers(image_size: int) -> int:
    """The deepest CNN whose last pooled feature map is still at least MIN_FEATURE_MAP wide at this image size."""
    depth = 0
    while image_size // 2 ** (depth + 1) >= MIN_FEATURE_MAP:
        depth += 1
    return depth


def _check_depth(image_size: int, conv_layers: int) -> int:
    """Side of the last feature map; refuses a depth that pools it below MIN_FEATURE_MAP."""
    side = image_size // 2**conv_layers  # MaxPool2d(2) floors odd sides; repeated floor halving is one floor
    if conv_layers > max_conv_layers(image_size):
        raise ValueError(
            f"cnn: image_size={image_size} with conv_layers={conv_layers} pools the feature map to "
            f"{side}x{side}, below {MIN_FEATURE_MAP}x{MIN_FEATURE_MAP}; use fewer conv_layers or a larger image_size"
        )
    return side


@register_model("cnn")
def build_cnn(
    *,
    conv_layers: int = 5,
    kernel_size: int = 3,
    base_filters: int = 16,
    dropout: float = 0.2,
    dense: int = 128,
    batch_norm: bool = False,
    in_channels: int = 3,
    image_size: int = 256,
    num_classes: int = 2,
) -> nn.Sequential:
    """The paper's CNN; defaults are the paper's configuration (which had no BatchNorm).

    Block i has ``base_filters * 2**i`` filters (capped at 512). The flattened size is computed here rather
    than with ``nn.LazyLinear`` so the parameter count is known before the first forward pass.
    """
    check_range("conv_layers", conv_layers, 2, 6)
    check_choice("kernel_size", kernel_size, (3, 5, 7))
    check_range("base_filters", base_filters, 1, MAX_FILTERS)
    check_range("dropout", dropout, 0.0, 1.0, integer=False, high_inclusive=False)
    check_range("dense", dense, 1, 4096)
    check_choice("batch_norm", batch_norm, (False, True))
    check_choice("in_channels", in_channels, (1, 3))
    check_range("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    check_range("num_classes", num_classes, 2, 1000)
    side = _check_depth(image_size, conv_layers)

    filters = [min(base_filters * 2**i, MAX_FILTERS) for i in range(conv_layers)]
    widths = [in_channels, *filters]
    features = nn.Sequential(
        *(_conv_block(widths[i], widths[i + 1], kernel_size, batch_norm) for i in range(conv_layers))
    )
    head = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(filters[-1] * side * side, dense),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(dense, num_classes),
    )
    return nn.Sequential(OrderedDict(features=features, head=head))
