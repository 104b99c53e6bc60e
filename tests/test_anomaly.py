"""The anomaly mode's maths and library: coresets, nearest neighbours, calibration, maps and
regions, the metrics (known answers and brute force), and a synthetic part end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.anomaly.coreset import covering_radius, kcenter_order
from models.anomaly.features import FeatureConfig, PatchFeatureExtractor, grid_valid
from models.anomaly.memory import (
    MemoryBank,
    Reference,
    budget,
    calibration_ids,
    leave_one_out_scores,
    threshold_from_scores,
)
from models.anomaly.scoring import anomaly_map, normalised, pixel_map, regions, unexplained
from models.evaluation.anomaly_metrics import aupro, auroc, average_precision, f1_max
from models.preprocess import Letterbox
from tests.anomaly_samples import SIZE, defective_part, good_part

points = arrays(
    np.float32,
    st.tuples(st.integers(1, 12), st.integers(1, 3)),
    elements=st.floats(-10, 10, width=32),
)


# ---- coreset ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(points, st.integers(0, 15))
def test_kcenter_is_bounded_distinct_and_prefix_consistent(x: np.ndarray, k: int) -> None:
    order = kcenter_order(x, k)
    assert len(order) <= min(k, len(x)) and len(set(order.tolist())) == len(order)
    for m in range(len(order) + 1):  # the first m centres are the greedy solution for m
        np.testing.assert_array_equal(kcenter_order(x, m), order[:m])
    if len(order) < min(k, len(x)):  # stopped early: every point is a centre's duplicate
        assert covering_radius(x, x[order]) == 0.0


@settings(max_examples=60, deadline=None)
@given(points, st.integers(1, 4))
def test_kcenter_covers_within_twice_the_optimal_radius(x: np.ndarray, k: int) -> None:
    order = kcenter_order(x, k)
    greedy = covering_radius(x, x[order])
    best = min(
        covering_radius(x, x[list(c)])
        for c in itertools.combinations(range(len(x)), min(k, len(x)))
    )
    assert greedy <= 2 * best + 1e-4
    radii = [covering_radius(x, x[order[:m]]) for m in range(1, len(order) + 1)]
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(radii))  # never worse with more


# ---- memory ------------------------------------------------------------------------------------


def _refs(n: int, rows: int, dim: int = 5, seed: int = 0) -> list[Reference]:
    rng = np.random.default_rng(seed)
    return [
        Reference(f"{i:032x}", rng.standard_normal((rows, dim)).astype(np.float16))
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [1, 3, 50, 400])
def test_memory_is_bounded_whatever_the_number_of_references(n: int) -> None:
    bank = MemoryBank.build(_refs(n, rows=30), max_patches=300)
    assert 0 < len(bank) <= 300
    assert len(bank) == min(n, 300) * budget(min(n, 300), 300, 30)
    assert bank.nbytes <= 300 * (5 * 4 + 8)


def test_nearest_is_zero_on_a_memory_patch_and_matches_brute_force() -> None:
    refs = _refs(6, rows=20, dim=7)
    bank = MemoryBank.build(refs, max_patches=1000)
    assert np.all(bank.nearest(bank.rows) == 0.0)  # exactly, not approximately
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((33, 7)).astype(np.float32) * 3
    brute = np.sqrt(((queries[:, None] - bank.rows[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(bank.nearest(queries), brute, rtol=1e-5, atol=1e-5)


def test_leave_one_out_masks_the_reference_itself() -> None:
    refs = _refs(4, rows=10)
    bank = MemoryBank.build(refs, max_patches=1000)
    scores = leave_one_out_scores(bank, refs)
    assert scores.shape == (4,) and np.all(scores > 0)  # its own rows would give 0
    alone = MemoryBank.build(refs[:1], max_patches=1000)
    assert leave_one_out_scores(alone, refs[:1]).size == 0  # nothing left to compare with
    assert threshold_from_scores(np.array([1.0, 2.0, 3.0]), 1.0) == 3.0
    assert threshold_from_scores(np.zeros(0), 0.99) is None
    assert calibration_ids(["c", "a", "b"], 2) == ["a", "b"]


# ---- maps and regions ---------------------------------------------------------------------------


def test_pixel_map_keeps_the_geometry_and_regions_filter_by_size() -> None:
    lb = Letterbox.fit(200, 100, 128)  # wide image: the bottom half of the letterbox is padding
    valid = grid_valid(lb)
    assert valid.shape == (16, 16) and valid[:8].all() and not valid[8:].any()
    scores = np.zeros((16, 16), np.float32)
    scores[3, 10] = 5.0  # one hot cell: about x 84..92, y 24..32 of the letterbox
    pix = pixel_map(scores, valid, lb, sigma=0.0)
    assert pix.shape == (100, 200)
    y, x = np.unravel_index(np.argmax(pix), pix.shape)
    assert abs(x - 10.5 * 8 / lb.scale) <= 8 and abs(y - 3.5 * 8 / lb.scale) <= 8
    found = regions(pix, 2.0)
    assert len(found) == 1 and found[0].peak == pytest.approx(pix.max())
    x0, y0, x1, y1 = found[0].box
    assert x0 <= x < x1 and y0 <= y < y1
    assert regions(pix, 2.0, min_fraction=0.5) == []  # the size filter
    assert normalised(2.0, 2.0) == pytest.approx(0.5) and normalised(0.0, 2.0) == 0.0
    inside = np.zeros_like(pix, bool)
    inside[:, :150] = True
    assert not unexplained(found[0].mask, inside, 0.5) and unexplained(found[0].mask, None, 0.5)


# ---- metrics ------------------------------------------------------------------------------------


def test_metrics_on_toy_inputs_with_known_answers() -> None:
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    assert np.isnan(auroc(np.ones(3), np.ones(3)))
    s, y = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])
    assert average_precision(s, y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert f1_max(s, y) == pytest.approx(0.8)
    # one image, one region of 2 pixels (scores 0.9 and 0.1) and 2 normal pixels (0.5, 0.2):
    # PRO reaches 0.5 at FPR 0 and stays there until FPR 1 -> normalised area 0.5
    score = np.array([[0.9, 0.1, 0.5, 0.2]])
    mask = np.array([[True, True, False, False]])
    assert aupro([score], [mask], 0.3) == pytest.approx(0.5)
    assert aupro([score], [mask], 1.0) == pytest.approx(0.5)
    perfect = np.where(mask, 1.0, 0.0)
    assert aupro([perfect], [mask]) == pytest.approx(1.0)
    assert aupro([1 - perfect], [mask]) == pytest.approx(0.0)
    # regions weigh the same whatever their size: the small region found at FPR 0 gives PRO 1/2,
    # the big one only with every pixel (FPR 1): the curve runs from (0, 0.5) to (1, 1), so at
    # FPR 0.3 it is 0.65 and the normalised area (0.5 + 0.65) / 2 = 0.575
    two = np.zeros((1, 12), bool)
    two[0, :1] = True  # small region, found
    two[0, 3:9] = True  # big region, missed
    hit = np.zeros((1, 12))
    hit[0, 0] = 1.0
    assert aupro([hit], [two], 0.3) == pytest.approx(0.575)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30))
def test_auroc_equals_the_pairwise_count(pairs: list[tuple[int, bool]]) -> None:
    s = np.array([p[0] for p in pairs], float)
    y = np.array([p[1] for p in pairs])
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        assert np.isnan(auroc(s, y))
        return
    wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    assert auroc(s, y) == pytest.approx(wins / (len(pos) * len(neg)))


# ---- the library end to end on a synthetic part ------------------------------------------------


@pytest.fixture(scope="module")
def extractor() -> PatchFeatureExtractor:
    torch.set_num_threads(1)
    return PatchFeatureExtractor.imagenet(FeatureConfig())


def test_extractor_grid_and_fingerprint(extractor: PatchFeatureExtractor) -> None:
    (grid,) = extractor.extract([good_part(0)[:, :96]])  # 128 x 96: a padded letterbox
    assert grid.features.shape == (40, 40, extractor.dim) and extractor.dim == 152
    assert grid.valid.sum() == 40 * 30
    again = extractor.extract([good_part(0)[:, :96]])[0]
    np.testing.assert_array_equal(grid.features, again.features)
    other = PatchFeatureExtractor.imagenet(FeatureConfig(pool=1))
    assert other.fingerprint != extractor.fingerprint
    assert PatchFeatureExtractor.imagenet(FeatureConfig()).fingerprint == (extractor.fingerprint)


def test_a_drawn_defect_is_flagged_and_located_with_good_references_only(
    extractor: PatchFeatureExtractor,
) -> None:
    grids = extractor.extract([good_part(seed) for seed in range(10)])
    refs = []
    for i, g in enumerate(grids):
        feats = g.valid_features
        refs.append(Reference(f"{i:032x}", feats[kcenter_order(feats, 100)].astype(np.float16)))
    bank = MemoryBank.build(refs, max_patches=2000)
    threshold = threshold_from_scores(leave_one_out_scores(bank, refs), 0.99)
    assert threshold is not None

    image, truth = defective_part(100)
    bad = anomaly_map(bank, extractor.extract([image])[0], sigma=4.0)
    good = anomaly_map(bank, extractor.extract([good_part(101)])[0], sigma=4.0)
    assert bad.image_score > threshold > good.image_score
    found = regions(bad.pixel_map, threshold, 0.001)
    assert found, "the defect made no region above the threshold"
    # located: the region covers the defect and its peak lies on it; it is wider than the defect
    # (patch features see a neighbourhood) but nowhere near the whole part
    assert (found[0].mask & truth).sum() > 0.5 * truth.sum()
    assert found[0].mask.sum() < 0.4 * SIZE * SIZE
    peak = np.unravel_index(np.argmax(np.where(found[0].mask, bad.pixel_map, 0)), truth.shape)
    ys, xs = np.nonzero(truth)
    assert ys.min() - 8 <= peak[0] <= ys.max() + 8 and xs.min() - 8 <= peak[1] <= xs.max() + 8
    assert regions(good.pixel_map, threshold, 0.001) == []
