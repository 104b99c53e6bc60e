"""Saving and loading models with their config and fingerprint.

A model file holds everything needed to rebuild the network (config + weights) and a fingerprint:
the sha256 of the config and every weight. Prompt embeddings are only meaningful for the weights
that made them, so the prompt store and the exported graphs carry this fingerprint and refuse to
mix models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.build import build_model
from models.config import ModelConfig
from models.detector import UniSpector

FORMAT = "unispector-model/1"
# Parameters of the ImageNet classifier head: needed only to load the backbone strictly.
_UNUSED_PREFIXES = ("backbone._conv_head.", "backbone._bn1.", "backbone._fc.")


@dataclass
class ModelFile:
    model: UniSpector
    config: ModelConfig
    fingerprint: str
    meta: dict = field(default_factory=dict)  # training config, data, metrics...


def deployable_state(model: UniSpector) -> dict[str, torch.Tensor]:
    """The weights inference needs (the unused classifier head left out)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(_UNUSED_PREFIXES)}


def fingerprint(config: ModelConfig | dict, state: dict[str, torch.Tensor]) -> str:
    """sha256 of the config (as written in the file) and every weight."""
    data = config.to_dict() if isinstance(config, ModelConfig) else config
    h = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_model(
    model: UniSpector, config: ModelConfig, path: str | Path, meta: dict | None = None
) -> str:
    """Write a model file atomically (temp file + rename); returns the fingerprint."""
    state = {k: v.detach().cpu().clone() for k, v in deployable_state(model).items()}
    fp = fingerprint(config, state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "config": config.to_dict(),
        "state_dict": state,
        "fingerprint": fp,
        "meta": meta or {},
    }
    _write_atomic(blob, path)
    return fp


def load_model(path: str | Path, verify: bool = True) -> ModelFile:
    """Rebuild the network from a model file; a corrupt or foreign file raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbage files
        raise ValueError(f"model file {path} is unreadable or corrupt: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    try:
        config = ModelConfig.from_dict(blob["config"])
        # The stored dict, not the rebuilt config: a file written before a config field existed
        # keeps its fingerprint (ModelConfig.from_dict fills the field with its legacy value).
        matches = (
            not verify or fingerprint(blob["config"], blob["state_dict"]) == blob["fingerprint"]
        )
    except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong kind
        raise ValueError(f"model file {path} is incomplete or malformed: {exc!r}") from exc
    if not matches:
        raise ValueError(f"model file {path} fails its fingerprint check (corrupt or edited)")
    model = build_model(config, pretrained=False)
    try:
        missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    except RuntimeError as exc:  # tensor shapes of another configuration
        first = str(exc).splitlines()[:3]
        raise ValueError(
            f"model file {path} does not match its config (weights of another model): "
            + " ".join(line.strip() for line in first)
        ) from exc
    missing = [k for k in missing if not k.startswith(_UNUSED_PREFIXES)]
    if missing or unexpected:
        raise ValueError(
            f"model file {path} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.eval()
    return ModelFile(model, config, blob["fingerprint"], blob.get("meta", {}))


def update_meta(path: str | Path, **values) -> None:
    """Add or replace metadata entries of a model file (atomically; weights untouched)."""
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["meta"] = {**blob.get("meta", {}), **values}
    _write_atomic(blob, path)


SCORING_FIELDS = (
    "relevance_score_weight",
    "background_weight",
    "size_prior_sigma",
    "mask_hull_min_fill",
    "mask_score_weight",
    "template_match_weight",
    "template_proposal_score",
    "proposal_gate_iou",
    "border_factor",
    "prompt_views",
    "image_views",
)


def set_scoring(path: str | Path, **fields: float | int) -> str:
    """Rewrite a model file's inference scoring (`SCORING_FIELDS` of its config), atomically and
    with the weights untouched. Returns the new fingerprint.

    The scoring is part of the config, so the fingerprint changes with it; the stored score
    threshold is dropped because it was calibrated for the old scores (recalibrate after this).
    """
    unknown = set(fields) - set(SCORING_FIELDS)
    if unknown:
        raise ValueError(f"not scoring fields: {sorted(unknown)}; choose from {SCORING_FIELDS}")
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = ModelConfig.from_dict({**blob["config"], **fields})
    blob["config"] = config.to_dict()
    blob["fingerprint"] = fingerprint(config, blob["state_dict"])
    blob["meta"] = {k: v for k, v in blob.get("meta", {}).items() if k != "score_threshold"}
    _write_atomic(blob, path)
    return blob["fingerprint"]


def _write_atomic(blob: dict, path: Path) -> None:
    """Temp file + rename: an interruption never leaves half a model file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
