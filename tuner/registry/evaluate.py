"""Moved to tuner/evaluation/evaluate.py; re-exported until tuner/cli/ imports it there."""
from leukotune.tuner.evaluation.evaluate import evaluate_folder as evaluate_folder
from leukotune.tuner.evaluation.evaluate import format_report as format_report
from leukotune.tuner.evaluation.evaluate import json_safe as json_safe
