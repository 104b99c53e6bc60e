"""The InsA evaluation run end to end: a briefly trained model clearly beats chance, and the
report carries the fields other tools read."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

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
    assert {"per_class", "mean", "false_alarm_rate"} <= set(report["baseline"])
    assert report["settings"]["prompts_per_class"] == 3
    assert len(report["runs"]) == 2
