"""The model registry side: promote the best trial's model under an alias, and predict with a registered model."""
from .predict import load_model as load_model
from .predict import predict_files as predict_files
from .promote import promote as promote
