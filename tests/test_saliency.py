"""Saliency: Grad-CAM checked by hand on a 2x2 feature map, its layer for every registered model, the cells it
explains, and the model-randomisation check passing for a trained network and failing for one whose map ignores its
weights."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from leukotune.models import FoldEnsemble, get_model, list_models
from leukotune.tuner.evaluation.inference import CLASS_NAMES, TrainedModel, probabilities
from leukotune.tuner.evaluation.saliency import (
    choose_cells,
    gradcam,
    randomized_copy,
    rank_correlation,
    saliency_report,
    target_layer,
)
from leukotune.tuner.tracking.saliency_figures import (
    CHECK_FIGURE,
    MAPS_FIGURE,
    SUMMARY_FILE,
    log_saliency,
    maps_figure,
)

SIZE = 64  # the registry's smallest image size
PREPROCESSING = {"image_size": SIZE, "color": "rgb", "mean": [0.5] * 3, "std": [0.25] * 3}


def trained_model(network: nn.Module) -> TrainedModel:
    return TrainedModel(network.eval(), dict(PREPROCESSING), list(CLASS_NAMES), "cnn", None)


# ---------------------------------------------------------------- Grad-CAM itself

def test_gradcam_of_a_2x2_feature_map_is_the_one_computed_by_hand():
    # The layer's output is the input itself (a 1x1 identity convolution): A0 = [[1, 2], [3, 4]], A1 = [[4, 0], [0, 1]].
    # The head averages each channel, so d logit_c / d A_k(i, j) = w_ck / 4 everywhere and Grad-CAM's channel weight
    # is alpha_ck = w_ck / 4. Class 0, w = (1, -2): ReLU(A0 / 4 - A1 / 2) = [[0, 0.5], [0.75, 0.5]].
    # Class 1, w = (0.5, 1): A0 / 8 + A1 / 4 = [[1.125, 0.25], [0.375, 0.75]].
    conv = nn.Conv2d(2, 2, 1, bias=False)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        head.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0]]))
    network = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 1.0]]]]).repeat(2, 1, 1, 1)
    assert target_layer(network) == "0"
    maps = gradcam(network, x, torch.tensor([0, 1]))
    assert torch.allclose(maps[0], torch.tensor([[0.0, 0.5], [0.75, 0.5]]))
    assert torch.allclose(maps[1], torch.tensor([[1.125, 0.25], [0.375, 0.75]]))


# The last convolutional stage of each registered architecture, as target_layer's one rule finds it. A model added
# to the registry fails here until someone has looked at which layer its maps come from.
EXPECTED_LAYERS = {"cnn": "features.2", "resnet50": "backbone.layer4", "mobilenet_v2": "backbone.features.18",
                   "efficientnet_b0": "backbone.features.8", "efficientnet_b1": "backbone.features.8",
                   "convnext_tiny": "backbone.features.7"}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_gives_finite_maps_of_the_image_size_from_its_last_stage(name):
    torch.manual_seed(0)
    kwargs = {"conv_layers": 3, "base_filters": 4, "dense": 8} if name == "cnn" else {"weights": None}
    network = get_model(name, image_size=64, **kwargs).eval()
    assert target_layer(network) == EXPECTED_LAYERS[name]
    maps = gradcam(network, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and (maps >= 0).all()


def test_an_ensemble_gives_one_map_per_cell_from_each_members_own_last_stage():
    torch.manual_seed(0)
    members = [get_model("cnn", conv_layers=2, base_filters=4, dense=8, image_size=SIZE) for _ in range(3)]
    model = trained_model(FoldEnsemble(members))
    images, labels = cells(6, seed=1)
    report = saliency_report(model, images, labels, probabilities(model, images))
    assert report.layers == ["members.0.features.1", "members.1.features.1", "members.2.features.1"]
    assert report.maps.shape == (len(report.cells), SIZE, SIZE) and np.isfinite(report.maps).all()
    assert report.maps.max() <= 1.0 and report.randomized_maps.shape == report.maps.shape


# ---------------------------------------------------------------- which cells

@pytest.mark.parametrize("threshold, per_group, expected", [
    # called ALL at 0.5: [ALL, ALL, hem, hem, ALL, hem]; right ALL 0 (0.9) and 1 (0.6), wrong ALL 2, right hem 3
    # (sure of hem at 0.9) then 5 (0.55), wrong hem 4.
    (0.5, 2, [0, 1, 2, 3, 5, 4]),
    (0.5, 1, [0, 2, 3, 4]),
    # at 0.65 cell 1 is called hem: of the two wrong ALL cells, 2 (sure of hem at 0.8) comes before 1 (0.4).
    (0.65, 2, [0, 2, 1, 3, 5, 4]),
])
def test_cells_are_the_surest_of_each_class_right_and_wrong(threshold, per_group, expected):
    labels = np.array([1, 1, 1, 0, 0, 0])
    prob_all = np.array([0.9, 0.6, 0.2, 0.1, 0.7, 0.45])
    chosen = choose_cells(labels, prob_all, threshold, per_group)
    assert [c.index for c in chosen] == expected
    assert all(c.called == int(prob_all[c.index] >= threshold) and c.label == labels[c.index] for c in chosen)


def test_cells_of_equal_confidence_are_taken_in_index_order():
    chosen = choose_cells(np.array([1, 1, 1]), np.array([0.8, 0.9, 0.9]), 0.5, per_group=2)
    assert [c.index for c in chosen] == [1, 2]


# ---------------------------------------------------------------- the check's parts

def test_rank_correlation_is_spearmans_with_tied_ranks_and_says_when_a_map_is_blank():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(8, 8)), 0)  # a ReLU'd map: many tied zeros
    b = np.maximum(a + rng.normal(scale=0.5, size=(8, 8)), 0)
    assert rank_correlation(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    assert rank_correlation(a, a * 3) == pytest.approx(1.0)
    assert np.isnan(rank_correlation(np.zeros((4, 4)), a[:4, :4]))
    assert rank_correlation(a, np.zeros((8, 8))) == 0.0


def test_the_randomised_copy_changes_every_parameter_and_leaves_the_network_and_the_seed_alone():
    torch.manual_seed(0)
    network = get_model("cnn", conv_layers=2, base_filters=4, dense=8, image_size=SIZE, batch_norm=True)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.37)  # as if trained: nothing like the initial values
    before = {k: v.clone() for k, v in network.state_dict().items()}
    state = torch.random.get_rng_state()
    copy_a, copy_b = randomized_copy(network, seed=1), randomized_copy(network, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, param), random_param in zip(network.named_parameters(), copy_a.parameters()):
        assert not torch.equal(param, random_param), name
        assert torch.equal(param, before[name])
    assert all(torch.equal(a, b) for a, b in zip(copy_a.state_dict().values(), copy_b.state_dict().values()))
    assert not copy_a.training


# ---------------------------------------------------------------- the check, whole

def cells(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (count, 3, SIZE, SIZE) cells: a dim disc on black, with a bright 10x10 spot somewhere on it for ALL."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE * 0.42) ** 2) * 90.0
    images = np.empty((count, 3, SIZE, SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        picture = disc + rng.normal(0, 12, size=(SIZE, SIZE))
        if label:
            top, left = rng.integers(14, SIZE - 24, size=2)
            picture[top:top + 10, left:left + 10] += 150
        images[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return images, labels


def spot_mask(image: np.ndarray) -> np.ndarray:
    return image[0] > 190


@pytest.fixture(scope="module")
def spot_detector() -> TrainedModel:
    """The paper's CNN, small, trained for a few seconds to call ALL on the bright spot."""
    torch.manual_seed(0)
    network = get_model("cnn", conv_layers=2, base_filters=4, dense=16, dropout=0.0, image_size=SIZE)
    model = trained_model(network)
    images, labels = cells(256, seed=0)
    inputs = (torch.from_numpy(images).float() / 255 - 0.5) / 0.25
    targets = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    network.train()
    for step in range(40):
        batch = torch.arange(step * 32, step * 32 + 32) % len(images)
        loss = F.cross_entropy(network(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()
    return model


def test_a_trained_network_passes_the_check_and_its_maps_sit_on_the_spot(spot_detector):
    images, labels = cells(24, seed=7)
    prob_all = probabilities(spot_detector, images)
    assert ((prob_all >= 0.5) == labels).mean() > 0.9  # it learned the task
    report = saliency_report(spot_detector, images, labels, prob_all)
    assert report.passed, report.reason
    assert report.median_correlation < 0.5 and "depend on what the network learned" in report.reason
    assert report.maps.shape == (len(report.cells), SIZE, SIZE) and np.isfinite(report.maps).all()
    for cell, image, cam in zip(report.cells, report.images, report.maps):
        if cell.label == 1 and cell.correct:  # the evidence for ALL is where the spot is
            assert cam[spot_mask(image)].mean() > 2 * cam[~spot_mask(image)].mean()
    summary = report.summary()
    assert summary["passed"] and len(summary["cells"]) == len(report.cells)
    tracker = RecordingTracker()
    assert log_saliency(tracker, "run", report) == [CHECK_FIGURE, SUMMARY_FILE, MAPS_FIGURE] == tracker.logged


class FixedBoxFilter(nn.Conv2d):
    """A 3x3 box filter over the channels that re-initialises to itself: its output, the local brightness, is
    the same whatever is drawn."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, 1, 3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, 1.0 / self.weight.numel())


class PositiveHead(nn.Module):
    """Each class's score a positive multiple of the one pooled feature (softplus of its weight): Grad-CAM's channel
    weight never changes sign, so the map's ranking is the brightness's, for any weights."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.3, 2.0]))
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.weight) * pooled + self.bias


class RecordingTracker:
    """Tracker's two calls that log_saliency makes; each figure is drawn to a PNG, as MLflow would."""

    def __init__(self) -> None:
        self.logged: list[str] = []

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        figure.savefig(io.BytesIO(), format="png")
        self.logged.append(artifact_file)

    def log_json(self, run_id: str, payload, artifact_file: str) -> None:
        self.logged.append(artifact_file)


def test_maps_that_ignore_the_weights_fail_the_check_and_are_never_shown():
    network = nn.Sequential(FixedBoxFilter(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), PositiveHead())
    model = trained_model(network)
    images, labels = cells(8, seed=3)
    report = saliency_report(model, images, labels, probabilities(model, images))
    assert not report.passed
    assert report.median_correlation == pytest.approx(1.0) and "no map is shown" in report.reason
    with pytest.raises(ValueError, match="failed their sanity check"):
        maps_figure(report)
    tracker = RecordingTracker()
    assert log_saliency(tracker, "run", report) == [CHECK_FIGURE, SUMMARY_FILE] == tracker.logged


def test_images_at_another_size_than_the_models_are_refused(spot_detector):
    images, labels = cells(4, seed=0)
    with pytest.raises(ValueError, match="trained on 64x64"):
        saliency_report(spot_detector, images[:, :, :16, :16], labels, np.full(4, 0.5))
