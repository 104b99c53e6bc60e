"""The runtime: every available backend against the PyTorch reference on real images, automatic
selection and its overrides, and the TensorRT engine file's refusals.

Backends this machine lacks (TensorRT, ONNX Runtime's CUDA provider) are skipped with the exact
reason the runtime gives, never imitated.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from models.predictor import Predictor, PromptRegion, TorchPredictor, prototypes_from
from models.runtime.base import BackendUnavailable, InferenceBackend, ModelMismatch
from models.runtime.engine_file import (
    check_engine_header,
    engine_path,
    read_engine,
    read_engine_header,
    write_engine,
)
from models.runtime.onnx_backend import OnnxRuntimeBackend, cuda_unavailable_reason
from models.runtime.parity import compare_detections, compare_embeddings, compare_raw
from models.runtime.select import RuntimeSettings, select_backend
from models.runtime.tensorrt_backend import tensorrt_unavailable_reason
from models.runtime.torch_backend import TorchBackend
from tests.test_export import RAW_TOL, tiny_artifacts

BACKENDS = ["onnxruntime-cpu", "onnxruntime-cuda", "tensorrt-fp32", "tensorrt-fp16"]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(art) -> Predictor:
    return TorchPredictor(art.model_file)


@pytest.fixture(scope="module")
def prototypes(art, reference) -> np.ndarray:
    """(C=3, d): one real prototype per image region set, from the reference encoder."""
    rows = [
        prototypes_from(reference.encode_prompts(im, regs))
        for im, regs in zip(art.images[:3], art.regions[:3], strict=True)
    ]
    return np.stack(rows)


def make_backend(name: str, art, tmp_path_factory) -> InferenceBackend:
    fp = art.model_file.fingerprint
    if name == "onnxruntime-cpu":
        return OnnxRuntimeBackend(art.graphs.detector, art.graphs.prompt_encoder, "cpu", fp)
    if name == "onnxruntime-cuda":
        if reason := cuda_unavailable_reason():
            pytest.skip(reason)
        return OnnxRuntimeBackend(art.graphs.detector, art.graphs.prompt_encoder, "cuda", fp)
    if reason := tensorrt_unavailable_reason():
        pytest.skip(reason)
    from models.runtime.tensorrt_backend import Profile, TensorRTBackend, build_engine

    precision = name.split("-")[1]
    out = tmp_path_factory.mktemp(f"trt-{precision}")
    cache = out / "timing.cache"
    det = engine_path(out / art.graphs.detector.name, precision)
    enc = engine_path(out / art.graphs.prompt_encoder.name, precision)
    dims = {"batch": Profile(1, 4, 8), "classes": Profile(1, 5, 40)}
    build_engine(art.graphs.detector, det, precision, dims, cache)
    build_engine(art.graphs.prompt_encoder, enc, precision, {"regions": Profile(1, 2, 8)}, cache)
    assert cache.is_file()
    return TensorRTBackend(det, enc, fp)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_matches_torch_on_real_images(name, art, reference, prototypes, tmp_path_factory):
    backend = make_backend(name, art, tmp_path_factory)
    cand = Predictor(backend)
    fp16 = name.endswith("fp16")
    # raw outputs (batch 1 and 4) and the detections above a threshold decoded from them
    for n in (1, 4):
        boxes, batch = reference.preprocess(art.images[:n])
        ref_out, cand_out = reference.raw(batch, prototypes), cand.raw(batch, prototypes)
        parity = compare_raw(ref_out, cand_out)
        assert parity.worst() < (5e-2 if fp16 else RAW_TOL), parity
    # random weights: scores cluster, so keep the top ones
    det = compare_detections(
        reference.postprocess(ref_out, boxes, 0.0, 5), cand.postprocess(cand_out, boxes, 0.0, 5)
    )
    assert det.reference > 0
    assert det.ok(min_iou=0.95, max_score_diff=0.02), det
    # the same through the whole predictor (preprocess + model + postprocess) on one image
    one = compare_detections(
        reference.detect(art.images[1:2], prototypes, 0.0, 5),
        cand.detect(art.images[1:2], prototypes, 0.0, 5),
    )
    assert one.ok(), one
    # prompt embeddings
    for image, regions in zip(art.images[:2], art.regions[:2], strict=True):
        emb = compare_embeddings(
            reference.encode_prompts(image, regions), cand.encode_prompts(image, regions)
        )
        assert emb < (1e-2 if fp16 else 1e-4)


def test_predictor_times_each_stage(art, reference, prototypes):
    dets, times = reference.detect_timed(art.images[:2], prototypes)
    assert len(dets) == 2
    assert times.preprocess > 0 and times.predict > 0 and times.postprocess > 0


def test_onnx_runtime_hands_back_the_memory_of_a_big_batch(art, prototypes):
    """The service's start-up batch calibration runs batches bigger than it then uses; ONNX
    Runtime's arena keeps their peak resident until asked to let it go."""
    from models.runtime.bench import current_rss_mib

    if current_rss_mib() is None:
        pytest.skip("no /proc to read resident memory from")
    be = make_backend("onnxruntime-cpu", art, None)
    rng = np.random.default_rng(0)
    size = be.info.image_size
    one = rng.random((1, 3, size, size), dtype=np.float32)
    be.detect_raw(rng.random((64, 3, size, size), dtype=np.float32), prototypes)
    be.detect_raw(one, prototypes)
    kept = current_rss_mib()
    Predictor(be).release_unused_memory()
    first = be.detect_raw(one, prototypes)
    assert current_rss_mib() < kept - 100  # about 350 MB for the tiny model's 64 images
    again = be.detect_raw(one, prototypes)  # the answers are the same
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])


def test_torch_predictor_keeps_its_interface(art, reference):
    assert reference.fingerprint == art.model_file.fingerprint
    assert reference.score_threshold == pytest.approx(0.3)
    assert reference.embed_dim == 64 and reference.size == 128
    assert reference.backend_name == "torch"
    assert reference.encode_prompts(art.images[0], []).shape == (0, 64)
    loaded = TorchPredictor.load(art.model_path, threads=0)
    assert loaded.model is not None and loaded.file.fingerprint == reference.fingerprint


def expected_auto_choice() -> str:
    """No engines are built next to the tiny graphs, so TensorRT is never the automatic choice."""
    return "onnxruntime-cuda" if cuda_unavailable_reason() is None else "onnxruntime-cpu"


def test_auto_selection_picks_the_fastest_available_and_logs_why(art, tmp_path, caplog):
    settings = RuntimeSettings(backend="auto", onnx_cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="models.runtime.select"):
        choice = select_backend(art.model_path, settings)
    assert choice.name == expected_auto_choice()
    assert "tensorrt" in choice.skipped
    assert choice.labels()["backend"] == choice.name
    assert choice.labels()["model_fingerprint"] == art.model_file.fingerprint[:12]
    assert f"inference backend: {choice.name}" in caplog.text
    if tensorrt_unavailable_reason():
        assert choice.skipped["tensorrt"] == tensorrt_unavailable_reason()
    assert not (tmp_path / "cache").exists()  # the graphs next to the model were used


def test_setting_overrides_the_choice(art, tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECT_BACKEND", "torch")
    choice = select_backend(art.model_path, RuntimeSettings(onnx_cache_dir=tmp_path))
    assert choice.name == "torch" and choice.reason == "asked for 'torch'"
    monkeypatch.setenv("INSPECT_BACKEND", "onnxruntime")
    choice = select_backend(art.model_path, RuntimeSettings(onnx_cache_dir=tmp_path))
    assert choice.name == expected_auto_choice()


@pytest.mark.parametrize("name", ["tensorrt", "onnxruntime-cuda"])
def test_explicit_backend_never_falls_back(art, tmp_path, name):
    reason = tensorrt_unavailable_reason() if name == "tensorrt" else cuda_unavailable_reason()
    if reason is None:
        pytest.skip(f"{name} is available on this machine")
    with pytest.raises(BackendUnavailable, match="cannot run here") as err:
        select_backend(art.model_path, RuntimeSettings(backend=name, onnx_cache_dir=tmp_path))
    assert reason in str(err.value)


def test_missing_graphs_are_exported_into_the_cache_once(art, tmp_path, caplog):
    model = tmp_path / "models" / "tiny.pt"
    model.parent.mkdir()
    shutil.copy(art.model_path, model)
    cache = tmp_path / "cache"
    settings = RuntimeSettings(backend="onnxruntime-cpu", onnx_cache_dir=cache)
    with caplog.at_level(logging.WARNING, logger="models.runtime.select"):
        first = select_backend(model, settings)
    assert "exporting ONNX graphs" in caplog.text
    folder = cache / art.model_file.fingerprint[:16]
    assert (folder / "tiny.detector.onnx").is_file()
    assert first.backend.paths[0] == folder / "tiny.detector.onnx"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="models.runtime.select"):
        second = select_backend(model, settings)
    assert "exporting" not in caplog.text and "from the cache" in caplog.text
    assert second.backend.paths == first.backend.paths


def test_stale_graphs_next_to_the_model_are_not_used(art, tmp_path):
    """Graphs of another model beside the model file: refused, the cache (exported) is used."""
    model = tmp_path / "tiny.pt"
    shutil.copy(art.model_path, model)
    cache_folder = tmp_path / "cache" / art.model_file.fingerprint[:16]
    cache_folder.mkdir(parents=True)
    for p in (art.graphs.detector, art.graphs.prompt_encoder):
        shutil.copy(p, cache_folder / p.name)
    # "stale" graphs: a valid export, but of a different fingerprint (metadata rewritten)
    import onnx

    for p in (art.graphs.detector, art.graphs.prompt_encoder):
        m = onnx.load(str(p))
        for prop in m.metadata_props:
            if prop.key == "fingerprint":
                prop.value = "0" * 64
        onnx.save(m, str(tmp_path / p.name))
    choice = select_backend(
        model, RuntimeSettings(backend="onnxruntime-cpu", onnx_cache_dir=tmp_path / "cache")
    )
    assert choice.backend.paths[0].parent == cache_folder
    with pytest.raises(ModelMismatch, match="must never mix"):
        OnnxRuntimeBackend(
            tmp_path / art.graphs.detector.name,
            tmp_path / art.graphs.prompt_encoder.name,
            expected_fingerprint=art.model_file.fingerprint,
        )


def test_without_graphs_and_export_off_torch_is_used_with_the_reason(art, tmp_path):
    model = tmp_path / "tiny.pt"
    shutil.copy(art.model_path, model)
    settings = RuntimeSettings(onnx_cache_dir=tmp_path / "cache", export_missing=False)
    choice = select_backend(model, settings)
    assert choice.name == "torch"
    assert "export_missing is off" in choice.skipped["onnxruntime-cpu"]


def test_expected_fingerprint_refuses_another_model(art, tmp_path):
    with pytest.raises(ModelMismatch, match="must never mix"):
        select_backend(art.model_path, RuntimeSettings(onnx_cache_dir=tmp_path), "e" * 64)


# ---- TensorRT engine files ------------------------------------------------------------------


def engine_header(**overrides) -> dict:
    header = {
        "trt_version": "10.3.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "precision": "fp16",
        "graph": "detector",
        "fingerprint": "a" * 64,
        "onnx": "models/weights/unispector_small.detector.onnx",
    }
    return {**header, **overrides}


def test_engine_file_round_trip(tmp_path):
    path = tmp_path / "x.detector.fp16.engine"
    write_engine(path, engine_header(), b"\x00plan bytes\xff")
    header, plan = read_engine(path)
    assert plan == b"\x00plan bytes\xff"
    assert header["trt_version"] == "10.3.0" and read_engine_header(path) == header
    assert engine_path(tmp_path / "m.detector.onnx", "fp32").name == "m.detector.fp32.engine"


def test_engine_for_another_tensorrt_version_is_refused(tmp_path):
    header = engine_header()
    check_engine_header(header, "e", "10.3.0", "NVIDIA H100 80GB HBM3", "a" * 64, "detector")
    with pytest.raises(ModelMismatch, match=r"built with TensorRT 10\.3\.0.*10\.7\.0 is installed"):
        check_engine_header(header, "e", "10.7.0", "NVIDIA H100 80GB HBM3")


def test_engine_for_another_gpu_is_refused(tmp_path):
    with pytest.raises(ModelMismatch, match="built for GPU 'NVIDIA H100 80GB HBM3'.*'NVIDIA L4'"):
        check_engine_header(engine_header(), "e", "10.3.0", "NVIDIA L4")


def test_engine_of_another_model_or_graph_is_refused():
    with pytest.raises(ModelMismatch, match="must never mix"):
        check_engine_header(engine_header(), "e", "10.3.0", "NVIDIA H100 80GB HBM3", "b" * 64)
    with pytest.raises(ModelMismatch, match="holds a 'detector' graph"):
        check_engine_header(
            engine_header(), "e", "10.3.0", "NVIDIA H100 80GB HBM3", graph="prompt_encoder"
        )


def test_a_foreign_file_is_not_an_engine(tmp_path):
    path = tmp_path / "plain.engine"
    path.write_bytes(b"serialized plan without our header")
    with pytest.raises(ModelMismatch, match="not an engine written by"):
        read_engine_header(path)


def test_tensorrt_engine_refused_on_load_when_built_elsewhere(art, tmp_path_factory):
    """On a TensorRT machine: a real engine whose header names another version is refused."""
    if reason := tensorrt_unavailable_reason():
        pytest.skip(reason)
    from models.runtime.tensorrt_backend import TensorRTBackend, build_engine

    out = tmp_path_factory.mktemp("trt-refuse")
    det = engine_path(out / art.graphs.detector.name, "fp32")
    enc = engine_path(out / art.graphs.prompt_encoder.name, "fp32")
    build_engine(art.graphs.detector, det, "fp32")
    build_engine(art.graphs.prompt_encoder, enc, "fp32")
    header, plan = read_engine(det)
    write_engine(det, {**header, "trt_version": "0.0.1"}, plan)
    with pytest.raises(ModelMismatch, match="TensorRT 0.0.1"):
        TensorRTBackend(det, enc, art.model_file.fingerprint)


def test_region_prompts_without_masks_use_the_filled_box(art, reference):
    image = art.images[0]
    box = art.regions[0][0].box
    h, w = image.shape[:2]
    filled = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = np.round(box).astype(int)
    filled[y0:y1, x0:x1] = True
    a = reference.encode_prompts(image, [PromptRegion(box)])
    b = reference.encode_prompts(image, [PromptRegion(box, filled)])
    assert np.abs(a - b).max() < 1e-6


def test_torch_backend_is_an_inference_backend(art):
    assert isinstance(TorchBackend(art.model_file), InferenceBackend)
