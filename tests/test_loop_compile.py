"""train.compile: every value the schema accepts means one mode of the loop; the loop compiles the model as the
session wrapped it (after DDP), and a trial's end releases compiled state, since Tune reuses trial processes.

Compiling for real takes minutes on this CPU (BENCHMARKS.md); here `nn.Module.compile` and `torch.compiler.reset`
record their calls, and the GPU check (bench/gpu_bench.py) runs the real CUDA graphs.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from leukotune.tuner.config import ConfigError, load_study
from leukotune.tuner.train.loop import COMPILE_MODES, run_training
from leukotune.tuner.train.sessions import LocalSession

from conftest import SMOKE


@pytest.mark.parametrize("value,mode", [("false", None), ("true", "default"), ("default", "default"),
                                        ("reduce-overhead", "reduce-overhead")])
def test_each_accepted_value_is_one_compile_mode(value, mode):
    assert COMPILE_MODES[load_study(SMOKE, [f"train.compile={value}"]).train.compile] == mode


def test_an_unknown_compile_mode_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError, match=r"train\.compile='max-autotune'.*false, true, default, reduce-overhead"):
        load_study(SMOKE, ["train.compile=max-autotune"])


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the trained module is `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class WrappingSession(LocalSession):
    def prepare_model(self, model: nn.Module) -> nn.Module:
        return Wrapper(model)


@pytest.mark.parametrize("setting,compiles", [("reduce-overhead", [("Wrapper", "reduce-overhead")]), ("false", [])])
def test_the_wrapped_model_is_compiled_and_released_at_the_trials_end(tmp_path, monkeypatch, setting, compiles):
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    calls, resets = [], []
    monkeypatch.setattr(nn.Module, "compile", lambda self, mode=None: calls.append((type(self).__name__, mode)))
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(True))
    study = load_study(SMOKE, ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10", "train.epochs=1",
                               "train.batch_size=16", f"train.compile={setting}"])
    session = WrappingSession(use_gpu="false")
    run_training(study, session, log=lambda _m: None)
    assert calls == compiles and resets == [True] * len(compiles)
    assert [r["epoch"] for r in session.reports] == [1]
