"""API schemas: what clients send and receive (kept apart from network outputs and store records).

Field limits here are the contract the OpenAPI document publishes; examples make the /docs page
usable as a walkthrough.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
EXEMPLAR_ID_PATTERN = r"^[0-9a-f]{32}$"

Box = list[float]


class MaskFormat(StrEnum):
    """How masks come back: COCO compressed RLE, COCO polygons, or not at all."""

    rle = "rle"
    polygon = "polygon"
    none = "none"


class MaskRLE(BaseModel):
    """COCO compressed RLE (pycocotools.mask.decode reads it after counts.encode())."""

    size: list[int] = Field(min_length=2, max_length=2, examples=[[480, 640]])
    counts: str = Field(examples=["e`e04k00O1O0000O100000O1O00N2N20010O00"])


class Detection(BaseModel):
    """One defect found in the image."""

    class_name: str = Field(examples=["scratch"])
    score: float = Field(ge=0, le=1, examples=[0.87])
    box: Box = Field(
        min_length=4,
        max_length=4,
        description="x0, y0, x1, y1 in original image pixels",
        examples=[[112.0, 40.0, 168.0, 61.0]],
    )
    mask: MaskRLE | list[list[float]] | None = Field(
        default=None,
        description="COCO RLE (mask_format=rle), polygons as flat [x0, y0, x1, y1, ...] lists "
        "(mask_format=polygon) or null (mask_format=none)",
    )


class ImageInfo(BaseModel):
    width: int = Field(examples=[640])
    height: int = Field(examples=[480])
    format: str = Field(examples=["PNG"])
    bit_depth: int = Field(examples=[8])


class ModelInfo(BaseModel):
    fingerprint: str = Field(examples=["3f5c0a..."])
    backend: str = Field(examples=["torch"])


class PromptsInfo(BaseModel):
    """Which prototypes answered: the store version and whether they may be stale (outage)."""

    version: int = Field(examples=[12])
    classes: list[str] = Field(examples=[["scratch", "spot"]])
    degraded: bool = Field(
        default=False,
        description="true when the prompt store was unreachable and the last prototypes held in "
        "memory were used",
    )


class AnomalyInfo(BaseModel):
    """The reference-based anomaly signal of this inspection (README "Anomaly mode")."""

    status: Literal[
        "ok", "uncalibrated", "no_references", "model_mismatch", "disabled", "unavailable"
    ] = Field(
        description="ok: scored against the namespace's references with a threshold; "
        "uncalibrated: scored, but fewer than 2 references and no threshold set; no_references; "
        "model_mismatch: the references come from another feature extractor (re-register them); "
        "disabled: the anomaly mode is off; unavailable: the store is down and this replica never "
        "loaded the namespace's references"
    )
    score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="image anomaly score normalised as 1 - 2^(-raw / threshold): 0.5 at the "
        "threshold",
        examples=[0.81],
    )
    raw_score: float | None = Field(
        default=None, description="largest patch distance to the memory", examples=[71.2]
    )
    threshold: float | None = Field(
        default=None,
        description="threshold on raw_score in use (calibrated, or the namespace's override)",
        examples=[43.5],
    )
    anomalous: bool = Field(default=False, description="raw_score is above the threshold")
    unknown_count: int = Field(default=0, description="`unknown` detections returned")
    unknown_rejects: bool = Field(
        default=False, description="whether `unknown` detections count toward reject"
    )
    references: int = Field(default=0, description="reference images behind the memory")
    version: int | None = Field(
        default=None,
        description="the namespace's reference version the memory used was built from; after a "
        "change it is refreshed in the background, and inspections keep using the previous memory "
        "(older version) until the new one is swapped in",
        examples=[12],
    )
    map_available: bool = Field(
        default=False, description="a pixel anomaly map was computed (ask with anomaly_map=true)"
    )
    map_png: str | None = Field(
        default=None,
        description="base64 PNG (8-bit grey, 255 = 1.0) of the normalised pixel anomaly map, when "
        "anomaly_map=true",
    )


class InspectionResult(BaseModel):
    """The answer to one inspection."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "namespace": "line-7",
                    "verdict": "reject",
                    "top_score": 0.87,
                    "detections": [
                        {
                            "class_name": "scratch",
                            "score": 0.87,
                            "box": [112.0, 40.0, 168.0, 61.0],
                            "mask": {"size": [480, 640], "counts": "e`e04k00O1O0000O1"},
                        }
                    ],
                    "image": {"width": 640, "height": 480, "format": "PNG", "bit_depth": 8},
                    "timings_ms": {"decode": 2.1, "queue": 0.4, "inference": 61.0},
                    "model": {"fingerprint": "3f5c0a...", "backend": "torch"},
                    "prompts": {"version": 12, "classes": ["scratch", "spot"], "degraded": False},
                    "heatmap_png": None,
                    "anomaly": {
                        "status": "ok",
                        "score": 0.31,
                        "raw_score": 23.1,
                        "threshold": 43.5,
                        "anomalous": False,
                        "unknown_count": 0,
                        "unknown_rejects": True,
                        "references": 120,
                        "map_available": True,
                        "map_png": None,
                    },
                }
            ]
        }
    )

    namespace: str
    verdict: Literal["pass", "reject"] = Field(
        description="reject if any prompted detection passes its class threshold or (unless the "
        "namespace turned it off) any `unknown` anomalous region was found, else pass"
    )
    top_score: float = Field(
        ge=0, le=1, description="highest detection score (0 when nothing passed a threshold)"
    )
    detections: list[Detection] = Field(
        description="prompted detections, then anomalous regions no prompted detection explains "
        "(class_name `unknown`, score normalised as anomaly.score)"
    )
    image: ImageInfo
    timings_ms: dict[str, float] = Field(
        description="milliseconds per stage: decode, queue, preprocess, inference, postprocess, "
        "total (a backend that cannot split its call reports it all as inference)"
    )
    model: ModelInfo
    prompts: PromptsInfo
    heatmap_png: str | None = Field(
        default=None,
        description="base64 PNG (8-bit grey, 255 = 1.0) of the anomaly heatmap sum_i s_i m_i "
        "over the returned detections (prompted and unknown), when heatmap=true",
    )
    anomaly: AnomalyInfo = Field(
        default_factory=lambda: AnomalyInfo(status="no_references"),
        description="the reference-based anomaly signal",
    )


class ExemplarCreated(BaseModel):
    id: str = Field(examples=["9d2b6c1e0f3a4b5c6d7e8f9012345678"])
    box: Box = Field(examples=[[10.0, 20.0, 60.0, 32.0]])
    created: bool = Field(description="false when this exact exemplar was already registered")


class PromptCreated(BaseModel):
    """Registration result: the exemplar ids and the namespace version that includes them."""

    namespace: str = Field(examples=["line-7"])
    class_name: str = Field(examples=["scratch"])
    version: int = Field(examples=[13])
    exemplars: list[ExemplarCreated]


class ExemplarPublic(BaseModel):
    id: str
    box: Box
    has_mask: bool
    author: str
    created_at: str
    note: str | None = None
    thumbnail_url: str = Field(description="PNG crop of the region (admin key needed)")


class ClassPublic(BaseModel):
    name: str = Field(examples=["scratch"])
    exemplar_count: int = Field(examples=[3])
    exemplars: list[ExemplarPublic]


class ExemplarCheck(BaseModel):
    """One exemplar, looked for in the very image it was cut from."""

    id: str
    box: Box = Field(min_length=4, max_length=4)
    best_iou: float = Field(
        ge=0, le=1, description="best box IoU with a detection of its class at any rankable score"
    )
    score: float | None = Field(
        default=None, description="score of that best-overlapping detection; null with none"
    )
    found: bool = Field(description="a detection of its class covers it (IoU >= 0.5)")
    caught: bool = Field(description="found, and that detection passes the threshold")


class SelfCheck(BaseModel):
    """Does the model outline this class at all? Its exemplars, re-found in their own images."""

    namespace: str
    class_name: str
    version: int = Field(description="prompt version the check ran against")
    threshold: float = Field(description="threshold `caught` is judged at")
    total: int = Field(description="exemplars of the class")
    checked: int = Field(description="exemplars looked for (the first images, up to a limit)")
    found: int = Field(description="checked exemplars a detection of the class covers")
    caught: int = Field(description="found exemplars whose detection passes the threshold")
    outline: float = Field(description="mean best IoU of the checked exemplars")
    template_proposals: bool = Field(
        description="whether inspections below the model's proposal score add exemplar-matched "
        "regions for this class (its outline is below the model's gate)"
    )
    detection_weight: float = Field(
        default=1.0,
        description="the factor on this class's own detections at every threshold: below 1 when "
        "the model outlines it under half its gate (models/outline_gate.py)",
    )
    verdict: Literal["outlined", "partly-outlined", "not-outlined"]
    advice: str
    exemplars: list[ExemplarCheck]


class NamespacePrompts(BaseModel):
    """The classes of a namespace with their exemplars and thumbnails."""

    namespace: str
    version: int
    fingerprint: str
    classes: list[ClassPublic]


class NamespaceList(BaseModel):
    namespaces: list[str] = Field(examples=[["line-7", "line-8"]])


class NamespaceSummary(BaseModel):
    namespace: str
    version: int
    fingerprint: str
    embed_dim: int
    class_count: int
    exemplar_count: int


class Changed(BaseModel):
    """A change was made; `version` is the namespace version after it."""

    namespace: str
    version: int


class ClassRename(BaseModel):
    name: str = Field(min_length=1, max_length=128, examples=["deep-scratch"])


class Renamed(BaseModel):
    namespace: str
    class_name: str
    exemplar_ids: dict[str, str] = Field(description="old exemplar id -> new id")


class ReferenceCreated(BaseModel):
    id: str = Field(examples=["4f1c2b9a0d3e4f5a6b7c8d9e0f1a2b3c"])
    created: bool = Field(description="false when this exact image was already registered")
    width: int = Field(examples=[640])
    height: int = Field(examples=[480])


class ReferencesCreated(BaseModel):
    """Registration result: one entry per uploaded image, in upload order."""

    namespace: str = Field(examples=["line-7"])
    version: int = Field(examples=[14])
    references: list[ReferenceCreated]
    count: int = Field(description="references the namespace holds now", examples=[120])


class AnomalySettingsBody(BaseModel):
    """Per-namespace overrides of the anomaly mode; null restores the service default."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="threshold on the raw anomaly score (null: calibrated from the references)",
        examples=[45.0],
    )
    min_region_fraction: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="unknown regions smaller than this share of the image are dropped",
        examples=[0.001],
    )
    unknown_rejects: bool | None = Field(
        default=None, description="whether unknown regions count toward reject", examples=[True]
    )


class AnomalyState(BaseModel):
    """A namespace's anomaly mode as this replica holds it."""

    namespace: str
    version: int
    status: str = Field(examples=["ok"])
    references: int = Field(examples=[120])
    threshold: float | None = Field(description="in use", examples=[43.5])
    threshold_source: Literal["override", "calibrated"] | None = None
    calibrated_threshold: float | None = None
    calibration_scores: int = Field(
        description="held-out references scored to calibrate the threshold", examples=[32]
    )
    quantile: float = Field(description="calibration quantile", examples=[0.99])
    overrides: AnomalySettingsBody
    min_region_fraction: float = Field(description="in use")
    unknown_rejects: bool = Field(description="in use")
    memory_patches: int = Field(description="nearest-neighbour rows held")
    memory_bytes: int = Field(description="bytes this replica holds for the namespace")


class ReferencePublic(BaseModel):
    id: str
    width: int
    height: int
    patches: int = Field(description="patch features stored (k-center prefix)")
    author: str
    created_at: str
    note: str | None = None


class ReferenceList(BaseModel):
    """A namespace's reference images and its anomaly state."""

    namespace: str
    count: int
    references: list[ReferencePublic]
    anomaly: AnomalyState


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every 4xx/5xx answer."""

    type: str = Field(examples=["https://defect-inspector.dev/problems/not-an-image"])
    title: str = Field(examples=["Unsupported Media Type"])
    status: int = Field(examples=[415])
    detail: str = Field(examples=["the upload is not a JPEG, PNG, BMP or TIFF image"])
    instance: str = Field(examples=["/v1/inspect"])


class Alive(BaseModel):
    status: Literal["alive"] = "alive"


class Ready(BaseModel):
    """ready: serving; degraded: serving inspections from cached prototypes (store down);
    not_ready / draining: do not send traffic."""

    status: Literal["ready", "degraded", "not_ready", "draining"]
    model: dict[str, str | int | float | bool | None]
    store: dict[str, str | int | float | bool | None]
    queue: dict[str, int]
    auth: Literal["open", "api-keys"]


def problem_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses` entries for problem-details answers (the Problem schema is added to
    the document's components by service.main)."""
    ref = {"$ref": "#/components/schemas/Problem"}
    return {
        code: {
            "description": _PROBLEM_DESCRIPTIONS.get(code, "problem details"),
            "content": {"application/problem+json": {"schema": ref}},
        }
        for code in codes
    }


_PROBLEM_DESCRIPTIONS = {
    400: "truncated or corrupt image, malformed request",
    401: "no or wrong API key",
    403: "the key's role may not do this",
    404: "unknown namespace, class or exemplar",
    409: "conflict: namespace without prompts, model mismatch, name taken",
    413: "image or body too large (bytes or pixels)",
    415: "not an image, or an unsupported image format",
    422: "invalid parameters, region outside the image, bad names",
    429: "queue full; retry after the Retry-After header",
    503: "prompt store unreachable, deadline exceeded or shutting down (Retry-After)",
}
