"""scripts/train.py is the whole recipe of a default model: it trains, then calibrates the default
threshold on the first dataset's defect-free images, unless it has none or a class is held out."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_evaluation import write_folder
from tests.tiny import TinySet

REPO = Path(__file__).resolve().parents[1]


def _train(data: Path, out: Path, *extra: str) -> list[dict]:
    """Two training steps of the `small` preset; the script's JSON events."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/train.py"),
            "--out",
            str(out),
            "--data",
            str(data),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--synthetic",
            "0",
            "--threads",
            "1",
            *extra,
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _meta(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


@pytest.mark.slow
def test_training_ends_with_a_calibrated_threshold(tmp_path):
    write_folder(TinySet(8, seed=3, free=24), tmp_path / "data")
    events = _train(tmp_path / "data", tmp_path / "run")
    calibrated = next(e for e in events if e["event"] == "calibrated")
    meta = _meta(tmp_path / "run" / "model.pt")
    assert meta["score_threshold"] == calibrated["score_threshold"]
    assert 0 < meta["score_threshold"] <= 1.0001
    calibration = meta["calibration"]
    assert calibration["images"] > 0 and calibration["seeds"] == [42, 82, 777]
    # the threshold sits above the scores of all but the target share of the good parts
    assert meta["score_threshold"] > calibration["score_quantiles"][0.9]


@pytest.mark.slow
def test_without_good_parts_or_with_a_class_held_out_the_threshold_stays_unset(tmp_path):
    write_folder(TinySet(8, seed=3), tmp_path / "defects")
    events = _train(tmp_path / "defects", tmp_path / "run")
    skipped = next(e for e in events if e["event"] == "calibration skipped")
    assert "scripts/calibrate.py" in skipped["why"]
    assert "score_threshold" not in _meta(tmp_path / "run" / "model.pt")

    write_folder(TinySet(8, seed=3, free=24), tmp_path / "data")
    events = _train(tmp_path / "data", tmp_path / "split", "--holdout-seed", "42")
    assert not any(e["event"].startswith("calibrat") for e in events)
    assert "score_threshold" not in _meta(tmp_path / "split" / "model.pt")
