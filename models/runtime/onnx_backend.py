"""ONNX Runtime backend: the exported graphs on the CPU or the CUDA execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.runtime.base import (
    DETECTOR_OUTPUTS,
    GRAPH_DETECTOR,
    GRAPH_PROMPT_ENCODER,
    BackendUnavailable,
    ModelMismatch,
    check_graph_metadata,
)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA execution provider cannot be used here, or None when it can."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if CUDA_PROVIDER not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} (install onnxruntime-gpu, the "
            "project's `gpu` extra, on a machine with an NVIDIA GPU)"
        )
    return None


class OnnxRuntimeBackend:
    """Both graphs in ONNX Runtime sessions; `device` is "cpu" or "cuda".

    Sessions are thread-safe for `run`, so one backend serves concurrent requests.
    """

    def __init__(
        self,
        detector_path: str | Path,
        prompt_encoder_path: str | Path,
        device: str = "cpu",
        expected_fingerprint: str | None = None,
        threads: int = 0,
        cuda_device: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed") from exc
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and (reason := cuda_unavailable_reason()):
            raise BackendUnavailable(reason)
        self.name = f"onnxruntime-{device}"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only: ORT warns about every CPU-placed shape op
        if threads:
            opts.intra_op_num_threads = threads
        providers: list = [CPU_PROVIDER]
        if device == "cuda":
            providers = [(CUDA_PROVIDER, {"device_id": cuda_device}), CPU_PROVIDER]
        sessions = {}
        for graph, path in (
            (GRAPH_DETECTOR, detector_path),
            (GRAPH_PROMPT_ENCODER, prompt_encoder_path),
        ):
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"ONNX graph {path} does not exist")
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            meta = dict(sess.get_modelmeta().custom_metadata_map)
            info = check_graph_metadata(meta, graph, expected_fingerprint, f"ONNX graph {path}")
            if device == "cuda" and sess.get_providers()[0] != CUDA_PROVIDER:
                raise BackendUnavailable(
                    f"onnxruntime could not create the {CUDA_PROVIDER} for {path} "
                    f"(session providers {sess.get_providers()}); is a CUDA GPU visible?"
                )
            sessions[graph] = (sess, info)
        (self._det, det_info), (self._enc, enc_info) = (
            sessions[GRAPH_DETECTOR],
            sessions[GRAPH_PROMPT_ENCODER],
        )
        if det_info != enc_info:
            raise ModelMismatch(
                f"{detector_path} and {prompt_encoder_path} come from different models "
                f"({det_info.fingerprint[:12]}... vs {enc_info.fingerprint[:12]}...)"
            )
        self.info = det_info
        self.paths = (Path(detector_path), Path(prompt_encoder_path))
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._shrink_next = False
        self.device = "cpu" if device == "cpu" else f"cuda:{cuda_device}"

    def release_unused_memory(self) -> None:
        """Hand back, at the end of the next detector run, the host memory ONNX Runtime's arena
        keeps from bigger batches. The arena holds its peak: the service's start-up batch
        calibration, trying up to 8 images of four views each, would otherwise leave about 1 GB
        more resident for the rest of the process (session 22: 1.6 -> 0.6 GB)."""
        self._shrink_next = True

    def detect_raw(self, batch: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
        options, self._shrink_next = (self._shrink if self._shrink_next else None), False
        outs = self._det.run(
            list(DETECTOR_OUTPUTS),
            {
                "images": np.ascontiguousarray(batch, dtype=np.float32),
                "prototypes": np.ascontiguousarray(prototypes, dtype=np.float32),
            },
            options,
        )
        return dict(zip(DETECTOR_OUTPUTS, outs, strict=True))

    def encode_raw(self, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
        (emb,) = self._enc.run(
            ["embeddings"],
            {
                "image": np.ascontiguousarray(image, dtype=np.float32),
                "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
                "region_masks": np.ascontiguousarray(masks, dtype=np.float32),
            },
        )
        return emb
