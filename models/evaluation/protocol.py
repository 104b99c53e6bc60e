"""The InsA exemplar protocol: which images are prompts and which are queries.

UniSpector, Appendix A.2: k prompt images per class (k counts images, not instances), drawn only
from images that show that class alone so a prompt never carries another class's cues; k = 1 for
tail classes (fewer than 10 images) so the prompt-to-target ratio stays sane; every other relevant
image is a query. Results are averaged over seeds 42, 82 and 777.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from models.data.records import Record

logger = logging.getLogger(__name__)

EVALUATION_SEEDS = (42, 82, 777)
CALIBRATION_SHARE = 0.3  # of the defect-free images: where default thresholds are calibrated


def is_calibration_image(image_id: str, share: float = CALIBRATION_SHARE) -> bool:
    """Stable membership of the calibration share (independent of order and seeds), so a
    threshold is always set on the same good parts and the rest stay unseen by it."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


@dataclass
class PromptSplit:
    """Prompt images per class and the query images they are evaluated on (disjoint)."""

    prompts: dict[str, list[str]]  # class -> image_ids used as prompts
    queries: list[str]  # image_ids, in the order of the records given


def _prompt_count(records: Sequence[Record], class_name: str, k: int, tail_threshold: int) -> int:
    """k, or 1 for a tail class (fewer than `tail_threshold` images contain it)."""
    total = sum(class_name in record.classes for record in records)
    return 1 if total < tail_threshold else k


def draw_prompts(
    rng: np.random.Generator, records: Sequence[Record], class_name: str, count: int
) -> list[str]:
    """`count` single-class images of `class_name`, drawn from a list sorted by id (stable)."""
    candidates = sorted(r.image_id for r in records if r.classes == (class_name,))
    if not candidates:
        raise ValueError(
            f"class {class_name!r} has no image that shows it alone, so it cannot be prompted"
        )
    if len(candidates) < count:
        logger.warning(
            "class %r: only %d single-class images for %d prompts",
            class_name,
            len(candidates),
            count,
        )
        count = len(candidates)
    picked = rng.choice(len(candidates), size=count, replace=False)
    return [candidates[i] for i in sorted(picked)]


def split_prompts(
    records: Sequence[Record],
    classes: Iterable[str],
    k: int = 5,
    seed: int = 42,
    tail_threshold: int = 10,
) -> PromptSplit:
    """Prompts for each evaluated class, and the queries: the remaining images that contain an
    evaluated class or no defect at all (images of non-evaluated classes only are left out).

    Classes are visited in sorted order with one generator, so the split depends only on the
    records, the class set, k and the seed.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    evaluated = sorted(set(classes))
    rng = np.random.default_rng(seed)
    prompts = {
        name: draw_prompts(rng, records, name, _prompt_count(records, name, k, tail_threshold))
        for name in evaluated
    }
    taken = {image_id for ids in prompts.values() for image_id in ids}
    wanted = set(evaluated)
    queries = [
        r.image_id
        for r in records
        if r.image_id not in taken and (not r.classes or wanted.intersection(r.classes))
    ]
    return PromptSplit(prompts=prompts, queries=queries)


def holdout_class(class_names: Iterable[str], seed: int) -> str:
    """The class kept out of training for a class-split seed (deterministic for a class set)."""
    names = sorted(set(class_names))
    if not names:
        raise ValueError("holdout_class needs at least one class")
    return str(np.random.default_rng(seed).choice(names))
