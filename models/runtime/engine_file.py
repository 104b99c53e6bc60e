"""The TensorRT engine file: a JSON header (TensorRT version, GPU, model metadata) + the plan.

A serialised TensorRT plan only runs on the TensorRT version and GPU model it was built for, and
fails obscurely (or not at all) elsewhere. Every engine this project writes therefore starts with a
header that says what it was built for, and `check_engine_header` refuses a mismatch with a message
that says what to rebuild. Reading the header needs neither TensorRT nor a GPU.

Layout: MAGIC (8 bytes) | header length (8 bytes, little-endian) | header (UTF-8 JSON) | plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from models.runtime.base import ModelMismatch, check_fingerprint

MAGIC = b"USPTRT01"
ENGINE_FORMAT = "unispector-trt-engine/1"


def engine_path(onnx_path: str | Path, precision: str) -> Path:
    """`x.detector.onnx` -> `x.detector.fp16.engine`, next to the ONNX file."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.name.removesuffix('.onnx')}.{precision}.engine")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_engine(path: str | Path, header: dict, plan: bytes) -> None:
    """Write header + plan atomically."""
    path = Path(path)
    blob = json.dumps({"format": ENGINE_FORMAT, **header}, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            f.write(plan)
        Path(tmp).replace(path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_engine_header(path: str | Path) -> dict:
    """The header alone (cheap: the plan is not read)."""
    with open(path, "rb") as f:
        return _read_header(f, path)


def read_engine(path: str | Path) -> tuple[dict, bytes]:
    """(header, serialised plan)."""
    with open(path, "rb") as f:
        header = _read_header(f, path)
        return header, f.read()


def _read_header(f, path) -> dict:
    if f.read(len(MAGIC)) != MAGIC:
        raise ModelMismatch(
            f"{path} is not an engine written by scripts/build_engine.py (no {MAGIC!r} header); "
            "rebuild it with that script"
        )
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size).decode())
    if header.get("format") != ENGINE_FORMAT:
        raise ModelMismatch(
            f"{path} has engine format {header.get('format')!r}, not {ENGINE_FORMAT}"
        )
    return header


def check_engine_header(
    header: dict,
    path: str | Path,
    trt_version: str,
    gpu_name: str,
    expected_fingerprint: str | None = None,
    graph: str | None = None,
) -> None:
    """Refuse an engine built for another TensorRT version, GPU, model or graph."""
    rebuild = f"rebuild it here with `python scripts/build_engine.py --onnx {header.get('onnx')}`"
    if header.get("trt_version") != trt_version:
        raise ModelMismatch(
            f"TensorRT engine {path} was built with TensorRT {header.get('trt_version')}, but "
            f"TensorRT {trt_version} is installed; engines are not portable across versions: "
            f"{rebuild}"
        )
    if header.get("gpu_name") != gpu_name:
        raise ModelMismatch(
            f"TensorRT engine {path} was built for GPU {header.get('gpu_name')!r}, but this "
            f"machine's GPU is {gpu_name!r}; engines are tuned to one GPU model: {rebuild}"
        )
    if graph is not None and header.get("graph") != graph:
        raise ModelMismatch(f"TensorRT engine {path} holds a {header.get('graph')!r} graph")
    check_fingerprint(
        header.get("fingerprint", ""), expected_fingerprint, f"TensorRT engine {path}"
    )
