"""GET /v1/namespaces/{namespace}/classes/{class_name}/self-check: does the model outline a class?

A QA engineer who teaches a new defect type needs to know, before the line relies on it, whether
the model can outline that kind of defect at all. The easiest case the model will ever meet is an
exemplar in the very image it was cut from, so the check inspects the class's prompt images with
every class of the namespace prompted (a detection must also name the right class, as on the line)
and reports, per exemplar, whether a detection of its class covers it at IoU 0.5 at any rankable
score (found) and at the class's threshold (caught). A class whose exemplars are not found there is
rarely found anywhere else: a held-out class the network never outlines re-finds 0-1 of its 5
exemplars, classes it does outline 2-5 (README, "Open-set"). The mean best IoU is the class's
outline, which decides whether it gets exemplar-matched proposals (`service/outline_gate.py`).
Nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from models.box_ops import best_overlaps
from prompt_store.records import ExemplarRecord
from service.deps import AdminRole, StateDep
from service.errors import Problem
from service.images import decode_image
from service.inference import InspectJob, InspectOutcome
from service.routes.inspect import plan_inspection
from service.routes.prompts import ClassName, Namespace, label
from service.schemas import ExemplarCheck, MaskFormat, SelfCheck, problem_responses
from service.state import AppState

router = APIRouter(prefix="/v1/namespaces", tags=["prompts"])

FOUND_IOU = 0.5  # the AP50 criterion
SCORE_FLOOR = 0.01  # any detection that could rank in AP50, as the evaluation counts it
MAX_IMAGES = 16  # prompt images inspected per check; the rest are counted, not checked


def _hits(
    outcome: InspectOutcome, class_name: str, exemplars: Sequence[ExemplarRecord], threshold: float
) -> list[ExemplarCheck]:
    """Each exemplar of one image against that image's detections of its class."""
    dets = [d for d in outcome.detections if d["class_name"] == class_name]
    truth = torch.tensor([list(e.region.box) for e in exemplars], dtype=torch.float32)
    boxes = torch.tensor([d["box"] for d in dets], dtype=torch.float32).reshape(-1, 4)
    best, at = best_overlaps(truth, boxes)
    out = []
    for e, iou_e, j in zip(exemplars, best.tolist(), at.tolist(), strict=True):
        score = float(dets[j]["score"]) if dets and iou_e > 0 else None
        found = iou_e >= FOUND_IOU
        out.append(
            ExemplarCheck(
                id=e.id,
                box=[float(v) for v in e.region.box],
                best_iou=round(iou_e, 4),
                score=score,
                found=found,
                caught=found and score is not None and score >= threshold,
            )
        )
    return out


def _verdict(found: int, caught: int, checked: int) -> tuple[str, str]:
    """What the counts mean for the line, and what to do about them."""
    if found == 0:
        return "not-outlined", (
            "The model outlines none of this class's exemplars even in their own images, so it "
            "will rarely find this defect on the line. Check that each box or mask covers the "
            "defect tightly; if they do, this kind of defect is beyond the model: register "
            "defect-free reference images (anomaly mode) to flag it as an unknown deviation."
        )
    if 2 * found < checked:
        return "partly-outlined", (
            f"The model outlines {found} of {checked} exemplars in their own images; the ones "
            "marked found=false are the kind it will miss. Check their boxes, or add more "
            "exemplars like them."
        )
    if caught < found:
        return "outlined", (
            f"The model outlines {found} of {checked} exemplars, {found - caught} of them below "
            "the threshold: a lower threshold for this class (class_thresholds) would catch "
            "them; measure false alarms on good parts before lowering it."
        )
    return "outlined", f"The model outlines {found} of {checked} exemplars at the threshold."


def _load_images(state: AppState, namespace: str, hashes: Sequence[str]) -> list[np.ndarray]:
    """The stored prompt images, decoded as an inspection would decode them."""
    settings, store = state.settings, state.store.store
    return [
        decode_image(
            store.get_source_image(namespace, h),
            settings.max_image_bytes,
            settings.max_image_pixels,
        ).rgb
        for h in hashes
    ]


@router.get(
    "/{namespace}/classes/{class_name}/self-check",
    response_model=SelfCheck,
    summary="Does the model find this class's exemplars in their own images?",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def self_check(
    state: StateDep,
    _role: AdminRole,
    namespace: Namespace,
    class_name: ClassName,
    score_threshold: Annotated[
        float | None,
        Query(gt=0, le=1, description="threshold `caught` is judged at (default: the service's)"),
    ] = None,
) -> SelfCheck:
    class_name = label(class_name, "class name")
    info = await run_in_threadpool(state.store.store.get_class, namespace, class_name)
    plan = await run_in_threadpool(plan_inspection, state, namespace, None, SCORE_FLOOR, {})
    if class_name not in plan.names:  # registered between the two reads
        raise Problem(409, "prompts-changing", "the class is being changed; try again")
    threshold = score_threshold if score_threshold is not None else state.default_threshold
    by_image: dict[str, list[ExemplarRecord]] = {}
    for rec in info.exemplars:
        by_image.setdefault(rec.image_hash, []).append(rec)
    hashes = list(by_image)[:MAX_IMAGES]
    images = await run_in_threadpool(_load_images, state, namespace, hashes)
    jobs = [
        InspectJob(
            image=image,
            prototypes=plan.prototypes,
            class_names=plan.names,
            thresholds=plan.thresholds,
            class_sides=plan.sides,
            class_crops=plan.crops,
            proposal_classes=tuple(False for _ in plan.names),  # the network alone is checked
            max_detections=state.settings.max_detections,
            mask_format=MaskFormat.none,
            heatmap=False,
        )
        for image in images
    ]
    size = state.settings.max_batch_size
    outcomes: list[InspectOutcome] = []
    for start in range(0, len(jobs), size):
        chunk = jobs[start : start + size]
        outcomes += await state.batcher.run_exclusive(state.inspector.run_batch, chunk)
    checks = [
        check
        for h, outcome in zip(hashes, outcomes, strict=True)
        for check in _hits(outcome, class_name, by_image[h], threshold)
    ]
    found, caught = sum(c.found for c in checks), sum(c.caught for c in checks)
    verdict, advice = _verdict(found, caught, len(checks))
    outline = float(np.mean([c.best_iou for c in checks])) if checks else 1.0
    gate = state.outlines
    proposals = gate is not None and outline < gate.gate
    weight = 1.0
    if proposals:
        assert gate is not None
        advice += (
            f" Inspections with a threshold at or below {gate.proposal_score:g} for this class "
            "also report regions that look like its exemplars (template matching), scored at "
            f"most {gate.proposal_score:g}."
        )
        weight = gate.weights(np.array([outline], np.float32), [0])[0]
        if weight < 1:
            advice += (
                f" Its own detections count {weight:.2f} of their score at any threshold, as "
                "much as the model outlines it."
            )
    return SelfCheck(
        namespace=namespace,
        class_name=class_name,
        version=plan.snapshot.version,
        threshold=threshold,
        total=len(info.exemplars),
        checked=len(checks),
        found=found,
        caught=caught,
        outline=round(outline, 4),
        template_proposals=proposals,
        detection_weight=round(weight, 4),
        verdict=verdict,  # type: ignore[arg-type]
        advice=advice,
        exemplars=checks,
    )
