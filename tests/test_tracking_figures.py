"""Every figure leukotune writes to MLflow keeps its text inside the picture, and says what it shows.

Each figure is drawn on matplotlib's Agg canvas; every text artist that was actually drawn (titles, tick labels,
axis labels, legends, annotations) must have its window extent inside the figure's bounds.
"""
from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere: no display on CI

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text as mtext  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from leukotune.tuner.tracking.artifacts import confusion_figure, curves_figure  # noqa: E402
from leukotune.tuner.tracking.parent_run import optuna_figures  # noqa: E402

METRIC = "val_f1_weighted"
TRIAL = "trial-7f3c2_00011"


def drawn_texts(figure: Figure, monkeypatch: pytest.MonkeyPatch) -> list[mtext.Text]:
    """The text artists matplotlib really draws (tick labels outside the view are never drawn, so never counted)."""
    drawn: list[mtext.Text] = []
    draw = mtext.Text.draw

    def recording_draw(self, renderer):
        drawn.append(self)
        return draw(self, renderer)

    with monkeypatch.context() as patch:
        patch.setattr(mtext.Text, "draw", recording_draw)
        figure.canvas.draw()
    return [t for t in drawn if t.get_visible() and t.get_text().strip()]


def texts_outside(figure: Figure, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`'label' [x0, y0, x1, y1]` for every drawn text whose box leaves the canvas (half a pixel of slack)."""
    renderer = figure.canvas.get_renderer()
    width, height = figure.bbox.width, figure.bbox.height
    outside = []
    for text in drawn_texts(figure, monkeypatch):
        box = text.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            outside.append(f"{text.get_text()!r} {[round(v) for v in box.extents]} (canvas {width:.0f}x{height:.0f})")
    return outside


def history(epochs: int) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": 0.9 / e, "val_loss": 1.0 / e, "train_accuracy": 0.5 + e / 20,
             "val_accuracy": 0.5 + e / 25, METRIC: 0.5 + e / 30} for e in range(1, epochs + 1)]


def paper_like_study(trials: int = 10) -> optuna.Study:
    """An in-memory Optuna study over the paper's knobs, long parameter names included."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("model", ["cnn", "resnet50", "mobilenet_v2"])
        layers = trial.suggest_int("conv_layers", 2, 6)
        kernel = trial.suggest_categorical("kernel_size", [3, 5, 7])
        lr = trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        trial.suggest_categorical("optimizer", ["rmsprop", "adam", "sgd"])
        trial.suggest_float("dropout", 0.0, 0.5)
        trial.suggest_categorical("augment", ["none", "rot90", "rot90_flip"])
        trial.suggest_categorical("image_size", [64, 128, 224, 256])
        return 0.1 * layers + 0.01 * kernel + 0.01 * np.log10(lr)

    study.optimize(objective, n_trials=trials)
    return study


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("counts", [[[3, 1], [2, 9]], [[12345, 678], [90, 123456]]])
def test_confusion_matrix_keeps_its_labels_inside_and_names_trial_split_epoch(counts, monkeypatch):
    figure = confusion_figure(np.array(counts), f"{TRIAL}\nval split, best epoch 3")
    assert texts_outside(figure, monkeypatch) == []
    title = figure.axes[0].get_title()
    assert TRIAL in title and "val split" in title and "epoch 3" in title


@pytest.mark.parametrize("epochs", [1, 12])
def test_learning_curves_keep_their_labels_inside_and_name_trial_and_sides(epochs, monkeypatch):
    figure = curves_figure(history(epochs), METRIC, f"{TRIAL}: learning curves")
    assert texts_outside(figure, monkeypatch) == []
    assert TRIAL in figure.get_suptitle()
    assert [ax.get_title() for ax in figure.axes] == ["loss per epoch (train, val)",
                                                       f"accuracy and {METRIC} per epoch"]


def test_optuna_plots_keep_long_parameter_names_inside(monkeypatch):
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    figures = optuna_figures(paper_like_study(), METRIC, log=lambda _msg: None)
    assert set(figures) == {"optimization_history", "parallel_coordinate", "param_importances"}
    for name, figure in figures.items():
        assert texts_outside(figure, monkeypatch) == [], name
        labels = {t.get_text() for t in drawn_texts(figure, monkeypatch)}
        # The parameter names appear whole (Optuna's default canvas cut them to `onv_layers`, `ernel_size`).
        if name != "optimization_history":
            assert {"conv_layers", "kernel_size"} <= labels, (name, sorted(labels))
        assert any(METRIC in label for label in labels), (name, sorted(labels))


def test_the_check_catches_a_cut_label(monkeypatch):
    """The check itself can fail: Optuna's own figure, not laid out, loses its parameter names at the edge."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    axes = optuna.visualization.matplotlib.plot_param_importances(paper_like_study())
    assert texts_outside(axes.figure, monkeypatch)


@pytest.mark.parametrize(("epochs", "plots"), [(1, {"confusion_matrix.png"}),
                                                (3, {"confusion_matrix.png", "learning_curves.png"})])
def test_a_trial_gets_learning_curves_from_its_second_epoch_on(tmp_path, epochs, plots):
    """Every trial's run gets its confusion matrix; a curve needs two points, so a one-epoch trial (one stopped at
    ASHA's first rung, or a study of one-epoch trials) gets no learning-curves picture: one drawing saved per
    such trial, about 0.05 s of the driver's CPU that running trials would otherwise lose."""
    from leukotune.tuner.tracking import Tracker
    from leukotune.tuner.tracking.artifacts import log_trial_artifacts
    from leukotune.tuner.train.checkpoints import write_checkpoint

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "figures", log=lambda _msg: None)
    run_id = tracker.create_run(TRIAL, {})
    metrics = {"val_cm_true_hem_pred_hem": 3, "val_cm_true_all_pred_all": 9, METRIC: 0.8}
    best = {"epoch": epochs, "metrics": metrics, "preprocessing": {"image_size": 64}, "config": {"seed": 0}}
    write_checkpoint(tmp_path / "checkpoint", {"epoch": epochs, "history": history(epochs)}, best)
    log_trial_artifacts(tracker, run_id, tmp_path / "checkpoint", METRIC)
    logged = {a.path.removeprefix("plots/") for a in tracker.client.list_artifacts(run_id, "plots")}
    assert logged == plots
    assert {a.path for a in tracker.client.list_artifacts(run_id)} >= {"best_epoch.json", "config", "plots"}
