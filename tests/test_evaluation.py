"""The InsA evaluation run end to end: a briefly trained model clearly beats chance, and the
report carries the fields other tools read."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tiny import TinySet

REPO = Path(__file__).resolve().parents[1]


def write_folder(ds: TinySet, root: Path) -> None:
    for rec in ds.records:
        image, inst = ds.load(rec)
        folder = root / (rec.classes[0] if rec.classes else "Free")
        folder.mkdir(parents=True, exist_ok=True)
        mask = sum((x.mask.astype("uint8") for x in inst), start=image[..., 0] * 0)
        cv2.imwrite(str(folder / f"{rec.image_id}.jpg"), image[..., ::-1])
        cv2.imwrite(str(folder / f"{rec.image_id}.png"), (mask > 0).astype("uint8") * 255)


@pytest.mark.slow
def test_evaluate_script_reports_ap_beating_chance(tiny_run, tmp_path):
    data = tmp_path / "data"
    write_folder(TinySet(24, seed=7, free=6), data)
    out = tmp_path / "report.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/evaluate.py"),
            "--data",
            str(data),
            "--out",
            str(out),
            "--model",
            str(tiny_run.model_path),
            "--prompts-per-class",
            "3",
            "--seeds",
            "42",
            "82",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    assert set(report["per_class"]) == {"scratch", "spot"}
    assert {"ap50_box", "ap50_mask", "images"} <= set(report["per_class"]["spot"])
    assert report["mean"]["ap50_box"] > 30  # chance is near 0 for boxes on 128 px images
    assert 0 <= report["false_alarm_rate"] <= 1 and report["images_per_s"] > 0
    assert 0 <= report["false_alarm_rate_outside_calibration"] <= 1
    assert {"per_class", "mean", "false_alarm_rate"} <= set(report["baseline"])
    assert report["settings"]["prompts_per_class"] == 3
    assert len(report["runs"]) == 2


@pytest.mark.slow
def test_baseline_scored_alone_equals_the_baseline_beside_a_model(tiny_run, tmp_path):
    """open_set.py caches the baseline per split and reuses it across models: that is only sound
    if the baseline scored alone is exactly the one scored beside a model on the same split."""
    from models.data.loading import load_dataset
    from models.evaluation.runner import EvalSettings, evaluate, evaluate_baseline
    from models.predictor import TorchPredictor

    write_folder(TinySet(16, seed=11, free=4), tmp_path / "data")
    ds = load_dataset(str(tmp_path / "data"))
    settings = EvalSettings(prompts_per_class=2, seeds=(42,), classes=("spot",))
    joint = evaluate(TorchPredictor.load(tiny_run.model_path), ds, settings, progress=False)
    alone = evaluate_baseline(ds, settings, progress=False)
    assert alone["mean"] == joint["baseline"]["mean"]
    assert alone["runs"][0]["prompts"] == joint["runs"][0]["prompts"]

    def scores(run: dict) -> dict:  # everything but the timing
        return {k: v for k, v in run["baseline"].items() if k != "images_per_s"}

    assert scores(alone["runs"][0]) == scores(joint["runs"][0])
    assert "model" not in alone["runs"][0]


@pytest.mark.slow
def test_the_report_says_which_classes_the_gate_weighs_and_by_how_much(tiny_run, tmp_path):
    """A model file with gated proposals and a class it cannot outline (plain surface marked as a
    defect): each seed's report names every class's outline, the classes that get proposals and
    the factor on their own detections, as the service uses them."""
    import shutil

    from models.checkpoint import set_scoring
    from models.data.loading import load_dataset
    from models.evaluation.runner import EvalSettings, evaluate
    from models.predictor import TorchPredictor

    gate = 0.4
    path = tmp_path / "gated.pt"
    shutil.copy(tiny_run.model_path, path)
    set_scoring(path, template_proposal_score=0.2, proposal_gate_iou=gate)
    data = tmp_path / "data"
    tiny = TinySet(16, seed=11, free=4)
    write_folder(tiny, data)
    (data / "blank").mkdir()
    for k in range(4):  # plain surface with a region marked: nothing the network ever outlines
        image = np.full((128, 128, 3), 90 + 10 * k, np.uint8)
        mask = np.zeros((128, 128), np.uint8)
        mask[30:70, 40:90] = 255
        cv2.imwrite(str(data / "blank" / f"blank{k}.jpg"), image)
        cv2.imwrite(str(data / "blank" / f"blank{k}.png"), mask)
    ds = load_dataset(str(data))
    settings = EvalSettings(prompts_per_class=2, seeds=(42,), baseline=False)
    model = evaluate(TorchPredictor.load(path), ds, settings, progress=False)["runs"][0]["model"]
    assert set(model["outline"]) == {"blank", "scratch", "spot"}
    assert model["outline"]["blank"] < gate / 2 <= model["outline"]["scratch"]
    assert model["proposals_for"] == [c for c, v in model["outline"].items() if v < gate]
    assert "blank" in model["detection_weights"], "the class it cannot outline is weighted down"
    for name, weight in model["detection_weights"].items():
        assert weight == pytest.approx(min(1.0, model["outline"][name] / (gate / 2)), abs=1e-3)
    unweighted = set(model["outline"]) - set(model["detection_weights"])
    assert all(model["outline"][c] >= gate / 2 for c in unweighted)


def test_best_iou_counts_only_detections_of_the_exemplars_class():
    from models.outline_gate import best_ious
    from models.postprocess import Detections

    exemplars = np.array([[10, 10, 30, 30], [50, 50, 60, 70]], dtype=np.float32)
    det = Detections(
        class_index=np.array([1, 0, 0]),
        scores=np.array([0.9, 0.5, 0.2], dtype=np.float32),
        boxes=np.array([[50, 50, 60, 70], [10, 10, 30, 30], [12, 10, 32, 30]], np.float32),
        masks=None,
    )
    assert best_ious(det, 0, exemplars) == pytest.approx([1.0, 0.0])  # class 1's box not counted
    assert best_ious(det, 1, exemplars) == pytest.approx([0.0, 1.0])
    assert best_ious(det, 2, exemplars).tolist() == [0.0, 0.0]


@pytest.mark.slow
def test_exemplar_recall_script_finds_the_prompts_a_trained_model_outlines(tiny_run, tmp_path):
    data = tmp_path / "data"
    write_folder(TinySet(24, seed=5, free=2), data)  # 12 per class: K = 3
    out = tmp_path / "recall.json"
    cmd = [sys.executable, str(REPO / "scripts/exemplar_recall.py"), "--data", str(data)]
    cmd += ["--model", str(tiny_run.model_path), "--prompts-per-class", "3", "--seeds", "42"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())["seeds"]["42"]
    assert set(found) == {"scratch", "spot"}
    for name, row in found.items():
        assert row["total"] == 3 and len(row["best_iou"]) == 3
        assert row["found"] >= 1, (name, row)
        assert f"seed 42  {name}: {row['found']} of 3" in done.stdout
    # the tiny model scores AP50 > 30 on queries of these classes; its own prompts are easier
    assert sum(row["found"] for row in found.values()) >= 3, found
    bad = subprocess.run(
        [*cmd, "--classes", "crack"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert bad.returncode == 2 and "crack" in bad.stderr and "scratch" in bad.stderr


def _strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_a_dataset_without_good_parts_gives_strict_json_with_null_false_alarms(tiny_run, tmp_path):
    """NEU-Seg-like data (no defect-free image) has no false-alarm rate: the report says null,
    not a bare NaN that jq or a JavaScript dashboard would refuse."""
    write_folder(TinySet(16, seed=5), tmp_path / "data")
    out = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/evaluate.py"),
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--model",
            str(tiny_run.model_path),
            "--prompts-per-class",
            "2",
            "--seeds",
            "42",
            "--no-baseline",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = _strict(out.read_text())
    assert report["false_alarm_rate"] is None and report["mean"]["ap50_box"] >= 0
    assert _strict(done.stdout)["false_alarm_rate"] is None


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=10,
    )
)
def test_report_json_is_strict_and_keeps_every_finite_number(value):
    from models.evaluation.report_json import report_json

    back = _strict(report_json({"x": value, "n": np.float32(0.5)}))
    assert back["n"] == 0.5

    def same(a, b):
        if isinstance(a, float) and not np.isfinite(a):
            return b is None
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a == b

    assert same(value, back["x"])
