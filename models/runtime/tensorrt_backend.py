"""TensorRT backend (TensorRT 10 Python API) and the engine builder.

Engines are built from the exported ONNX graphs (`build_engine`), with one optimisation profile
over the dynamic axes (batch and C for the detector, R for the prompt encoder), FP16 or FP32, and a
timing cache that makes rebuilds fast. Each engine file carries a header (models/runtime/
engine_file.py) naming the TensorRT version and GPU it was built for; loading refuses a mismatch.

Buffers are torch CUDA tensors: inputs are copied to the GPU on the backend's own CUDA stream, the
engine runs with `execute_async_v3` on that stream, and outputs come back as numpy. One execution
context per graph is shared under a lock (a context runs one inference at a time).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.export import read_metadata
from models.runtime.base import (
    DETECTOR_OUTPUTS,
    GRAPH_DETECTOR,
    GRAPH_PROMPT_ENCODER,
    BackendUnavailable,
    ModelInfo,
    ModelMismatch,
    check_graph_metadata,
)
from models.runtime.engine_file import (
    check_engine_header,
    file_sha256,
    read_engine,
    write_engine,
)

logger = logging.getLogger(__name__)


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (package, torch CUDA, GPU), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (the project's `gpu` extra)"
    import torch

    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} sees no CUDA GPU (the TensorRT backend keeps its buffers "
            "in torch CUDA tensors)"
        )
    return None


def current_gpu_name(device: int = 0) -> str:
    import torch

    return torch.cuda.get_device_name(device)


@dataclass(frozen=True)
class Profile:
    """min / opt / max of one dynamic axis."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"profile needs 1 <= min <= opt <= max, got {self}")


def _input_shapes(graph: str, info: ModelInfo, dims: dict[str, Profile]) -> dict[str, tuple]:
    """(min, opt, max) shapes of each input of a graph."""
    s, d = info.image_size, info.embed_dim

    def three(fn):
        return tuple(fn(k) for k in ("min", "opt", "max"))

    if graph == GRAPH_DETECTOR:
        b, c = dims["batch"], dims["classes"]
        return {
            "images": three(lambda k: (getattr(b, k), 3, s, s)),
            "prototypes": three(lambda k: (getattr(c, k), d)),
        }
    r = dims["regions"]
    return {
        "image": ((1, 3, s, s),) * 3,
        "boxes": three(lambda k: (getattr(r, k), 4)),
        "region_masks": three(lambda k: (getattr(r, k), s, s)),
    }


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    precision: str = "fp16",
    dims: dict[str, Profile] | None = None,
    timing_cache: str | Path | None = None,
    workspace_gib: float = 4.0,
    device: int = 0,
) -> dict:
    """Build and serialise a TensorRT engine from one exported graph; returns its header.

    `dims`: for the detector {"batch": Profile, "classes": Profile}; for the prompt encoder
    {"regions": Profile}. The timing cache is read if it exists and written back after the build.
    """
    if reason := tensorrt_unavailable_reason():
        raise BackendUnavailable(reason)
    import tensorrt as trt
    import torch

    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    meta = read_metadata(onnx_path)
    graph = meta.get("graph", "")
    info = check_graph_metadata(meta, graph, None, f"ONNX graph {onnx_path}")
    dims = dims or default_profiles(graph)
    torch.cuda.set_device(device)

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in 10.x
            logger.warning("this GPU has no fast FP16; building FP16 anyway as asked")
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("timing cache %s is from another TensorRT/GPU; starting empty", timing_cache)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shapes = _input_shapes(graph, info, dims)
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    build_s = time.perf_counter() - started
    if timing_cache is not None:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    header = {
        "trt_version": trt.__version__,
        "gpu_name": current_gpu_name(device),
        "compute_capability": list(torch.cuda.get_device_capability(device)),
        "precision": precision,
        "graph": graph,
        "fingerprint": info.fingerprint,
        "onnx": str(onnx_path),
        "onnx_sha256": file_sha256(onnx_path),
        "onnx_metadata": meta,
        "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
        "build_seconds": round(build_s, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_engine(out_path, header, bytes(plan))
    return header


def default_profiles(graph: str) -> dict[str, Profile]:
    if graph == GRAPH_DETECTOR:
        return {"batch": Profile(1, 8, 16), "classes": Profile(1, 8, 64)}
    if graph == GRAPH_PROMPT_ENCODER:
        return {"regions": Profile(1, 4, 64)}
    raise ValueError(f"unknown graph {graph!r}")


_TORCH_DTYPES = {  # TensorRT DataType name -> torch dtype name
    "FLOAT": "float32",
    "HALF": "float16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "INT8": "int8",
}


class _Engine:
    """One deserialised engine with its execution context, stream and lock."""

    def __init__(self, path: Path, graph: str, expected_fingerprint: str | None, device: int):
        import tensorrt as trt
        import torch

        header, plan = read_engine(path)
        check_engine_header(
            header, path, trt.__version__, current_gpu_name(device), expected_fingerprint, graph
        )
        self.header = header
        self.info = check_graph_metadata(
            header["onnx_metadata"], graph, expected_fingerprint, str(path)
        )
        self.device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelMismatch(f"TensorRT could not deserialise {path}; rebuild it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {
            n: getattr(torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name]) for n in names
        }
        self.limits = {
            n: [tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)] for n in self.inputs
        }
        self.stream = torch.cuda.Stream(device=self.device)
        self.lock = threading.Lock()

    def check_shapes(self, feeds: dict[str, np.ndarray]) -> None:
        for name, arr in feeds.items():
            lo, _, hi = self.limits[name]
            if len(arr.shape) != len(lo) or any(
                not a <= x <= b for x, a, b in zip(arr.shape, lo, hi, strict=True)
            ):
                raise ValueError(
                    f"input {name} of shape {tuple(arr.shape)} is outside the engine's profile "
                    f"[{lo} .. {hi}]; rebuild the engine with a wider profile "
                    "(scripts/build_engine.py --batch/--classes/--regions)"
                )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        self.check_shapes(feeds)
        with self.lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            keep = []  # the device buffers must outlive the asynchronous execution
            for name in self.inputs:
                t = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                t = t.to(self.device, non_blocking=False).to(self.dtypes[name]).contiguous()
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise ValueError(f"TensorRT refused shape {tuple(t.shape)} for input {name}")
                self.context.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                t = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, t.data_ptr())
                outs[name] = t
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
            result = {k: v.float().cpu().numpy() for k, v in outs.items()}  # syncs the stream
            self.stream.synchronize()
            del keep
        return result


class TensorRTBackend:
    """Both graphs as TensorRT engines on one NVIDIA GPU."""

    name = "tensorrt"

    def __init__(
        self,
        detector_engine: str | Path,
        prompt_encoder_engine: str | Path,
        expected_fingerprint: str | None = None,
        cuda_device: int = 0,
    ) -> None:
        if reason := tensorrt_unavailable_reason():
            raise BackendUnavailable(reason)
        for p in (detector_engine, prompt_encoder_engine):
            if not Path(p).is_file():
                raise FileNotFoundError(f"TensorRT engine {p} does not exist")
        self._det = _Engine(
            Path(detector_engine), GRAPH_DETECTOR, expected_fingerprint, cuda_device
        )
        self._enc = _Engine(
            Path(prompt_encoder_engine),
            GRAPH_PROMPT_ENCODER,
            self._det.info.fingerprint,
            cuda_device,
        )
        self.info = self._det.info
        self.precision = self._det.header["precision"]
        self.device = current_gpu_name(cuda_device)
        self.max_batch = self._det.limits["images"][2][0]

    def detect_raw(self, batch: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
        """Batches larger than the engine's profile are run in chunks."""
        chunks = []
        for start in range(0, len(batch), self.max_batch):
            part = np.ascontiguousarray(batch[start : start + self.max_batch], dtype=np.float32)
            chunks.append(
                self._det.run(
                    {"images": part, "prototypes": np.asarray(prototypes, dtype=np.float32)}
                )
            )
        return {k: np.concatenate([c[k] for c in chunks]) for k in DETECTOR_OUTPUTS}

    def encode_raw(self, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
        limit = self._enc.limits["boxes"][2][0]
        parts = [
            self._enc.run(
                {
                    "image": np.asarray(image, dtype=np.float32),
                    "boxes": np.asarray(boxes[i : i + limit], dtype=np.float32),
                    "region_masks": np.asarray(masks[i : i + limit], dtype=np.float32),
                }
            )["embeddings"]
            for i in range(0, len(boxes), limit)
        ]
        return np.concatenate(parts)
