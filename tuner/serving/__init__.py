"""Putting a trained model to work outside leukotune's own commands: the MLflow pyfunc that takes cell images
(`image_model.py`), which `mlflow models serve` serves and `mlflow.pyfunc.load_model` loads.
"""
from .image_model import IMAGE_COLUMN as IMAGE_COLUMN
from .image_model import OUTPUT_COLUMNS as OUTPUT_COLUMNS
from .image_model import CellImageModel as CellImageModel
from .image_model import UnusableImageModel as UnusableImageModel
from .image_model import load_image_model as load_image_model
from .image_model import save_image_model as save_image_model
