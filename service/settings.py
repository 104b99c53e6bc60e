"""Service settings: one pydantic-settings class read from the environment (prefix INSPECT_).

The prompt store's connection settings live in `prompt_store/settings.py` (INSPECT_REDIS_*);
on top of those the service honours the conventional `REDIS_URL`. With neither REDIS_URL nor
INSPECT_REDIS_URL set the service starts its embedded default store: a local redis-server with
persistence on, its data under `INSPECT_REDIS_DATA_DIR`.

Tests build `ServiceSettings(...)` directly or override `get_settings` through FastAPI's
dependency overrides; nothing reads the environment at import time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Everything the service reads from the environment (INSPECT_*, plus REDIS_URL)."""

    # hide_input_in_errors: a refused value (an API key, a URL with a password) is never printed.
    model_config = SettingsConfigDict(
        env_prefix="INSPECT_", extra="ignore", hide_input_in_errors=True
    )

    # --- network -------------------------------------------------------------------------------
    # Interface and port of `python -m service` (flags --host/--port override them).
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Seconds uvicorn waits for in-flight requests to finish after SIGTERM/SIGINT.
    shutdown_timeout_s: float = Field(default=20.0, gt=0, le=600)

    # --- model ---------------------------------------------------------------------------------
    # Model file; None: the embedded default models/weights/unispector_small.pt.
    model_path: Path | None = None
    # Inference backend; "auto" picks the fastest the machine has (TensorRT > ONNX Runtime CUDA >
    # ONNX Runtime CPU > PyTorch); a name forces that backend (no fallback).
    backend: Literal[
        "auto", "torch", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"
    ] = "auto"
    # Intra-op threads of the model call (0: the library default, usually one per core).
    threads: int = Field(default=0, ge=0, le=256)
    # Default score threshold; None: the model file's calibrated threshold.
    score_threshold: float | None = Field(default=None, gt=0, le=1)
    # Upper bound (and default) of detections returned per image.
    max_detections: int = Field(default=100, ge=1, le=1000)
    # Run one model call at start-up so the first request does not pay for lazy initialisation.
    warmup: bool = True

    # --- batching and back-pressure -------------------------------------------------------------
    # Most images grouped into one model call.
    max_batch_size: int = Field(default=8, ge=1, le=256)
    # At start-up, time batches of 1, 2, 4, ... up to max_batch_size and use the size with the
    # best images/s (on a small CPU, batches past 2 are often slower per image than 1).
    batch_autotune: bool = True
    # How long the first request of a batch waits for company, in milliseconds.
    max_batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    # Inspections waiting for the model beyond the batch in progress; when full: 429.
    queue_size: int = Field(default=64, ge=1, le=100_000)
    # Per-request deadline in seconds, from arrival to answer; past it: 503 with Retry-After.
    request_timeout_s: float = Field(default=10.0, gt=0, le=600)

    # --- input limits ---------------------------------------------------------------------------
    # Largest encoded image accepted (checked before decoding).
    max_image_bytes: int = Field(default=16 * MiB, ge=1024, le=1024 * MiB)
    # Largest decoded image, in pixels (checked from the header before decoding).
    max_image_pixels: int = Field(default=40_000_000, ge=1, le=1_000_000_000)
    # Largest namespace export file accepted by the import endpoint.
    max_import_bytes: int = Field(default=256 * MiB, ge=1024, le=4096 * MiB)
    # Mask components smaller than this many pixels are ignored when registering from a mask.
    min_region_pixels: int = Field(default=4, ge=1, le=1_000_000)
    # Longest side of the region thumbnails served to QA engineers.
    thumbnail_size: int = Field(default=128, ge=16, le=1024)

    # --- anomaly mode (defect-free reference images; README "Anomaly mode") --------------------
    # Score every inspection against the namespace's references (when it has any).
    anomaly_enabled: bool = True
    # Patch-feature weights: "imagenet" (the packaged ImageNet EfficientNet-Lite0; references
    # survive a model change) or "model" (the served model's fine-tuned backbone).
    anomaly_backbone: Literal["imagenet", "model"] = "imagenet"
    # Letterbox side of the anomaly features (a multiple of 32); the map has one cell per 8 px.
    anomaly_image_size: int = Field(default=320, ge=64, le=1024, multiple_of=32)
    # Patches stored per reference (its greedy k-center prefix, float16 in the store).
    anomaly_patches_per_reference: int = Field(default=400, ge=1, le=4096)
    # Memory bound per namespace: nearest-neighbour rows held (each reference contributes
    # min(stored, max_patches // references) rows).
    anomaly_max_patches: int = Field(default=20_000, ge=100, le=1_000_000)
    # Namespaces whose memory is held at once (least recently used dropped first).
    anomaly_max_namespaces: int = Field(default=16, ge=1, le=10_000)
    # References a namespace may hold.
    anomaly_max_references: int = Field(default=5_000, ge=2, le=100_000)
    # Reference images accepted by one registration request.
    anomaly_max_references_per_request: int = Field(default=32, ge=1, le=1000)
    # Calibration: this many references (a fixed pseudo-random draw) are scored leave-one-out
    # against the others; the threshold is the `anomaly_threshold_quantile` of their scores.
    anomaly_calibration_references: int = Field(default=64, ge=2, le=1000)
    anomaly_threshold_quantile: float = Field(default=0.99, gt=0, le=1)
    # Unknown regions smaller than this share of the image area are dropped (namespace override).
    anomaly_min_region_fraction: float = Field(default=0.001, ge=0, lt=1)
    # A region counts as explained by a prompted detection when more than this share of it lies
    # inside that detection's box (then it is not reported as `unknown`).
    anomaly_explained_overlap: float = Field(default=0.5, ge=0, le=1)
    # Gaussian smoothing of the anomaly map, in anomaly-input pixels (0: none).
    anomaly_smoothing_sigma: float = Field(default=4.0, ge=0, le=64)
    # Whether `unknown` regions reject a part (namespace override).
    anomaly_unknown_rejects: bool = True

    # --- prompt store ----------------------------------------------------------------------------
    # The conventional REDIS_URL; unset (and INSPECT_REDIS_URL unset) = the embedded store.
    redis_url: SecretStr | None = Field(default=None, validation_alias="REDIS_URL")
    # Data folder of the embedded default store (a local redis-server, AOF persistence).
    redis_data_dir: Path = Path("data/redis")
    # Seconds between reachability checks of the store (outage detection and recovery).
    store_check_interval_s: float = Field(default=1.0, gt=0, le=300)

    # --- security --------------------------------------------------------------------------------
    # Comma-separated API keys of the `inspect` role (cameras): POST /v1/inspect.
    inspect_api_keys: Annotated[list[SecretStr], NoDecode] = []
    # Comma-separated API keys of the `admin` role (QA engineers): prompts, export, import; an
    # admin key may also inspect. No key in either list: open mode (logged loudly at start-up).
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = []

    # --- logging ---------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per line (production); "text": for a terminal.
    log_format: Literal["json", "text"] = "json"

    @field_validator("inspect_api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("inspect_api_keys", "admin_api_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            text = key.get_secret_value()
            if len(text) < 16:
                raise ValueError("API keys must be at least 16 characters long")
            if not text.isascii() or not text.isprintable() or " " in text:
                raise ValueError("API keys must be printable ASCII without spaces")
        return keys

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> ServiceSettings:
        if self.model_path is not None and not self.model_path.is_file():
            raise ValueError(f"INSPECT_MODEL_PATH {self.model_path} is not a file")
        if self.anomaly_max_references > self.anomaly_max_patches:
            raise ValueError(
                "INSPECT_ANOMALY_MAX_REFERENCES must not exceed INSPECT_ANOMALY_MAX_PATCHES "
                "(every reference keeps at least one patch in memory)"
            )
        return self

    @property
    def open_mode(self) -> bool:
        """True when no API key is configured: every caller has every role."""
        return not self.inspect_api_keys and not self.admin_api_keys


@lru_cache
def get_settings() -> ServiceSettings:
    """Process-wide settings (the environment is read once)."""
    return ServiceSettings()
