"""ONNX export of the two graphs: metadata, dynamic axes, parity with PyTorch, refusals.

A tiny randomly initialised model (128 px) is exported once per session (`tiny_artifacts`, shared
with tests/test_runtime.py); "real images" are synthetic defect images written to PNG/JPEG files
and decoded back, with sizes that need letterboxing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from models.build import build_model
from models.checkpoint import ModelFile, load_model, save_model
from models.data.synthetic import render_defect_image
from models.decode import read_image
from models.export import (
    GraphPaths,
    PromptEncoderGraph,
    export_graphs,
    graph_paths,
    read_metadata,
)
from models.predictor import Predictor, PromptRegion, prototypes_from
from models.runtime.base import ModelInfo, ModelMismatch
from models.runtime.onnx_backend import OnnxRuntimeBackend
from models.runtime.parity import compare_embeddings, compare_raw
from models.runtime.torch_backend import TorchBackend
from models.sspe import (
    circular_window,
    radial_bin_weights,
    radial_spectrum,
    radial_spectrum_dft,
    shifted_dft_matrices,
)
from tests.tiny import TINY_RANDOM

TINY = TINY_RANDOM
RAW_TOL = 1e-3  # max abs difference of logits / boxes / mask logits vs PyTorch
EMB_TOL = 1e-4


@dataclass
class TinyArtifacts:
    model_path: Path
    model_file: ModelFile
    graphs: GraphPaths
    images: list[np.ndarray]  # decoded from files, various sizes
    regions: list[list[PromptRegion]]  # the defects of each image


_CACHE: dict[str, TinyArtifacts] = {}


def tiny_artifacts(tmp_path_factory) -> TinyArtifacts:
    """The tiny model, its exported graphs and real image files (built once per session)."""
    if "tiny" not in _CACHE:
        root = tmp_path_factory.mktemp("runtime")
        torch.manual_seed(0)
        path = root / "tiny.pt"
        save_model(build_model(TINY).eval(), TINY, path, {"score_threshold": 0.3})
        mf = load_model(path)
        graphs = export_graphs(mf, graph_paths(path))
        rng = np.random.default_rng(0)
        images, regions = [], []
        for i, size in enumerate(((97, 150), (150, 97), (128, 128), (64, 200))):
            rgb, inst = render_defect_image(rng, size, ("scratch",), 1, None)
            file = root / f"image{i}.{'png' if i % 2 else 'jpg'}"
            cv2.imwrite(str(file), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            images.append(read_image(file))
            regions.append([PromptRegion(x.box, x.mask) for x in inst])
        _CACHE["tiny"] = TinyArtifacts(path, mf, graphs, images, regions)
    return _CACHE["tiny"]


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> TinyArtifacts:
    return tiny_artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def ort_cpu(art) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(
        art.graphs.detector, art.graphs.prompt_encoder, "cpu", art.model_file.fingerprint
    )


@pytest.mark.parametrize("size", [32, 33, 64])
def test_dft_spectrum_equals_fft_spectrum(size):
    w, win = radial_bin_weights(size, 48), circular_window(size)
    crops = torch.rand(6, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 0.5
    a = radial_spectrum(crops, w, win)
    b = radial_spectrum_dft(crops, w, win, shifted_dft_matrices(size))
    assert torch.allclose(a, b, atol=1e-5)


def test_prompt_encoder_graph_equals_model_in_eager_mode(art):
    """The export wrapper (DFT matmuls) computes what `encode_prompts` (torch.fft) computes."""
    model = art.model_file.model
    pred = Predictor(TorchBackend(art.model_file))
    (lb,), x = pred.preprocess(art.images[:1])
    boxes = lb.boxes_to_network(np.stack([r.box for r in art.regions[0]]))
    masks = np.stack([(lb.mask(r.mask) > 0).astype(np.float32) for r in art.regions[0]])
    args = torch.from_numpy(x), torch.from_numpy(boxes), torch.from_numpy(masks)
    with torch.no_grad():
        ref = model.encode_prompts(*args, torch.zeros(len(boxes), dtype=torch.long))
        out = PromptEncoderGraph(model)(*args)
    assert torch.allclose(ref, out, atol=1e-5)


def test_metadata_is_embedded(art):
    info = ModelInfo.from_model_file(art.model_file)
    for graph, path in (
        ("detector", art.graphs.detector),
        ("prompt_encoder", art.graphs.prompt_encoder),
    ):
        meta = read_metadata(path)
        assert meta["graph"] == graph
        assert meta["fingerprint"] == art.model_file.fingerprint
        assert meta["image_size"] == "128" and meta["embed_dim"] == "64"
        assert meta["preset"] == "small" and float(meta["score_threshold"]) == 0.3
        assert ModelInfo.from_metadata(meta) == info
    assert art.graphs.detector.name == "tiny.detector.onnx"


def test_graph_inputs_have_dynamic_axes(art):
    def dims(path, name):
        model = onnx.load(str(path), load_external_data=False)
        (vi,) = [v for v in [*model.graph.input, *model.graph.output] if v.name == name]
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    assert dims(art.graphs.detector, "images") == ["batch", 3, 128, 128]
    assert dims(art.graphs.detector, "prototypes") == ["classes", 64]
    logits = dims(art.graphs.detector, "pred_logits")
    assert logits[0] == "batch" and logits[2] == "classes"
    assert dims(art.graphs.prompt_encoder, "boxes") == ["regions", 4]
    assert dims(art.graphs.prompt_encoder, "embeddings")[0] == "regions"


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("classes", [1, 5, 40])
def test_detector_parity_dynamic_batch_and_classes(art, ort_cpu, batch, classes):
    ref = TorchBackend(art.model_file)
    _, x = Predictor(ref).preprocess(art.images[:batch])
    rng = np.random.default_rng(classes)
    protos = rng.normal(size=(classes, 64)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    a, b = ref.detect_raw(x, protos), ort_cpu.detect_raw(x, protos)
    assert b["pred_logits"].shape == (batch, 12, classes)
    assert b["pred_masks"].shape == (batch, 12, 32, 32)
    parity = compare_raw(a, b)
    assert parity.worst() < RAW_TOL, parity


def test_prompt_encoder_parity_on_real_regions(art, ort_cpu):
    torch_pred, ort_pred = Predictor(TorchBackend(art.model_file)), Predictor(ort_cpu)
    for image, regions in zip(art.images[:2], art.regions[:2], strict=True):
        regs = regions + [PromptRegion(r.box) for r in regions]  # with masks, then boxes only
        a, b = torch_pred.encode_prompts(image, regs), ort_pred.encode_prompts(image, regs)
        assert a.shape == b.shape == (len(regs), 64)
        assert compare_embeddings(a, b) < EMB_TOL
    protos = prototypes_from(ort_pred.encode_prompts(art.images[0], art.regions[0]))
    assert abs(np.linalg.norm(protos) - 1) < 1e-5


def test_refuses_graphs_of_another_model(art):
    with pytest.raises(ModelMismatch, match="expected"):
        OnnxRuntimeBackend(art.graphs.detector, art.graphs.prompt_encoder, "cpu", "f" * 64)


def test_refuses_swapped_graphs(art):
    with pytest.raises(ModelMismatch, match="prompt_encoder"):
        OnnxRuntimeBackend(art.graphs.prompt_encoder, art.graphs.detector)


def test_refuses_graph_without_metadata(art, tmp_path):
    model = onnx.load(str(art.graphs.detector))
    del model.metadata_props[:]
    bare = tmp_path / "bare.detector.onnx"
    onnx.save(model, str(bare))
    shutil.copy(art.graphs.prompt_encoder, tmp_path / "bare.prompt_encoder.onnx")
    with pytest.raises(ModelMismatch, match="no unispector-graph"):
        OnnxRuntimeBackend(bare, tmp_path / "bare.prompt_encoder.onnx")
