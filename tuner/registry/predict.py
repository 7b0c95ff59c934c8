"""Moved to tuner/evaluation/ (logged_models.py, predict.py); re-exported until tuner/cli/ imports them there."""
from leukotune.tuner.evaluation.logged_models import check_model_uri as check_model_uri
from leukotune.tuner.evaluation.logged_models import describe_version as describe_version
from leukotune.tuner.evaluation.logged_models import load_model as load_model
from leukotune.tuner.evaluation.predict import format_table as format_table
from leukotune.tuner.evaluation.predict import list_images as list_images
from leukotune.tuner.evaluation.predict import predict_files as predict_files
