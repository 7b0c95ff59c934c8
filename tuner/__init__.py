"""leukotune's wiring: data and models to Ray Train, Ray Tune, Optuna and MLflow, and the `leukotune` command.

Subpackages, by what happens there: `train/` (the one training loop, checkpoints, where it runs), `tune/` (a study:
plan, search space, searcher and scheduler, trainable, console), `tracking/` (MLflow runs and artifacts),
`evaluation/` (judging a trained model: inference, the test side, predict, evaluate), `registry/` (promote and the
model card), `serving/` (the logged model as MLflow serves it: a pyfunc that takes cell images), `cluster/` (the
cluster's shape, a trial's resources, storage, Ray Jobs, the MLflow server), `cli/` (the command). `config.py` is
the one schema of a study; `preflight.py` checks the storage, the weights and the data before Ray starts;
`process.py` sets each entry point's process state; `compat.py` holds other libraries' private names.
docs/architecture.md has the map.
"""
