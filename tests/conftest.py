"""Shared fixtures: the real C-NMC sample (when ../shared exists) and small synthetic datasets."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CNMC_SAMPLE = REPO_ROOT.parent / "shared" / "cnmc-sample"


@pytest.fixture(scope="session")
def cnmc_sample() -> Path:
    """The 60 real C-NMC cells shipped beside the checkout in ../shared (CI has it)."""
    if not (CNMC_SAMPLE / "training_data").is_dir():
        pytest.skip(f"real C-NMC sample not found at {CNMC_SAMPLE} (../shared is absent on this machine)")
    return CNMC_SAMPLE


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic C-NMC tree (6 subjects x 4 cells, real 450x450 BMPs), written once per test session."""
    from leukotune.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic_cnmc")
    write_synthetic_dataset(root, subjects=6, cells_per_subject=4, seed=0)
    return root
