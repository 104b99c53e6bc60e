"""The training loop: episodic batches, AdamW with warm-up and linear decay, periodic checkpoints,
resume after interruption. Runs the `small` preset on a CPU and the `paper` preset on a GPU alike.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.build import build_criterion, build_model
from models.checkpoint import save_model
from models.config import LossConfig, ModelConfig
from models.data.records import DefectDataset
from models.detector import UniSpector
from models.training.augment import AugmentConfig
from models.training.batch import build_batch
from models.training.episodes import EpisodeConfig, EpisodeSampler
from models.training.objective import episode_losses

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 4000  # optimisation steps (one episode each)
    lr: float = 2e-4  # AdamW learning rate of the new (non-backbone) parts
    backbone_lr_scale: float = 0.1  # the pretrained backbone moves slower
    weight_decay: float = 0.05  # paper C.4
    warmup: int = 100  # linear warm-up steps, then linear decay to 0 (paper C.4 schedule)
    grad_clip: float = 1.0  # max global gradient norm
    checkpoint_every: int = 100  # steps between resumable checkpoints
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda[:N]"
    max_regions: int = 48  # prompt regions encoded per step
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: UniSpector, cfg: TrainConfig) -> list[dict]:
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in model.backbone.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale},
        {"params": rest, "lr": cfg.lr},
    ]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    return max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup))


class Trainer:
    """Owns model, optimiser and sampler; `run()` trains to `cfg.steps`, resuming if it can."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        sources: list[tuple[DefectDataset, float]],
        out_dir: str | Path,
        data_description: list[dict] | None = None,
    ) -> None:
        self.model_cfg, self.cfg, self.out = model_cfg, cfg, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        self.model = build_model(model_cfg).to(self.device)
        self.criterion = build_criterion(cfg.loss, model_cfg)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg), weight_decay=cfg.weight_decay)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.sampler = EpisodeSampler(sources, cfg.episode, seed=cfg.seed)
        self.aug_rng = np.random.default_rng(cfg.seed + 1)
        self.step = 0
        self.history: list[dict] = []
        self.meta = {"train_config": asdict(cfg), "data": data_description or []}
        (self.out / "config.json").write_text(
            json.dumps({"model": model_cfg.to_dict(), **self.meta}, indent=2)
        )

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "aug_rng": self.aug_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)  # atomic: an interruption never leaves half a file

    def try_resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self.aug_rng.bit_generator.state = state["aug_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self.history = state["step"], state["history"]
        log.info("resumed", extra={"step": self.step, "path": str(self.checkpoint_path)})
        return True

    def train_step(self) -> dict[str, float]:
        self.model.train()
        for g, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * lr_factor(self.step, self.cfg)
        batch = build_batch(
            self.sampler.sample(),
            self.model_cfg.image_size,
            self.model_cfg.mask_stride,
            self.aug_rng,
            self.cfg.augment,
            self.cfg.max_regions,
        ).to(self.device)
        losses = episode_losses(self.model, self.criterion, batch, self.cfg.loss)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items() if "_" not in k}

    def run(self, progress: bool = True) -> Path:
        """Train to `cfg.steps`; returns the path of the final model file (`model.pt`)."""
        self.try_resume()
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, desc="train")
        t0, window = time.time(), []
        while self.step < self.cfg.steps:
            losses = self.train_step()
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {losses}")
            window.append(losses)
            bar.update(1)
            bar.set_postfix(loss=f"{losses['total']:.2f}")
            if self.step % 20 == 0 or self.step == self.cfg.steps:
                mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                self.history.append({"step": self.step, "time_s": time.time() - t0, **mean})
                window = []
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                self.save_checkpoint()
        bar.close()
        final = self.out / "model.pt"
        self.model.eval().cpu()
        save_model(
            self.model,
            self.model_cfg,
            final,
            {**self.meta, "steps": self.step, "history": self.history[-50:]},
        )
        return final
