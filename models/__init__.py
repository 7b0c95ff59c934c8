"""leukotune's networks: a registry of builders (the paper's CNN and ImageNet backbones) and optimisers.

Importing the package registers every model. Only torch, torchvision and the standard library are used here.
"""
from . import cnn as cnn  # noqa: F401  (registers "cnn")
from . import transfer as transfer  # noqa: F401  (registers resnet50, mobilenet_v2, efficientnet_b0/b1, convnext_tiny)
from .cnn import build_cnn as build_cnn
from .ensemble import FoldEnsemble as FoldEnsemble
from .optim import UnknownOptimizerError as UnknownOptimizerError
from .optim import build_optimizer as build_optimizer
from .optim import list_optimizers as list_optimizers
from .optim import optimizer_state_values as optimizer_state_values
from .registry import MAX_IMAGE_SIZE as MAX_IMAGE_SIZE
from .registry import MIN_IMAGE_SIZE as MIN_IMAGE_SIZE
from .registry import ModelSpec as ModelSpec
from .registry import UnknownModelError as UnknownModelError
from .registry import get_model as get_model
from .registry import get_model_spec as get_model_spec
from .registry import list_models as list_models
from .registry import rebuild_network as rebuild_network
from .registry import register_model as register_model
from .registry import validate_model_kwargs as validate_model_kwargs
from .transfer import TransferNet as TransferNet
from .weights import WeightsDownloadError as WeightsDownloadError
from .weights import WeightsFileError as WeightsFileError
from .weights import WeightsNotFoundError as WeightsNotFoundError
from .weights import default_weights_dir as default_weights_dir
from .weights import fetch_imagenet_weights as fetch_imagenet_weights
from .weights import imagenet_archs as imagenet_archs
from .weights import imagenet_weights as imagenet_weights
from .weights import resolve_weights_path as resolve_weights_path
