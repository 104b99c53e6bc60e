"""Training data sources from command-line specs, and class hold-out for open-set runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.loading import load_dataset
from models.data.records import DefectDataset, Instance, Record


@dataclass
class WithoutClasses:
    """A dataset view without every image that shows one of `excluded` (the unseen classes must
    not appear in training at all, not even as unlabelled background) and, with
    `drop_defect_free`, without its defect-free images (those the evaluation uses as good parts)."""

    inner: DefectDataset
    excluded: frozenset[str]
    drop_defect_free: bool = False

    def __post_init__(self) -> None:
        parts = ["without", *sorted(self.excluded)] if self.excluded else []
        parts += ["defect-free"] if self.drop_defect_free else []
        self.name = "-".join([self.inner.name, *parts]) if parts else self.inner.name
        self.records = [
            r
            for r in self.inner.records
            if not set(r.classes) & self.excluded and (r.classes or not self.drop_defect_free)
        ]
        self.class_names = [c for c in self.inner.class_names if c not in self.excluded]

    def load(self, record: Record) -> tuple[np.ndarray, list[Instance]]:
        return self.inner.load(record)


def parse_source(spec: str) -> tuple[str, float]:
    """ "PATH" or "PATH@WEIGHT" -> (path, weight)."""
    path, _, weight = spec.partition("@")
    return path, float(weight) if weight else 1.0


def synthetic_kinds(exclude: frozenset[str]) -> list[str]:
    """The synthetic defect kinds a run may train on: every kind but the namesakes of held-out
    classes (case-insensitive). The generator's `fray` was drawn after looking at the real
    magnetic-tile frays, so training on it would make a held-out Fray partly seen; a kind named
    like a held-out class is left out on that presumption."""
    from models.data.synthetic import SYNTHETIC_CLASSES

    held = {name.casefold() for name in exclude}
    return [kind for kind in SYNTHETIC_CLASSES if kind.casefold() not in held]


def open_sources(
    specs: list[str],
    synthetic_images: int,
    synthetic_weight: float,
    seed: int,
    image_size: int,
    exclude: frozenset[str] = frozenset(),
    cutpaste_images: int = 0,
    cutpaste_weight: float = 0.5,
    real_defect_free: bool = False,
) -> tuple[list[tuple[DefectDataset, float]], list[dict]]:
    """Open every source; returns (dataset, weight) pairs and a JSON-able description of them.

    The real datasets' defect-free images are left out unless `real_defect_free` (the synthetic
    ones stay): an evaluation counts false alarms on a dataset's good parts, and those must be
    parts the model never saw, as on a new line. With them in training, the open-set AP50 on
    magnetic tiles looked far better than it is (held-out Fray 18.8 against 9.8 box).

    With `cutpaste_images` > 0, CutPaste defects (`models/data/cutpaste.py`) made from the images of
    the opened datasets (held-out classes already removed) are one more source.
    """
    from models.data.cutpaste import CutPasteDataset
    from models.data.synthetic import SyntheticDataset

    sources: list[tuple[DefectDataset, float]] = []
    for spec in specs:
        path, weight = parse_source(spec)
        ds = load_dataset(path)
        dropped = exclude & set(ds.class_names)
        if dropped or not real_defect_free:
            ds = WithoutClasses(ds, frozenset(dropped), drop_defect_free=not real_defect_free)
        sources.append((ds, weight))
    if cutpaste_images > 0:
        if not sources:
            raise ValueError("CutPaste images need at least one real dataset to cut from")
        bases = [ds for ds, _ in sources]
        sources.append((CutPasteDataset(bases, cutpaste_images, seed=seed), cutpaste_weight))
    if synthetic_images > 0:
        kinds = synthetic_kinds(exclude)
        syn = SyntheticDataset(
            synthetic_images, seed=seed, size=(image_size, image_size), classes=kinds
        )
        sources.append((syn, synthetic_weight))
    described = [
        {"name": ds.name, "weight": w, "images": len(ds.records), "classes": ds.class_names}
        for ds, w in sources
    ]
    return sources, described
