"""Trace-friendly export wrappers and the ONNX export of the two deployed graphs (STYLE item 8).

- `DetectorGraph`: (images (B, 3, S, S), prototypes (C, d)) -> (pred_logits (B, Q, C),
  pred_boxes (B, Q, 4), pred_masks (B, Q, S/4, S/4)); B and C are dynamic axes.
- `PromptEncoderGraph`: (image (1, 3, S, S), boxes (R, 4), region_masks (R, S, S)) ->
  embeddings (R, d); R is dynamic. The SSPE FFT becomes two constant DFT matmuls
  (`models.sspe.radial_spectrum_dft`): `torch.fft` does not export to ONNX.

Both take RGB in [0, 1] (normalisation is inside the graph) and carry the model's metadata
(`ModelInfo.to_metadata`) in ONNX `metadata_props`, so the runtime can refuse a graph made from
another model. Files are written atomically, named after the model file:
`unispector_small.pt` -> `unispector_small.detector.onnx`, `unispector_small.prompt_encoder.onnx`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from torch import Tensor, nn

from models.checkpoint import ModelFile
from models.detector import UniSpector
from models.runtime.base import (
    DETECTOR_OUTPUTS,
    GRAPH_DETECTOR,
    GRAPH_PROMPT_ENCODER,
    ModelInfo,
)

DEFAULT_OPSET = 17  # LayerNormalization is native from 17; GridSample from 16
DETECTOR_INPUTS = ("images", "prototypes")
ENCODER_INPUTS = ("image", "boxes", "region_masks")
ENCODER_OUTPUTS = ("embeddings",)


class DetectorGraph(nn.Module):
    """The per-inspection graph: only the three tensors the postprocessing needs."""

    def __init__(self, model: UniSpector) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, prototypes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images (B, 3, S, S) in [0, 1]; prototypes (C, d) shared by the batch."""
        out = self.model(images, prototypes)
        return out["pred_logits"], out["pred_boxes"], out["pred_masks"]


class PromptEncoderGraph(nn.Module):
    """Exemplar embeddings of R regions of one prompt image, without torch.fft."""

    def __init__(self, model: UniSpector) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, boxes: Tensor, region_masks: Tensor) -> Tensor:
        """image (1, 3, S, S) in [0, 1]; boxes (R, 4) normalised xyxy; region_masks (R, S, S)."""
        m = self.model
        batch_index = torch.zeros_like(boxes[:, 0], dtype=torch.long)  # (R,) all regions on image 0
        feats = m.encode_image(image)
        return m.prompt_encoder.forward_exportable(
            m.normalise(image), feats.prompt_map, boxes, region_masks, batch_index
        )


@dataclass(frozen=True)
class GraphPaths:
    """Where the two ONNX graphs of one model live."""

    detector: Path
    prompt_encoder: Path

    def exist(self) -> bool:
        return self.detector.is_file() and self.prompt_encoder.is_file()


def graph_paths(model_path: str | Path, directory: str | Path | None = None) -> GraphPaths:
    """Default ONNX locations: next to the model file, or in `directory` with the same stem."""
    model_path = Path(model_path)
    folder = Path(directory) if directory is not None else model_path.parent
    stem = model_path.name.removesuffix(".pt")
    return GraphPaths(
        folder / f"{stem}.{GRAPH_DETECTOR}.onnx", folder / f"{stem}.{GRAPH_PROMPT_ENCODER}.onnx"
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (the graph's weights are not needed to read them)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def example_inputs(info: ModelInfo, batch: int = 2, classes: int = 3, regions: int = 2):
    """Tracing inputs for both graphs (values do not matter, shapes do)."""
    s, d = info.image_size, info.embed_dim
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, s, s, generator=g)
    prototypes = torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=-1)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.9, 0.8]])[:regions]
    masks = torch.zeros(regions, s, s)
    for i, (x0, y0, x1, y1) in enumerate((boxes * s).round().long().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    return (images, prototypes), (images[:1], boxes, masks)


def _save_with_metadata(tmp_path: Path, path: Path, meta: dict[str, str]) -> None:
    model = onnx.load(str(tmp_path))
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, staged)
        Path(staged).replace(path)
    finally:
        Path(staged).unlink(missing_ok=True)


def export_graphs(
    model_file: ModelFile, paths: GraphPaths, opset: int = DEFAULT_OPSET
) -> GraphPaths:
    """Export the detector and prompt-encoder graphs with their metadata; returns `paths`."""
    info = ModelInfo.from_model_file(model_file)
    model = model_file.model.eval().cpu()
    det_args, enc_args = example_inputs(info)
    jobs = (
        (
            DetectorGraph(model),
            det_args,
            paths.detector,
            DETECTOR_INPUTS,
            DETECTOR_OUTPUTS,
            {
                "images": {0: "batch"},
                "prototypes": {0: "classes"},
                "pred_logits": {0: "batch", 2: "classes"},
                "pred_boxes": {0: "batch"},
                "pred_masks": {0: "batch"},
            },
            GRAPH_DETECTOR,
        ),
        (
            PromptEncoderGraph(model),
            enc_args,
            paths.prompt_encoder,
            ENCODER_INPUTS,
            ENCODER_OUTPUTS,
            {"boxes": {0: "regions"}, "region_masks": {0: "regions"}, "embeddings": {0: "regions"}},
            GRAPH_PROMPT_ENCODER,
        ),
    )
    for module, args, path, inputs, outputs, axes, graph in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "graph.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                # The tracer warns about Python ints taken from shapes (S is fixed per model).
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
                # The TorchScript exporter is chosen on purpose (dynamic axes on a traced graph,
                # opset 17 for TensorRT); its deprecation notices are not actionable here.
                warnings.filterwarnings("ignore", message="You are using the legacy TorchScript")
                warnings.filterwarnings("ignore", message="The feature will be removed")
                torch.onnx.export(
                    module.eval(),
                    args,
                    str(raw),
                    input_names=list(inputs),
                    output_names=list(outputs),
                    dynamic_axes=axes,
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
            _save_with_metadata(raw, path, {**info.to_metadata(graph), "opset": str(opset)})
    return paths


def check_images(n: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Synthetic defect images written to PNG and decoded back (sizes that need letterboxing),
    for export checks when no real image folder is given."""
    from models.data.synthetic import render_defect_image
    from models.decode import read_image

    rng = np.random.default_rng(seed)
    sizes = [(97, 150), (150, 97), (240, 320), (512, 384), (200, 64), (128, 128)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            rgb, _ = render_defect_image(rng, sizes[i % len(sizes)], ("scratch", "spot"), 2, None)
            path = Path(tmp) / f"check{i}.png"
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            out.append(read_image(path))
    return out


def check_export(
    model_file: ModelFile,
    paths: GraphPaths,
    images: list[np.ndarray],
    classes: int = 5,
    tolerance: float = 1e-3,
) -> dict:
    """ONNX Runtime (CPU) against PyTorch on `images` (uint8 RGB, any size).

    Prototypes are real: embeddings of `classes` regions (centre boxes of the images, through the
    PyTorch prompt encoder). Reports the max abs differences of the raw detector outputs (batch 1
    and the whole list) with each output's scale, of the prompt embeddings (ONNX encoder vs
    PyTorch), and the detection match at the model's threshold and at 0.05 (top 20); `ok` is
    whether every difference is within `tolerance` (scaled by the output's magnitude, see
    `RawParity.within`).
    """
    from models.predictor import Predictor, PromptRegion
    from models.runtime.onnx_backend import OnnxRuntimeBackend
    from models.runtime.parity import compare_detections, compare_embeddings, compare_raw
    from models.runtime.torch_backend import TorchBackend

    ref = Predictor(TorchBackend(model_file))
    cand = Predictor(
        OnnxRuntimeBackend(paths.detector, paths.prompt_encoder, "cpu", model_file.fingerprint)
    )
    emb_diff, rows = 0.0, []
    for i in range(classes):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        f = 0.15 + 0.05 * (i // len(images))  # another region when images repeat
        region = [PromptRegion(np.array([f * w, f * h, (1 - f) * w, (1 - f) * h], np.float32))]
        a, b = ref.encode_prompts(image, region), cand.encode_prompts(image, region)
        emb_diff = max(emb_diff, compare_embeddings(a, b))
        rows.append(a[0])
    protos = np.stack(rows)
    raw, ok = {}, emb_diff <= tolerance
    for name, subset in (("batch1", images[:1]), (f"batch{len(images)}", images)):
        boxes, batch = ref.preprocess(subset)
        ref_out, cand_out = ref.raw(batch, protos), cand.raw(batch, protos)
        parity = compare_raw(ref_out, cand_out)
        raw[name] = parity.to_dict()
        ok = ok and parity.within(tolerance)
    dets = {
        f"threshold_{thr:g}": compare_detections(
            ref.postprocess(ref_out, boxes, thr, 20), cand.postprocess(cand_out, boxes, thr, 20)
        ).to_dict()
        for thr in (ref.score_threshold, 0.05)
    }
    return {
        "images": len(images),
        "classes": classes,
        "raw_max_abs_diff": raw,
        "embedding_max_abs_diff": emb_diff,
        "detections": dets,
        "tolerance": f"{tolerance:g} x max(1, max |output|) per output; {tolerance:g} embeddings",
        "ok": bool(ok),
    }
