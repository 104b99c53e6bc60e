"""Training sources: held-out classes and the evaluated line's good parts stay out of training."""

from __future__ import annotations

from pathlib import Path

from models.data.synthetic import SYNTHETIC_CLASSES, SyntheticDataset, write_folder_dataset
from models.training.sources import open_sources


def _folder(tmp_path: Path) -> str:
    root = tmp_path / "folder"
    synthetic = SyntheticDataset(60, seed=3, size=(64, 64), classes=("pit", "scratch"))
    write_folder_dataset(synthetic, root, 60)
    return str(root)


def test_good_parts_of_real_data_are_kept_on_request(tmp_path: Path) -> None:
    real = open_sources([_folder(tmp_path)], 0, 0.5, 0, 64, real_defect_free=True)[0][0][0]
    assert any(not r.classes for r in real.records)


def test_good_parts_of_real_data_stay_out_by_default(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    full = open_sources([folder], 0, 0.5, 0, 64, real_defect_free=True)[0][0][0]
    sources, described = open_sources([folder], 30, 0.5, 0, 64)
    real, synthetic = sources[0][0], sources[1][0]
    assert real.records and all(r.classes for r in real.records)
    assert len(real.records) == sum(bool(r.classes) for r in full.records)
    assert described[0]["images"] == len(real.records) and "defect-free" in described[0]["name"]
    assert any(not r.classes for r in synthetic.records)  # synthetic negatives stay


def test_held_out_class_and_good_parts_leave_together(tmp_path: Path) -> None:
    sources, _ = open_sources([_folder(tmp_path)], 0, 0.5, 0, 64, frozenset({"scratch"}))
    real = sources[0][0]
    assert real.class_names == ["pit"]
    assert {r.classes for r in real.records} == {("pit",)}


def test_a_held_out_class_takes_its_synthetic_namesake_with_it(tmp_path: Path) -> None:
    """Holding out the real Fray must not leave the generator's frayed borders in training."""
    sources, described = open_sources([_folder(tmp_path)], 40, 0.5, 0, 64, frozenset({"Fray"}))
    synthetic = sources[-1][0]
    assert "fray" not in synthetic.class_names and "fray" not in described[-1]["classes"]
    assert not any("fray" in r.classes for r in synthetic.records)
    assert set(synthetic.classes) == set(SYNTHETIC_CLASSES) - {"fray"}  # every other kind stays
    full = open_sources([_folder(tmp_path)], 40, 0.5, 0, 64)[0][-1][0]
    assert set(full.classes) == set(SYNTHETIC_CLASSES)
