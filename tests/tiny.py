"""A tiny synthetic task and a tiny model trained on it, shared by the training and evaluation
tests (trained once per test session: a few hundred CPU steps)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from models.build import build_model
from models.checkpoint import save_model
from models.config import get_preset
from models.data.records import Instance, Record
from models.data.synthetic import render_defect_image
from models.predictor import TorchPredictor
from models.training.augment import AugmentConfig
from models.training.episodes import EpisodeConfig
from models.training.trainer import TrainConfig, Trainer

SIZE = 128
CLASSES = ("scratch", "spot")
TINY = get_preset(
    "small",
    image_size=SIZE,
    embed_dim=64,
    ffn_dim=128,
    num_queries=12,
    num_decoder_layers=2,
    spectrum_bins=32,
    spectrum_crop=32,
    # its fixed threshold (0.3) is for unchecked scores, its scratches lie at any angle, which
    # the exemplar check's four turns do not cover, and its small images put many defects at the
    # border; the check and the border prior have their own tests (test_template_match.py,
    # test_exemplar_crops.py, test_border_prior.py) and run in test_deploy's default model
    template_match_weight=0.0,
    template_proposal_score=0.0,
    border_factor=1.0,
    # two image views, not the default four: the suite's many inspections stay quick, and this
    # barely trained model's boxes sit near IoU 0.5, where which view lends the box decides a
    # hit; four views run in test_view_fusion and in test_deploy's default model
    image_views=2,
)
TINY_RANDOM = replace(TINY, pretrained=False)  # for tests that need shapes, not ImageNet weights


def random_tiny_predictor(path: Path, **fields) -> TorchPredictor:
    """A seeded, untrained TINY_RANDOM model with `fields` changed, saved to `path` and loaded
    the way the service loads a model file (one thread, threshold 0.3)."""
    torch.manual_seed(0)
    cfg = replace(TINY_RANDOM, **fields)
    save_model(build_model(cfg).eval(), cfg, path, {"score_threshold": 0.3})
    return TorchPredictor.load(path, threads=1)


@dataclass
class TinySet:
    """One defect per image on a plain surface, alternating classes; rendered once, cached."""

    n: int
    seed: int
    free: int = 0  # defect-free images appended after the defect images
    name: str = "tiny"
    records: list[Record] = field(init=False)
    class_names: list[str] = field(default_factory=lambda: sorted(CLASSES))

    def __post_init__(self) -> None:
        self.records = [Record(str(i), (CLASSES[i % 2],), SIZE, SIZE) for i in range(self.n)]
        self.records += [Record(str(self.n + i), (), SIZE, SIZE) for i in range(self.free)]
        self._cache: dict[str, tuple[np.ndarray, list[Instance]]] = {}

    def load(self, record: Record) -> tuple[np.ndarray, list[Instance]]:
        if record.image_id not in self._cache:
            rng = np.random.default_rng(self.seed * 1000 + int(record.image_id))
            self._cache[record.image_id] = render_defect_image(
                rng, (SIZE, SIZE), record.classes, 1 if record.classes else 0, "plain"
            )
        return self._cache[record.image_id]


@dataclass
class TinyRun:
    model_path: Path
    losses: list[float]


def train_tiny(out_dir: Path, steps: int = 500) -> TinyRun:
    torch.set_num_threads(1)  # a fixed reduction order keeps the run reproducible
    cfg = TrainConfig(
        steps=steps,
        lr=5e-4,
        warmup=20,
        checkpoint_every=10**6,
        seed=0,
        episode=EpisodeConfig(batch_size=4, max_classes=2, defect_free_share=0.0),
        augment=AugmentConfig(free_rotation=0.0),
    )
    trainer = Trainer(TINY, cfg, [(TinySet(40, seed=0), 1.0)], out_dir)
    losses = [trainer.train_step()["total"] for _ in range(cfg.steps)]
    path = out_dir / "tiny.pt"
    save_model(trainer.model.eval(), TINY, path, {"score_threshold": 0.3})
    torch.set_num_threads(torch.get_num_interop_threads())
    return TinyRun(path, losses)
