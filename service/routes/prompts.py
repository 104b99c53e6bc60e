"""Prompts: QA engineers register, review and remove defect exemplars (admin role).

A registration is validated completely (class name, image, regions inside the image) before the
model or the store is touched, so a refused request changes nothing. The store writes all the
exemplars of one request atomically and bumps the namespace version; this replica drops its
cached prototypes for the namespace at once and other replicas do on the store's change event.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from models.rle import decode_rle, encode_rle
from prompt_store import export as export_io
from prompt_store.errors import InvalidInput, NotFound
from prompt_store.records import (
    ClassInfo,
    NewExemplar,
    Region,
    validate_label,
    validate_note,
)
from service.deps import AdminRole, StateDep
from service.errors import Problem
from service.images import (
    check_size,
    decode_image,
    decode_mask,
    regions_from_mask,
    thumbnail,
)
from service.schemas import (
    EXEMPLAR_ID_PATTERN,
    NAMESPACE_PATTERN,
    Changed,
    ClassPublic,
    ClassRename,
    ExemplarCreated,
    ExemplarPublic,
    NamespaceList,
    NamespacePrompts,
    NamespaceSummary,
    PromptCreated,
    Renamed,
    problem_responses,
)
from service.state import AppState

router = APIRouter(prefix="/v1/namespaces", tags=["prompts"])

MAX_REGIONS = 64
Namespace = Annotated[
    str, PathParam(pattern=NAMESPACE_PATTERN, examples=["line-7"], description="namespace")
]
ClassName = Annotated[
    str, PathParam(min_length=1, max_length=128, examples=["scratch"], description="class")
]
ExemplarId = Annotated[str, PathParam(pattern=EXEMPLAR_ID_PATTERN, description="exemplar id")]
_WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503)
_READ_ERRORS = problem_responses(401, 403, 404, 422, 503)


def require_store(state: AppState) -> None:
    """Writes need the store: refuse at once (503) during an outage."""
    if not state.health.up:
        raise Problem(
            503,
            "store-unavailable",
            "the prompt store is unreachable; registrations and changes are refused until it "
            "returns (inspections keep using the last prototypes)",
            retry_after=5,
        )


def label(value: str, what: str) -> str:
    try:
        return validate_label(value, what)
    except InvalidInput as exc:
        raise Problem(422, "invalid-name", str(exc)) from exc


def _parse_boxes(text: str, width: int, height: int) -> list[np.ndarray]:
    """`boxes` form field: JSON [[x0, y0, x1, y1], ...] (or one box) inside the image."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(
            422, "invalid-boxes", f"boxes must be JSON like [[x0, y0, x1, y1]] ({exc.msg})"
        ) from exc
    if isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise Problem(422, "invalid-boxes", "boxes must be a non-empty JSON list of boxes")
    if len(value) > MAX_REGIONS:
        raise Problem(422, "invalid-boxes", f"at most {MAX_REGIONS} boxes per request")
    out = []
    for box in value:
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise Problem(422, "invalid-boxes", f"box {box!r} must be 4 numbers [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height) or min(x1 - x0, y1 - y0) < 1:
            raise Problem(
                422,
                "region-outside-image",
                f"box {box} must lie inside the {width}x{height} image with "
                "0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height and sides of at least 1 pixel",
            )
        out.append(np.array([x0, y0, x1, y1], dtype=np.float32))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _thumbnail_url(ns: str, cls: str, eid: str) -> str:
    from urllib.parse import quote

    return f"/v1/namespaces/{ns}/classes/{quote(cls, safe='')}/exemplars/{eid}/thumbnail"


def _class_public(ns: str, info: ClassInfo) -> ClassPublic:
    return ClassPublic(
        name=info.name,
        exemplar_count=len(info.exemplars),
        exemplars=[
            ExemplarPublic(
                id=rec.id,
                box=[float(v) for v in rec.region.box],
                has_mask=rec.region.mask_rle is not None,
                author=rec.author,
                created_at=rec.created_at,
                note=rec.note,
                thumbnail_url=_thumbnail_url(ns, info.name, rec.id),
            )
            for rec in info.exemplars
        ],
    )


@router.post(
    "/{namespace}/prompts",
    status_code=201,
    response_model=PromptCreated,
    summary="Register exemplars of a defect class (boxes or a mask)",
    responses=_WRITE_ERRORS,
)
async def register_prompts(
    state: StateDep,
    _role: AdminRole,
    namespace: Namespace,
    image: Annotated[UploadFile, File(description="the prompt image (JPEG, PNG, BMP, TIFF)")],
    class_name: Annotated[str, Form(max_length=128, examples=["scratch"])],
    boxes: Annotated[
        str | None,
        Form(
            description="JSON list of [x0, y0, x1, y1] in pixels", examples=["[[10, 20, 60, 32]]"]
        ),
    ] = None,
    mask: Annotated[
        UploadFile | None,
        File(
            description="the image's size, background 0 and defect non-zero (a two-level mask is "
            "cut midway, so a JPEG keeps its shape); each connected component is one exemplar"
        ),
    ] = None,
    author: Annotated[str, Form(max_length=128)] = "api",
    note: Annotated[str | None, Form(max_length=2000)] = None,
) -> PromptCreated:
    settings = state.settings
    class_name = label(class_name, "class name")
    author = label(author, "author")
    try:
        note = validate_note(note)
    except InvalidInput as exc:
        raise Problem(422, "invalid-note", str(exc)) from exc
    if (boxes is None) == (mask is None):
        raise Problem(422, "invalid-regions", "send exactly one of 'boxes' or 'mask'")
    limit = min(settings.max_image_bytes, state.store.max_image_bytes)
    data = await image.read(limit + 1)
    check_size(data, limit)
    t0 = time.perf_counter()
    decoded = await run_in_threadpool(
        decode_image, data, settings.max_image_bytes, settings.max_image_pixels
    )
    state.metrics.stage_duration.labels(stage="decode").observe(time.perf_counter() - t0)
    w, h = decoded.width, decoded.height

    regions: list[tuple[np.ndarray, np.ndarray | None]]
    if mask is not None:
        mask_bytes = await mask.read(settings.max_image_bytes + 1)
        m = await run_in_threadpool(decode_mask, mask_bytes, w, h, settings.max_image_bytes)
        found = await run_in_threadpool(regions_from_mask, m, settings.min_region_pixels)
        if not found:
            raise Problem(
                422,
                "empty-mask",
                f"the mask has no region of at least {settings.min_region_pixels} pixels",
            )
        if len(found) > MAX_REGIONS:
            raise Problem(422, "invalid-regions", f"the mask has more than {MAX_REGIONS} regions")
        regions = [(box, comp) for box, comp in found]
    else:
        regions = [(box, None) for box in _parse_boxes(boxes or "", w, h)]

    require_store(state)
    t0 = time.perf_counter()
    embeddings = await state.batcher.run_exclusive(state.inspector.encode, decoded.rgb, regions)
    state.metrics.stage_duration.labels(stage="encode").observe(time.perf_counter() - t0)
    items = [
        NewExemplar(
            class_name=class_name,
            embedding=emb,
            image_bytes=data,
            region=Region(
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                mask_rle=encode_rle(comp) if comp is not None else None,
            ),
            author=author,
            note=note,
        )
        for (box, comp), emb in zip(regions, embeddings, strict=True)
    ]
    results = await run_in_threadpool(
        state.store.store.add_exemplars, namespace, items, fingerprint=state.fingerprint
    )
    version = max(r.version for r in results)
    state.cache.invalidate(namespace, version)
    return PromptCreated(
        namespace=namespace,
        class_name=class_name,
        version=version,
        exemplars=[
            ExemplarCreated(id=r.exemplar_id, box=[float(v) for v in box], created=r.created)
            for r, (box, _) in zip(results, regions, strict=True)
        ],
    )


@router.get("", response_model=NamespaceList, summary="List namespaces", responses=_READ_ERRORS)
def list_namespaces(state: StateDep, _role: AdminRole) -> NamespaceList:
    return NamespaceList(namespaces=state.store.store.namespaces())


@router.get(
    "/{namespace}/prompts",
    response_model=NamespacePrompts,
    summary="List a namespace's classes with exemplar counts and thumbnails",
    responses=_READ_ERRORS,
)
def list_prompts(state: StateDep, _role: AdminRole, namespace: Namespace) -> NamespacePrompts:
    store = state.store.store
    info = store.namespace_info(namespace)
    classes = []
    for summary in store.list_classes(namespace):
        try:
            classes.append(_class_public(namespace, store.get_class(namespace, summary.name)))
        except NotFound:  # removed between the two reads
            continue
    return NamespacePrompts(
        namespace=namespace, version=info.version, fingerprint=info.fingerprint, classes=classes
    )


@router.get(
    "/{namespace}/classes/{class_name}",
    response_model=ClassPublic,
    summary="A class with its exemplars",
    responses=_READ_ERRORS,
)
def get_class(
    state: StateDep, _role: AdminRole, namespace: Namespace, class_name: ClassName
) -> ClassPublic:
    class_name = label(class_name, "class name")
    return _class_public(namespace, state.store.store.get_class(namespace, class_name))


@router.get(
    "/{namespace}/classes/{class_name}/exemplars/{exemplar_id}/thumbnail",
    summary="PNG thumbnail of an exemplar's region",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_READ_ERRORS},
)
def get_thumbnail(
    state: StateDep,
    _role: AdminRole,
    namespace: Namespace,
    class_name: ClassName,
    exemplar_id: ExemplarId,
) -> Response:
    class_name = label(class_name, "class name")
    store = state.store.store
    info = store.get_class(namespace, class_name)
    record = next((r for r in info.exemplars if r.id == exemplar_id), None)
    if record is None:
        raise Problem(
            404,
            "not-found",
            f"exemplar {exemplar_id} is not in class {class_name!r} of namespace {namespace!r}",
        )
    data = store.get_source_image(namespace, record.image_hash)
    settings = state.settings
    decoded = decode_image(data, max(len(data), 1024), settings.max_image_pixels)
    mask = decode_rle(record.region.mask_rle) if record.region.mask_rle else None
    png = thumbnail(decoded.rgb, record.region.box, mask, settings.thumbnail_size)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.delete(
    "/{namespace}/classes/{class_name}",
    response_model=Changed,
    summary="Remove a class and all its exemplars",
    responses=_WRITE_ERRORS,
)
def delete_class(
    state: StateDep, _role: AdminRole, namespace: Namespace, class_name: ClassName
) -> Changed:
    class_name = label(class_name, "class name")
    require_store(state)
    version = state.store.store.remove_class(namespace, class_name)
    state.cache.invalidate(namespace, version)
    return Changed(namespace=namespace, version=version)


@router.patch(
    "/{namespace}/classes/{class_name}",
    response_model=Renamed,
    summary="Rename a class",
    responses=_WRITE_ERRORS,
)
def rename_class(
    state: StateDep,
    _role: AdminRole,
    namespace: Namespace,
    class_name: ClassName,
    body: ClassRename,
) -> Renamed:
    old = label(class_name, "class name")
    new = label(body.name, "class name")
    require_store(state)
    mapping = state.store.store.rename_class(namespace, old, new)
    state.cache.invalidate(namespace)
    return Renamed(namespace=namespace, class_name=new, exemplar_ids=mapping)


@router.delete(
    "/{namespace}/exemplars/{exemplar_id}",
    response_model=Changed,
    summary="Remove one exemplar (its class goes with its last exemplar)",
    responses=_WRITE_ERRORS,
)
def delete_exemplar(
    state: StateDep, _role: AdminRole, namespace: Namespace, exemplar_id: ExemplarId
) -> Changed:
    require_store(state)
    version = state.store.store.remove_exemplar(namespace, exemplar_id)
    state.cache.invalidate(namespace, version)
    return Changed(namespace=namespace, version=version)


@router.delete(
    "/{namespace}",
    response_model=Changed,
    summary="Delete a namespace with everything in it",
    responses=_WRITE_ERRORS,
)
def delete_namespace(state: StateDep, _role: AdminRole, namespace: Namespace) -> Changed:
    require_store(state)
    version = state.store.store.delete_namespace(namespace)
    state.cache.forget(namespace)
    return Changed(namespace=namespace, version=version)


@router.get(
    "/{namespace}/export",
    summary="Export a namespace as a JSON document (backup, moving between sites)",
    responses={200: {"content": {"application/json": {}}}, **_READ_ERRORS},
)
def export_namespace(state: StateDep, _role: AdminRole, namespace: Namespace) -> Response:
    doc = export_io.dump_to_document(state.store.store.dump_namespace(namespace))
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return Response(
        body,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{namespace}.json"'},
    )


@router.post(
    "/{namespace}/import",
    status_code=201,
    response_model=NamespaceSummary,
    summary="Import an exported namespace document (all or nothing)",
    responses=_WRITE_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def import_namespace(
    request: Request,
    state: StateDep,
    _role: AdminRole,
    namespace: Namespace,
    overwrite: Annotated[
        bool, Query(description="replace a namespace that already has exemplars")
    ] = False,
) -> JSONResponse:
    body = await request.body()
    if len(body) > state.settings.max_import_bytes:
        raise Problem(413, "body-too-large", "the export document is too large")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "invalid-json", f"the body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Problem(422, "invalid-export", "the body must be an exported namespace document")
    fingerprint = doc.get("fingerprint")
    if fingerprint != state.fingerprint:
        raise Problem(
            409,
            "model-mismatch",
            f"the document holds embeddings of model {fingerprint!r} but this service runs "
            f"model {state.fingerprint}; re-extract it for this model",
        )
    require_store(state)
    info = await run_in_threadpool(_import_document, state, body, namespace, overwrite)
    state.cache.invalidate(namespace, info.version)
    summary = NamespaceSummary(
        namespace=info.name,
        version=info.version,
        fingerprint=info.fingerprint,
        embed_dim=info.embed_dim,
        class_count=info.class_count,
        exemplar_count=info.exemplar_count,
    )
    return JSONResponse(summary.model_dump(), status_code=201)


def _import_document(state: AppState, body: bytes, namespace: str, overwrite: bool) -> Any:
    fd, name = tempfile.mkstemp(suffix=".json", prefix="import-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        return state.store.store.import_namespace(Path(name), namespace, overwrite=overwrite)
    finally:
        Path(name).unlink(missing_ok=True)
