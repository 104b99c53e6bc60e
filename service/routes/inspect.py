"""POST /v1/inspect: an image in, detections and a verdict out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from models.size_prior import log_sides
from prompt_store.errors import InvalidInput
from prompt_store.records import PrototypeSnapshot, validate_label
from service.anomaly import NamespaceMemory
from service.batching import Arrival
from service.deps import InspectRole, StateDep
from service.errors import Problem
from service.images import DecodedImage, decode_image, heatmap_png_base64
from service.inference import InspectJob, InspectOutcome
from service.outline_gate import OutlineGate
from service.schemas import (
    NAMESPACE_PATTERN,
    AnomalyInfo,
    ImageInfo,
    InspectionResult,
    MaskFormat,
    ModelInfo,
    PromptsInfo,
    problem_responses,
)
from service.state import AppState

log = logging.getLogger(__name__)

router = APIRouter(tags=["inspection"])

_THRESHOLDS_HELP = 'class_thresholds must be a JSON object like {"scratch": 0.4}'
_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image: a multipart upload in the field `image`, or the raw bytes as "
        "the body (JPEG, PNG, BMP or TIFF; 8 or 16 bit; grey or colour).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def read_image_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a multipart (`image` field) or raw-body request."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=4, max_fields=32)
        try:
            upload = form.get("image")
            if upload is None:
                raise Problem(422, "missing-image", "the multipart form has no 'image' file field")
            if not isinstance(upload, UploadFile):
                raise Problem(422, "missing-image", "the 'image' form field must be a file upload")
            data = await upload.read(max_bytes + 1)
        finally:
            await form.close()
    else:  # any other content type is the raw image (curl --data-binary says urlencoded)
        data = await request.body()
    if len(data) > max_bytes:
        raise Problem(413, "image-too-large", f"the image exceeds the limit of {max_bytes} bytes")
    return data


def _parse_class_thresholds(text: str | None) -> dict[str, float]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(
            422,
            "invalid-thresholds",
            f'class_thresholds must be a JSON object like {{"scratch": 0.4}} ({exc.msg})',
        ) from exc
    if not isinstance(value, dict):
        raise Problem(
            422,
            "invalid-thresholds",
            'class_thresholds must be a JSON object like {"scratch": 0.4}',
        )
    out = {}
    for name, thr in value.items():
        if isinstance(thr, bool) or not isinstance(thr, int | float) or not 0 < thr <= 1:
            raise Problem(
                422, "invalid-thresholds", f"threshold of class {name!r} must be a number in (0, 1]"
            )
        out[name] = float(thr)
    return out


@dataclass(frozen=True)
class InspectionPlan:
    """What an inspection runs against, read from the namespace's snapshot."""

    snapshot: Any
    names: tuple[str, ...]
    prototypes: np.ndarray  # (C, d)
    thresholds: np.ndarray  # (C,)
    sides: tuple[np.ndarray, ...] | None  # the size prior's input: log sides of exemplar boxes
    crops: tuple[tuple[Any, ...], ...] | None  # the template check's input: exemplar crops
    degraded: bool


def plan_inspection(
    state: AppState,
    namespace: str,
    classes: list[str] | None,
    score_threshold: float | None,
    class_thresholds: dict[str, float],
) -> InspectionPlan:
    """Snapshot, class subset, prototypes, per-class thresholds, exemplar sizes and exemplar
    crops, or a clear 4xx."""
    cached = state.cache.get(namespace)
    snap = cached.snapshot
    index = {name: i for i, name in enumerate(snap.class_names)}
    wanted = list(dict.fromkeys(classes)) if classes else list(snap.class_names)
    for name in list(wanted) + list(class_thresholds):
        try:
            validate_label(name, "class name")
        except InvalidInput as exc:
            raise Problem(422, "invalid-class-name", str(exc)) from exc
        if name not in index:
            raise Problem(
                404,
                "unknown-class",
                f"class {name!r} does not exist in namespace {namespace!r} "
                f"(classes: {', '.join(snap.class_names)})",
            )
    extra = set(class_thresholds) - set(wanted)
    if extra:
        raise Problem(
            422,
            "invalid-thresholds",
            f"class_thresholds names classes outside the requested subset: {sorted(extra)}",
        )
    rows = np.array([index[name] for name in wanted], dtype=np.int64)
    default = score_threshold if score_threshold is not None else state.default_threshold
    thresholds = np.array([class_thresholds.get(n, default) for n in wanted], dtype=np.float32)
    prototypes = np.ascontiguousarray(snap.matrix[rows])
    boxes = snap.exemplar_boxes
    sides = tuple(log_sides(boxes[i]) for i in rows) if boxes is not None else None
    crops = state.crops.crops(snap, rows.tolist()) if state.crops is not None else None
    return InspectionPlan(
        snap, tuple(wanted), prototypes, thresholds, sides, crops, cached.degraded
    )


Proposals = tuple[tuple[bool, ...], tuple[float, ...]]


async def outline_decision(state: AppState, plan: InspectionPlan) -> Proposals | None:
    """Which requested classes get exemplar-matched proposals and the factor on each one's
    network detections (`service/outline_gate.py`); None when the model makes no gated proposals,
    or while the outlines are computed for an inspection that does not wait for them."""
    gate = state.outlines
    if gate is None:
        return None
    snap = plan.snapshot
    outlines = gate.cached(snap)
    if outlines is None:
        task = gate.flight(snap, lambda: _outlines(state, gate, snap))
        if not gate.needed(plan.thresholds):  # a line inspection does not wait
            return None
        try:
            outlines = await asyncio.shield(task)
        except Exception:  # never fail an inspection over a search aid (logged by the gate)
            return tuple(False for _ in plan.names), tuple(1.0 for _ in plan.names)
    index = {name: i for i, name in enumerate(snap.class_names)}
    requested = [index[name] for name in plan.names]
    return gate.classes(outlines, requested), gate.weights(outlines, requested)


async def _outlines(state: AppState, gate: OutlineGate, snap: PrototypeSnapshot) -> np.ndarray:
    rows = list(range(len(snap.class_names)))
    crops = None
    if state.crops is not None:
        crops = await run_in_threadpool(state.crops.crops, snap, rows)
    return await gate.compute(state.batcher.run_exclusive, state.inspector.predictor, snap, crops)


@dataclass
class InspectOptions:
    """The query parameters of an inspection."""

    namespace: Annotated[
        str,
        Query(
            pattern=NAMESPACE_PATTERN,
            description="the product or line whose defect classes to look for",
            examples=["line-7"],
        ),
    ]
    classes: Annotated[
        list[str] | None,
        Query(description="only these classes (repeat the parameter); default: all"),
    ] = None
    score_threshold: Annotated[
        float | None,
        Query(gt=0, le=1, description="threshold for every class (default: the service's)"),
    ] = None
    class_thresholds: Annotated[
        str | None,
        Query(
            description='per-class thresholds as a JSON object, e.g. {"scratch": 0.4}',
            examples=['{"scratch": 0.4}'],
        ),
    ] = None
    max_detections: Annotated[int | None, Query(ge=1, le=1000)] = None
    mask_format: Annotated[MaskFormat, Query(description="rle, polygon or none")] = MaskFormat.rle
    heatmap: Annotated[
        bool,
        Query(
            description="also return the heatmap sum_i s_i m_i over the prompted and unknown "
            "detections as a PNG"
        ),
    ] = False
    anomaly_map: Annotated[
        bool,
        Query(description="also return the pixel anomaly map (namespaces with references)"),
    ] = False


async def _anomaly_memory(state: AppState, namespace: str) -> tuple[NamespaceMemory | None, str]:
    """The namespace's anomaly memory and status. A held memory is used even when stale (it is
    refreshed in the background, never on the model thread); only a namespace with none held yet
    is built on the model thread."""
    if state.anomaly is None:
        return None, "disabled"
    cached = state.anomaly.serve(namespace)
    if cached is None:
        cached = await state.batcher.run_exclusive(state.anomaly.get, namespace)
    if cached.memory is None:
        return None, "unavailable"
    return cached.memory, cached.memory.status


def _anomaly_info(
    outcome: InspectOutcome, memory: NamespaceMemory | None, status: str
) -> AnomalyInfo:
    a = outcome.anomaly
    if a is None:
        refs = memory.references if memory is not None else 0
        return AnomalyInfo(
            status=status,  # type: ignore[arg-type]
            references=refs,
            version=memory.version if memory is not None else None,
        )
    return AnomalyInfo(
        status=a.status,  # type: ignore[arg-type]
        score=a.score,
        raw_score=a.raw_score,
        threshold=a.threshold,
        anomalous=a.anomalous,
        unknown_count=len(a.unknown),
        unknown_rejects=a.unknown_rejects,
        references=a.references,
        version=memory.version if memory is not None else None,
        map_available=a.threshold is not None,
        map_png=heatmap_png_base64(a.map) if a.map is not None else None,
    )


@router.post(
    "/v1/inspect",
    response_model=InspectionResult,
    summary="Inspect an image for registered defects",
    openapi_extra=_BODY_DOC,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
)
async def inspect_image(
    request: Request,
    state: StateDep,
    _role: InspectRole,
    options: Annotated[InspectOptions, Depends()],
) -> InspectionResult:
    arrived = time.monotonic()
    per_class = _parse_class_thresholds(options.class_thresholds)
    data = await read_image_upload(request, state.settings.max_image_bytes)
    with state.batcher.arrival() as arrival:
        return await _inspect(state, arrival, data, arrived, options, per_class)


async def _inspect(
    state: AppState,
    arrival: Arrival,
    data: bytes,
    arrived: float,
    options: InspectOptions,
    per_class: dict[str, float],
) -> InspectionResult:
    settings = state.settings
    namespace = options.namespace
    t0 = time.perf_counter()
    image: DecodedImage = await run_in_threadpool(
        decode_image, data, settings.max_image_bytes, settings.max_image_pixels
    )
    decode_s = time.perf_counter() - t0
    state.metrics.stage_duration.labels(stage="decode").observe(decode_s)

    plan = await run_in_threadpool(
        plan_inspection, state, namespace, options.classes, options.score_threshold, per_class
    )
    snap, names, degraded = plan.snapshot, plan.names, plan.degraded
    memory, anomaly_status = await _anomaly_memory(state, namespace)
    active = memory is not None and memory.active
    if not names and not active:
        raise Problem(
            409,
            "no-prompts",
            f"namespace {namespace!r} has no defect classes and no reference images yet; "
            f"register exemplars with POST /v1/namespaces/{namespace}/prompts or defect-free "
            f"references with POST /v1/namespaces/{namespace}/references first",
        )
    proposals = await outline_decision(state, plan)
    cap = settings.max_detections
    job = InspectJob(
        image=image.rgb,
        prototypes=plan.prototypes,
        class_names=names,
        thresholds=plan.thresholds,
        class_sides=plan.sides,
        class_crops=plan.crops,
        proposal_classes=None if proposals is None else proposals[0],
        detection_weights=None if proposals is None else proposals[1],
        max_detections=min(options.max_detections or cap, cap),
        mask_format=options.mask_format,
        heatmap=options.heatmap,
        anomaly=memory if active else None,
        anomaly_map=options.anomaly_map,
    )
    queued = time.perf_counter()
    deadline = arrived + settings.request_timeout_s
    memory_version = memory.version if active and memory is not None else -1
    outcome: InspectOutcome = await state.batcher.submit(
        (namespace, snap.version, names, memory_version), job, deadline, arrival
    )
    waited = time.perf_counter() - queued - sum(outcome.timings_s.values())

    for stage, seconds in outcome.timings_s.items():
        state.metrics.stage_duration.labels(stage=stage).observe(seconds)
    verdict = "reject" if outcome.rejects else "pass"
    state.metrics.verdicts.labels(namespace=namespace, verdict=verdict).inc()
    for det in outcome.detections:
        state.metrics.detections.labels(namespace=namespace, class_name=det["class_name"]).inc()
    if degraded:
        state.metrics.degraded_inspections.inc()
    timings = {"decode": decode_s, "queue": max(0.0, waited), **outcome.timings_s}
    timings["total"] = time.monotonic() - arrived
    return InspectionResult(
        namespace=namespace,
        verdict=verdict,
        top_score=outcome.top_score,
        detections=outcome.detections,  # type: ignore[arg-type]
        image=ImageInfo(
            width=image.width, height=image.height, format=image.format, bit_depth=image.bit_depth
        ),
        timings_ms={k: round(v * 1000.0, 3) for k, v in timings.items()},
        model=ModelInfo(fingerprint=state.fingerprint, backend=state.backend.backend),
        prompts=PromptsInfo(version=snap.version, classes=list(names), degraded=degraded),
        heatmap_png=outcome.heatmap_png,
        anomaly=_anomaly_info(outcome, memory, anomaly_status),
    )
