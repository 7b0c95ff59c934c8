"""leukotune's wiring: data and models to Ray Train, Ray Tune, Optuna and MLflow, and the `leukotune` command.

Subpackages, by what happens there: `train/` (the one training loop, checkpoints, metrics, where it runs),
`tune/` (a study: plan, trainable, searcher and scheduler), `tracking/` (MLflow runs and artifacts),
`registry/` (promote, predict), `cluster/` (joining Ray, Ray Jobs, the MLflow server), `cli/` (the command).
`config.py` is the one schema of a study and `space.py` the search space; `preflight.py` checks both, the
storage, the weights and the data before Ray starts. docs/architecture.md has the map.
"""
