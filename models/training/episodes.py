"""Episodic sampling for open-set training.

Each step draws one source dataset, a few of its classes, and images holding those classes (plus
some defect-free ones). Exemplars come from the other images of the same episode, so the network
learns to match prompts to regions instead of memorising class identities: class indices are
re-numbered every episode and mean nothing across steps.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from models.data.records import DefectDataset, Instance


@dataclass(frozen=True)
class EpisodeConfig:
    batch_size: int = 8  # images per step
    max_classes: int = 3  # classes per episode (1..max)
    defect_free_share: float = 0.15  # expected share of defect-free images per step


@dataclass
class Episode:
    class_names: list[str]  # episode class index -> name
    images: list[np.ndarray]  # uint8 (H, W, 3)
    instances: list[list[Instance]]  # only instances of the episode's classes


class EpisodeSampler:
    """Draws episodes from weighted datasets; deterministic for a given seed."""

    def __init__(
        self, sources: list[tuple[DefectDataset, float]], cfg: EpisodeConfig, seed: int = 0
    ) -> None:
        self.sources = [s for s, _ in sources]
        w = np.array([w for _, w in sources], dtype=np.float64)
        self.weights = w / w.sum()
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.by_class: list[dict[str, list[int]]] = []
        self.free: list[list[int]] = []
        for ds in self.sources:
            index: dict[str, list[int]] = defaultdict(list)
            free = []
            for i, rec in enumerate(ds.records):
                for c in rec.classes:
                    index[c].append(i)
                if not rec.classes:
                    free.append(i)
            self.by_class.append(dict(index))
            self.free.append(free)

    def sample(self) -> Episode:
        k = int(self.rng.choice(len(self.sources), p=self.weights))
        ds, index = self.sources[k], self.by_class[k]
        names = sorted(index)
        n_cls = int(self.rng.integers(1, min(self.cfg.max_classes, len(names)) + 1))
        classes = [names[i] for i in self.rng.choice(len(names), n_cls, replace=False)]
        b = self.cfg.batch_size
        n_free = int(self.rng.binomial(b, self.cfg.defect_free_share)) if self.free[k] else 0
        n_free = min(n_free, b - 2 * n_cls) if b > 2 * n_cls else 0
        picks: list[int] = []
        for slot in range(b - n_free):
            pool = index[classes[slot % n_cls]]
            picks.append(int(pool[self.rng.integers(len(pool))]))
        picks += [int(i) for i in self.rng.choice(self.free[k], n_free)] if n_free else []
        images, instances = [], []
        for i in picks:
            image, inst = ds.load(ds.records[i])
            images.append(image)
            instances.append([x for x in inst if x.class_name in classes])
        return Episode(classes, images, instances)
