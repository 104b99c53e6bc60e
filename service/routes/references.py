"""References: QA engineers register defect-free images for the anomaly mode (admin role).

A registration is validated completely (every image decoded, sizes and count checked) before the
model or the store is touched, so a refused request changes nothing. Features are computed on the
model thread; the store writes all the new references of one request atomically with one version
bump and event (prompt_store/reference_store.py). Registering the same image again is a no-op
that returns the same id. Every replica refreshes its memory in the background (this one at
once, the others on the event); inspections keep using the previous memory until the swap (their
`anomaly.version` says which). Admin reads and settings changes wait for the refresh (off the
model thread) so that their answer shows the change.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from models.preprocess import Letterbox
from prompt_store.errors import InvalidInput
from prompt_store.records import validate_label, validate_note
from prompt_store.references import AnomalySettings, NewReference
from service.anomaly import NamespaceMemory
from service.deps import AdminRole, StateDep
from service.errors import Problem
from service.images import check_size, decode_image
from service.routes.prompts import require_store
from service.schemas import (
    NAMESPACE_PATTERN,
    AnomalySettingsBody,
    AnomalyState,
    Changed,
    ReferenceCreated,
    ReferenceList,
    ReferencePublic,
    ReferencesCreated,
    problem_responses,
)
from service.state import AppState

router = APIRouter(prefix="/v1/namespaces", tags=["references (anomaly mode)"])

Namespace = Annotated[
    str, PathParam(pattern=NAMESPACE_PATTERN, examples=["line-7"], description="namespace")
]
ReferenceId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="reference id")]
_WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503)
_READ_ERRORS = problem_responses(401, 403, 404, 422, 503)


def _require_anomaly(state: AppState) -> None:
    if state.anomaly is None:
        raise Problem(
            409,
            "anomaly-disabled",
            "the anomaly mode is off on this service (INSPECT_ANOMALY_ENABLED=false)",
        )


def _shrunk(rgb: np.ndarray, size: int) -> np.ndarray:
    """The image fitted inside size x size, as the feature letterbox would scale it (letterboxing
    the result again is the identity), so a request never holds many full-size decodes."""
    lb = Letterbox.fit(rgb.shape[1], rgb.shape[0], size)
    w, h = lb.inner
    return np.ascontiguousarray(lb.image(rgb)[:h, :w])


REFRESH_WAIT_S = 30.0  # how long an admin read waits for a background refresh to finish


async def _memory(state: AppState, namespace: str) -> NamespaceMemory | None:
    """The namespace's memory once current: a held one is refreshed by the background worker and
    waited for on a thread-pool thread (the model thread keeps inspecting); only a namespace with
    none held yet is built on the model thread."""
    if state.anomaly is None:
        return None
    cached = await run_in_threadpool(state.anomaly.wait_current, namespace, REFRESH_WAIT_S)
    if cached is None:
        cached = await state.batcher.run_exclusive(state.anomaly.get, namespace)
    return cached.memory


def _changed(state: AppState, namespace: str, version: int) -> None:
    """After this replica's own write: prototypes refetch on next use, the anomaly memory starts
    refreshing in the background now (the event reaches the other replicas)."""
    state.cache.invalidate(namespace, version)
    if state.anomaly is not None:
        state.anomaly.invalidate(namespace, version)
        state.anomaly.refresh_soon(namespace)


def _state_of(state: AppState, namespace: str, memory: NamespaceMemory | None) -> AnomalyState:
    if memory is None:
        raise Problem(
            503,
            "store-unavailable",
            f"the prompt store is unreachable and namespace {namespace!r} has not been loaded on "
            "this replica yet",
            retry_after=5,
        )
    o = memory.overrides
    source = (
        "override"
        if o.threshold is not None
        else ("calibrated" if memory.calibrated_threshold is not None else None)
    )
    return AnomalyState(
        namespace=namespace,
        version=memory.version,
        status=memory.status,
        references=memory.references,
        threshold=memory.threshold,
        threshold_source=source,  # type: ignore[arg-type]
        calibrated_threshold=memory.calibrated_threshold,
        calibration_scores=memory.calibration_scores,
        quantile=memory.params.quantile,
        overrides=AnomalySettingsBody(
            threshold=o.threshold,
            min_region_fraction=o.min_region_fraction,
            unknown_rejects=o.unknown_rejects,
        ),
        min_region_fraction=memory.min_region_fraction,
        unknown_rejects=memory.unknown_rejects,
        memory_patches=len(memory.bank),
        memory_bytes=memory.nbytes,
    )


@router.post(
    "/{namespace}/references",
    status_code=201,
    response_model=ReferencesCreated,
    summary="Register defect-free reference images (anomaly mode)",
    responses=_WRITE_ERRORS,
)
async def register_references(
    state: StateDep,
    _role: AdminRole,
    namespace: Namespace,
    image: Annotated[
        list[UploadFile],
        File(description="defect-free images of the part (repeat the field for several)"),
    ],
    author: Annotated[str, Form(max_length=128)] = "api",
    note: Annotated[str | None, Form(max_length=2000)] = None,
) -> ReferencesCreated:
    settings = state.settings
    _require_anomaly(state)
    try:
        author = validate_label(author, "author")
        note = validate_note(note)
    except InvalidInput as exc:
        raise Problem(422, "invalid-name", str(exc)) from exc
    limit_n = settings.anomaly_max_references_per_request
    if len(image) > limit_n:
        raise Problem(
            422,
            "too-many-images",
            f"{len(image)} images in one request; at most {limit_n} "
            "(INSPECT_ANOMALY_MAX_REFERENCES_PER_REQUEST)",
        )
    uploads: list[tuple[bytes, int, int, np.ndarray]] = []
    t0 = time.perf_counter()
    for upload in image:
        data = await upload.read(settings.max_image_bytes + 1)
        check_size(data, settings.max_image_bytes)
        decoded = await run_in_threadpool(
            decode_image, data, settings.max_image_bytes, settings.max_image_pixels
        )
        small = _shrunk(decoded.rgb, settings.anomaly_image_size)
        uploads.append((data, decoded.width, decoded.height, small))
    state.metrics.stage_duration.labels(stage="decode").observe(time.perf_counter() - t0)

    require_store(state)
    t0 = time.perf_counter()
    patches = await state.batcher.run_exclusive(
        state.inspector.reference_patches,
        [u[3] for u in uploads],
        settings.anomaly_patches_per_reference,
    )
    state.metrics.stage_duration.labels(stage="encode").observe(time.perf_counter() - t0)
    items = [
        NewReference(data, w, h, feats, author, note)
        for (data, w, h, _), feats in zip(uploads, patches, strict=True)
    ]
    scorer = state.inspector.scorer
    assert scorer is not None  # _require_anomaly
    results = await run_in_threadpool(
        lambda: state.store.store.references.add_references(
            namespace,
            items,
            fingerprint=state.fingerprint,
            embed_dim=state.inspector.predictor.embed_dim,
            feature_fingerprint=scorer.extractor.fingerprint,
            max_references=settings.anomaly_max_references,
        )
    )
    version = max(r.version for r in results)
    _changed(state, namespace, version)
    snap = await run_in_threadpool(state.store.store.references.snapshot, namespace)
    return ReferencesCreated(
        namespace=namespace,
        version=version,
        references=[
            ReferenceCreated(id=r.reference_id, created=r.created, width=w, height=h)
            for r, (_, w, h, _) in zip(results, uploads, strict=True)
        ],
        count=len(snap.rows),
    )


@router.get(
    "/{namespace}/references",
    response_model=ReferenceList,
    summary="List a namespace's reference images and its anomaly state",
    responses=_READ_ERRORS,
)
async def list_references(state: StateDep, _role: AdminRole, namespace: Namespace) -> ReferenceList:
    _require_anomaly(state)
    records = await run_in_threadpool(state.store.store.references.list_references, namespace)
    memory = await _memory(state, namespace)
    return ReferenceList(
        namespace=namespace,
        count=len(records),
        references=[
            ReferencePublic(
                id=r.id,
                width=r.width,
                height=r.height,
                patches=r.rows,
                author=r.author,
                created_at=r.created_at,
                note=r.note,
            )
            for r in records
        ],
        anomaly=_state_of(state, namespace, memory),
    )


@router.delete(
    "/{namespace}/references/{reference_id}",
    response_model=Changed,
    summary="Remove a reference image",
    responses=_WRITE_ERRORS,
)
async def delete_reference(
    state: StateDep, _role: AdminRole, namespace: Namespace, reference_id: ReferenceId
) -> Changed:
    _require_anomaly(state)
    require_store(state)
    version = await run_in_threadpool(
        state.store.store.references.remove_reference, namespace, reference_id
    )
    _changed(state, namespace, version)
    return Changed(namespace=namespace, version=version)


@router.get(
    "/{namespace}/anomaly",
    response_model=AnomalyState,
    summary="The anomaly mode of a namespace: threshold (calibrated or set), settings, memory",
    responses=_READ_ERRORS,
)
async def get_anomaly(state: StateDep, _role: AdminRole, namespace: Namespace) -> AnomalyState:
    _require_anomaly(state)
    return _state_of(state, namespace, await _memory(state, namespace))


@router.put(
    "/{namespace}/anomaly",
    response_model=AnomalyState,
    summary="Set a namespace's anomaly overrides (threshold, min region size, unknown rejects)",
    responses=_WRITE_ERRORS,
)
async def put_anomaly(
    state: StateDep, _role: AdminRole, namespace: Namespace, body: AnomalySettingsBody
) -> AnomalyState:
    _require_anomaly(state)
    try:
        settings = AnomalySettings(body.threshold, body.min_region_fraction, body.unknown_rejects)
    except InvalidInput as exc:
        raise Problem(422, "invalid-settings", str(exc)) from exc
    require_store(state)
    version = await run_in_threadpool(
        state.store.store.references.set_settings, namespace, settings
    )
    _changed(state, namespace, version)
    return _state_of(state, namespace, await _memory(state, namespace))
