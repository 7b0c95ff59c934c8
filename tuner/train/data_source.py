"""Where a study's images come from: a real C-NMC folder, or a synthetic stand-in generated once and reused."""
from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

from leukotune.data import PreparedData, default_cache_dir, prepare_data, write_synthetic_dataset
from leukotune.tuner.config import DataConfig, StudyConfig

SYNTH_VERSION = 1


def synthetic_root(data: DataConfig) -> Path:
    params = json.dumps({"v": SYNTH_VERSION, **data.synthetic.to_dict()}, sort_keys=True)
    key = hashlib.sha256(params.encode()).hexdigest()[:12]
    base = Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()
    return base / "synthetic" / key


def resolve_data_root(data: DataConfig) -> Path:
    """The dataset folder to read; synthetic data is written on first use (any node can, the output is seeded)."""
    if data.path:
        return Path(data.path).expanduser().resolve()
    root = synthetic_root(data)
    done = root / ".complete"
    if done.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    # Two trials starting together on one node must not write the same files at once.
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            synth = data.synthetic
            write_synthetic_dataset(root, subjects=synth.subjects, cells_per_subject=synth.cells_per_subject,
                                    seed=synth.seed)
            done.write_text("ok\n")
    return root


def prepare_study_data(study: StudyConfig) -> PreparedData:
    """The study's cells at its image size and colour, split into train/val/test: the one call the driver, every
    trial and the test evaluation make, so all see the same sides (training reads only train and val)."""
    data = study.data
    return prepare_data(resolve_data_root(data), size=study.train.image_size, color=study.train.color,
                        split=data.split, val_fraction=data.val_fraction, seed=data.seed, val_fold=data.val_fold,
                        cache_dir=data.cache_dir, test_fraction=data.test_fraction, cv_folds=data.cv_folds)
