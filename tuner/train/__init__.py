"""Training: the one loop shared by `leukotune train` and every Tune trial, its checkpoints, metrics and sessions."""
from .checkpoints import BEST_FILE as BEST_FILE
from .checkpoints import STATE_FILE as STATE_FILE
from .checkpoints import CheckpointError as CheckpointError
from .checkpoints import read_checkpoint_file as read_checkpoint_file
from .data_source import prepare_study_data as prepare_study_data
from .data_source import resolve_data_root as resolve_data_root
from .loop import run_training as run_training
from .memory import estimate_trial_memory as estimate_trial_memory
from .pipeline import DeviceSplit as DeviceSplit
from .pipeline import resolve_pipeline as resolve_pipeline
from .ray_train import make_trainer as make_trainer
from .sessions import LocalSession as LocalSession
