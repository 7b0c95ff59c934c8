"""leukotune's data: read the C-NMC 2019 layout, check it, split it by subject, cache decoded images, and
preprocess them for a model (the same for training and serving: `preprocess.py`).

Only numpy, Pillow, torch, PyYAML and the standard library are used here (never ray or mlflow), so this package
is testable in a second and usable outside a cluster. The torch Dataset (`dataset.py`) loads on first use: reading
and checking a folder (`leukotune data check`) needs no torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .cache import CachedImages as CachedImages
from .cache import default_cache_dir as default_cache_dir
from .cache import load_cached_images as load_cached_images
from .check import CheckReport as CheckReport
from .check import check_dataset as check_dataset
from .check import format_report as format_report
from .cnmc import CLASS_NAMES as CLASS_NAMES
from .cnmc import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from .cnmc import LABELS as LABELS
from .cnmc import CellRecord as CellRecord
from .cnmc import Manifest as Manifest
from .cnmc import SkippedFile as SkippedFile
from .cnmc import load_manifest as load_manifest
from .cnmc import parse_cell_name as parse_cell_name
from .errors import DatasetError as DatasetError
from .errors import ImageError as ImageError
from .images import decode_image as decode_image
from .images import probe_image as probe_image
from .images import read_image as read_image
from .preprocess import AUGMENTATIONS as AUGMENTATIONS
from .preprocess import Normalization as Normalization
from .preprocess import augmentation_factor as augmentation_factor
from .preprocess import fit_image as fit_image
from .prepare import PreparedData as PreparedData
from .prepare import manifest_fingerprint as manifest_fingerprint
from .prepare import prepare_data as prepare_data
from .prepare import split_subjects as split_subjects
from .splits import SPLIT_METHODS as SPLIT_METHODS
from .splits import Split as Split
from .splits import split_records as split_records
from .synth import write_synthetic_dataset as write_synthetic_dataset

if TYPE_CHECKING:
    from .dataset import CellDataset as CellDataset
    from .dataset import channel_stats as channel_stats
    from .dataset import collate_batch as collate_batch

_LAZY = {"CellDataset": "dataset", "channel_stats": "dataset", "collate_batch": "dataset"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
