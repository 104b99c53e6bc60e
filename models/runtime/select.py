"""Choosing the inference backend: the fastest one this machine can run, or the one asked for.

Automatic order (`backend="auto"`), each tried only when its requirements are met:
1. `tensorrt`: the tensorrt package, a CUDA GPU visible to torch, and both engines
   (`<stem>.detector.<fp16|fp32>.engine`, `<stem>.prompt_encoder.<...>.engine`, built by
   scripts/build_engine.py next to the ONNX files) built for this TensorRT version, this GPU and
   this model;
2. `onnxruntime-cuda`: onnxruntime-gpu with the CUDA execution provider, and the ONNX graphs;
3. `onnxruntime-cpu`: the ONNX graphs;
4. `torch`: always possible (the reference).

ONNX graphs are looked for next to the model file (or in `onnx_dir`); when they are missing or were
exported from other weights, they are exported on first use into `onnx_cache_dir/<fingerprint>/`
(a few seconds, once per model) unless `export_missing` is off, in which case the ONNX backends
are skipped with that reason. Every skipped backend is logged with its reason, the choice is
logged at INFO, and `BackendChoice.labels()` gives the metric labels.

An explicit choice (`INSPECT_BACKEND=tensorrt`, ...) never falls back: if that backend cannot run,
`BackendUnavailable` says why. `onnxruntime` means CUDA when available, else CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.checkpoint import ModelFile, load_model
from models.export import GraphPaths, export_graphs, graph_paths, read_metadata
from models.runtime.base import (
    BACKEND_NAMES,
    GRAPH_DETECTOR,
    GRAPH_PROMPT_ENCODER,
    BackendUnavailable,
    InferenceBackend,
    ModelMismatch,
    check_fingerprint,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "weights" / "unispector_small.pt"
BackendName = Literal[
    "auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu", "torch"
]


class RuntimeSettings(BaseSettings):
    """How the runtime picks and prepares its backend (environment prefix INSPECT_)."""

    model_config = SettingsConfigDict(env_prefix="INSPECT_", extra="ignore")

    # Backend: "auto" (fastest available) or one name, which then must work (no fallback).
    backend: BackendName = "auto"
    # Intra-op threads for torch / ONNX Runtime CPU (0: the library default).
    threads: int = Field(default=0, ge=0, le=256)
    # Folder holding the ONNX graphs and engines; None: next to the model file.
    onnx_dir: Path | None = None
    # Where graphs missing from `onnx_dir` are exported on first use (one sub-folder per model).
    onnx_cache_dir: Path = Path.home() / ".cache" / "defect-inspector" / "onnx"
    # Export missing graphs on first use; False skips the ONNX backends when graphs are missing.
    export_missing: bool = True
    # Preferred TensorRT engine precision; the other one is used when this one is not built.
    trt_precision: Literal["fp16", "fp32"] = "fp16"
    # CUDA device index for the GPU backends.
    cuda_device: int = Field(default=0, ge=0, le=64)


@dataclass
class BackendChoice:
    """The backend in use and why (every other backend with the reason it was not used)."""

    backend: InferenceBackend
    reason: str
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.backend.name

    def labels(self) -> dict[str, str]:
        """Metric labels, e.g. for an `inspect_backend` Info metric."""
        return {
            "backend": self.backend.name,
            "device": self.backend.device,
            "model_fingerprint": self.backend.info.fingerprint[:12],
        }


class _Context:
    """Lazily loaded model file and graph paths shared by the candidate probes."""

    def __init__(self, model_path: Path, settings: RuntimeSettings, expected: str | None):
        self.model_path, self.settings, self.expected = model_path, settings, expected
        self._file: ModelFile | None = None
        self._graphs: GraphPaths | BackendUnavailable | None = None

    @property
    def file(self) -> ModelFile:
        if self._file is None:
            self._file = load_model(self.model_path)
            check_fingerprint(
                self._file.fingerprint, self.expected, f"model file {self.model_path}"
            )
        return self._file

    @property
    def fingerprint(self) -> str:
        return self.file.fingerprint

    def graphs(self) -> GraphPaths:
        """ONNX graphs of this model: found, or exported into the cache; raises with a reason."""
        if self._graphs is None:
            try:
                self._graphs = _find_or_export_graphs(self)
            except BackendUnavailable as exc:
                self._graphs = exc  # every ONNX-based candidate fails for the same reason, once
        if isinstance(self._graphs, BackendUnavailable):
            raise self._graphs
        return self._graphs


def _graphs_match(paths: GraphPaths, fingerprint: str) -> str | None:
    """None when both graphs exist and come from `fingerprint`, else why not."""
    if not paths.exist():
        names = f"{paths.detector.name} / {paths.prompt_encoder.name}"
        return f"{names} not found in {paths.detector.parent}"
    for graph, path in (
        (GRAPH_DETECTOR, paths.detector),
        (GRAPH_PROMPT_ENCODER, paths.prompt_encoder),
    ):
        meta = read_metadata(path)
        if meta.get("graph") != graph or meta.get("fingerprint") != fingerprint:
            return (
                f"{path} was exported from model {meta.get('fingerprint', '?')[:12]}..., not "
                f"{fingerprint[:12]}... (stale export)"
            )
    return None


def _find_or_export_graphs(ctx: _Context) -> GraphPaths:
    fp = ctx.fingerprint
    local = graph_paths(ctx.model_path, ctx.settings.onnx_dir)
    why = _graphs_match(local, fp)
    if why is None:
        return local
    cached = graph_paths(ctx.model_path, ctx.settings.onnx_cache_dir / fp[:16])
    if _graphs_match(cached, fp) is None:
        logger.info("using ONNX graphs from the cache %s (%s)", cached.detector.parent, why)
        return cached
    if not ctx.settings.export_missing:
        raise BackendUnavailable(f"no ONNX graphs for this model ({why}) and export_missing is off")
    logger.warning("%s; exporting ONNX graphs into %s", why, cached.detector.parent)
    try:
        return export_graphs(ctx.file, cached)
    except Exception as exc:  # the exporter raises many types; the reason is what matters
        raise BackendUnavailable(
            f"ONNX export into {cached.detector.parent} failed: {exc}"
        ) from exc


def _engines(ctx: _Context) -> tuple[Path, Path]:
    from models.runtime.engine_file import engine_path

    graphs = ctx.graphs()
    pref = ctx.settings.trt_precision
    for precision in (pref, "fp32" if pref == "fp16" else "fp16"):
        det, enc = (
            engine_path(graphs.detector, precision),
            engine_path(graphs.prompt_encoder, precision),
        )
        if det.is_file() and enc.is_file():
            return det, enc
    raise BackendUnavailable(
        f"no TensorRT engines next to {graphs.detector} (build them with "
        f"`python scripts/build_engine.py --onnx {graphs.detector}`)"
    )


def _make(name: str, ctx: _Context) -> InferenceBackend:
    s = ctx.settings
    if name == "tensorrt":
        from models.runtime.tensorrt_backend import TensorRTBackend, tensorrt_unavailable_reason

        if reason := tensorrt_unavailable_reason():
            raise BackendUnavailable(reason)
        det, enc = _engines(ctx)
        return TensorRTBackend(det, enc, ctx.fingerprint, s.cuda_device)
    if name.startswith("onnxruntime"):
        from models.runtime.onnx_backend import OnnxRuntimeBackend, cuda_unavailable_reason

        device = name.removeprefix("onnxruntime-")
        if device == "cuda" and (reason := cuda_unavailable_reason()):
            raise BackendUnavailable(reason)
        graphs = ctx.graphs()
        return OnnxRuntimeBackend(
            graphs.detector,
            graphs.prompt_encoder,
            device,
            ctx.fingerprint,
            s.threads,
            s.cuda_device,
        )
    if name == "torch":
        from models.runtime.torch_backend import TorchBackend

        return TorchBackend(ctx.file, s.threads)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")


def select_backend(
    model_path: str | Path | None = None,
    settings: RuntimeSettings | None = None,
    expected_fingerprint: str | None = None,
) -> BackendChoice:
    """The backend to serve `model_path` with (see the module docstring for the rules).

    `expected_fingerprint` (e.g. the prompt store's) refuses a model file, graph or engine made
    from other weights with `ModelMismatch`.
    """
    settings = settings or RuntimeSettings()
    model_path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
    ctx = _Context(model_path, settings, expected_fingerprint)
    ctx.file  # noqa: B018 - load (and check) the model first: every backend needs its fingerprint
    asked = settings.backend
    if asked == "auto":
        candidates = list(BACKEND_NAMES)
    elif asked == "onnxruntime":
        candidates = ["onnxruntime-cuda", "onnxruntime-cpu"]
    else:
        candidates = [asked]
    skipped: dict[str, str] = {}
    for name in candidates:
        try:
            backend = _make(name, ctx)
        except (BackendUnavailable, ModelMismatch, FileNotFoundError) as exc:
            skipped[name] = str(exc)
            level = (
                logging.INFO if asked == "auto" and name != "onnxruntime-cpu" else logging.WARNING
            )
            logger.log(level, "inference backend %s not used: %s", name, exc)
            continue
        reason = "fastest available" if asked == "auto" else f"asked for {asked!r}"
        choice = BackendChoice(backend, reason, skipped)
        logger.info(
            "inference backend: %s on %s (%s; model %s...)",
            backend.name,
            backend.device,
            reason,
            backend.info.fingerprint[:12],
        )
        return choice
    raise BackendUnavailable(
        f"inference backend {asked!r} cannot run here: "
        + "; ".join(f"{k}: {v}" for k, v in skipped.items())
    )
