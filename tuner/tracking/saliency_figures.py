"""The saliency figures of a model (tuner/evaluation/saliency.py) and where they go in MLflow: the maps over their
cells, shown only when the model-randomisation check passed, and the check itself, always (on a failure it is the
evidence)."""
from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from leukotune.tuner.evaluation.saliency import SaliencyReport
from leukotune.tuner.tracking.artifacts import new_figure

MAPS_FIGURE = "saliency/gradcam_cells.png"
CHECK_FIGURE = "saliency/randomisation_check.png"
SUMMARY_FILE = "saliency/summary.json"
# Maps over the cell: see-through enough that the cell's outline and nucleus still show beneath.
OVERLAY_ALPHA = 0.45
COLORMAP = "jet"
PANEL_INCHES = 1.9


def maps_figure(report: SaliencyReport) -> Figure:
    """Each chosen cell as fed (top) and with its Grad-CAM map over it (bottom), titled with its true class, P(ALL)
    and the model's call. Refused for a report that failed its check: those maps explain nothing."""
    if not report.passed:
        raise ValueError(f"the saliency maps failed their sanity check and must not be shown: {report.reason}")
    n = len(report.cells)
    figure = _panels(2, n, f"Grad-CAM of the called class (layer {', '.join(report.layers)}); "
                           f"called ALL at P(ALL) >= {report.threshold:g}")
    for column, (cell, image, cam) in enumerate(zip(report.cells, report.images, report.maps)):
        top, bottom = _axes(figure, 2, n, 0, column), _axes(figure, 2, n, 1, column)
        _show_cell(top, image)
        names = report.class_names
        mark = "right" if cell.correct else "WRONG"
        top.set_title(f"true {names[cell.label]}\nP(ALL)={cell.prob_all:.2f}\ncalled {names[cell.called]} ({mark})",
                      fontsize=8, color="black" if cell.correct else "firebrick")
        _show_cell(bottom, image)
        if cam.max() > 0:
            bottom.imshow(cam, cmap=COLORMAP, alpha=OVERLAY_ALPHA, vmin=0.0, vmax=1.0)
        else:  # Grad-CAM keeps positive evidence only: none anywhere for the class the model called
            bottom.text(0.5, 0.06, "blank map: no positive\nevidence for the call", transform=bottom.transAxes,
                        ha="center", va="bottom", fontsize=7, color="white")
    return figure


def check_figure(report: SaliencyReport) -> Figure:
    """The model-randomisation check, cell by cell: the cell, its map from the trained network and from the
    randomised one, and their rank correlation; the verdict in the title."""
    n = max(1, len(report.cells))
    verdict = "PASSED" if report.passed else "FAILED"
    figure = _panels(3, n, f"model-randomisation check {verdict}: median rank correlation "
                           f"{report.median_correlation:.2f} (passes below {report.bound:g})")
    rows = ("cell", "trained", "randomised")
    for column, (image, cam, random_cam, rho) in enumerate(
            zip(report.images, report.maps, report.randomized_maps, report.correlations)):
        for row, picture in enumerate((None, cam, random_cam)):
            axes = _axes(figure, 3, n, row, column)
            if picture is None:
                _show_cell(axes, image)
                axes.set_title(f"rho = {rho:.2f}" if not np.isnan(rho) else "blank map", fontsize=9)
            else:
                axes.imshow(picture, cmap=COLORMAP, vmin=0.0, vmax=1.0)
            if column == 0:
                axes.set_ylabel(rows[row], fontsize=9)
    return figure


def log_saliency(tracker: Any, run_id: str, report: SaliencyReport) -> list[str]:
    """Log the check's figure and summary to `run_id`, and the maps' figure only when the check passed; returns
    the artifact paths written."""
    written = [CHECK_FIGURE, SUMMARY_FILE]
    tracker.log_figure(run_id, check_figure(report), CHECK_FIGURE)
    tracker.log_json(run_id, report.summary(), SUMMARY_FILE)
    if report.passed:
        tracker.log_figure(run_id, maps_figure(report), MAPS_FIGURE)
        written.append(MAPS_FIGURE)
    return written


def _panels(rows: int, columns: int, title: str) -> Figure:
    figure = new_figure(max(4.0, PANEL_INCHES * columns), PANEL_INCHES * rows + 0.9)
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.02, top=1 - 0.9 / (PANEL_INCHES * rows + 0.9),
                           wspace=0.08, hspace=0.35)
    return figure


def _axes(figure: Figure, rows: int, columns: int, row: int, column: int) -> Any:
    axes = figure.add_subplot(rows, columns, row * columns + column + 1)
    axes.set_xticks([])
    axes.set_yticks([])
    return axes


def _show_cell(axes: Any, image: np.ndarray) -> None:
    """A uint8 (C, H, W) cell as it was fed to the model (before normalisation), colour or grey."""
    if image.shape[0] == 1:
        axes.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        axes.imshow(np.transpose(image, (1, 2, 0)))
