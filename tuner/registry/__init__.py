"""The model registry side: promote the best trial's model under an alias, with its model card. Predicting and
evaluating with a registered model live in `tuner/evaluation/`."""
from .promote import promote as promote
