"""Build TensorRT engines from the exported ONNX graphs (needs an NVIDIA GPU and `tensorrt`).

    python scripts/build_engine.py                      # both graphs, FP16, the default model
    python scripts/build_engine.py --model runs/default/model.pt --precision fp16 fp32
    python scripts/build_engine.py --onnx models/weights/unispector_small.detector.onnx \
        --batch 1 8 16 --classes 1 8 64 --precision fp32

Each engine is written next to its ONNX file as `<stem>.<graph>.<fp16|fp32>.engine`, with a
header naming the TensorRT version, the GPU, the precision, the optimisation profile and the
model fingerprint; the runtime refuses an engine built for another TensorRT version or GPU.
A timing cache (`<onnx folder>/trt_timing.cache`) makes rebuilds fast. With --model, missing ONNX
graphs are exported first and every engine is checked against PyTorch on synthetic images.
On a machine without TensorRT or a CUDA GPU this prints the reason and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.runtime.base import BackendUnavailable
from models.runtime.engine_file import engine_path
from models.runtime.select import DEFAULT_MODEL_PATH
from models.runtime.tensorrt_backend import Profile, build_engine, tensorrt_unavailable_reason


def profile(values: list[int]) -> Profile:
    return Profile(*values)


def check(model_path: Path, det: Path, enc: Path, precision: str) -> dict:
    """The engines against PyTorch (CPU or CUDA) on synthetic images written and decoded."""
    import numpy as np

    from models.checkpoint import load_model
    from models.export import check_images
    from models.predictor import Predictor, PromptRegion
    from models.runtime.parity import compare_detections, compare_embeddings, compare_raw
    from models.runtime.tensorrt_backend import TensorRTBackend
    from models.runtime.torch_backend import TorchBackend

    mf = load_model(model_path)
    ref = Predictor(TorchBackend(mf))
    cand = Predictor(TensorRTBackend(det, enc, mf.fingerprint))
    images = check_images(4)
    regions = [
        [PromptRegion(np.array([0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h], np.float32))]
        for h, w in (im.shape[:2] for im in images)
    ]
    embs = [
        (ref.encode_prompts(im, r), cand.encode_prompts(im, r))
        for im, r in zip(images, regions, strict=True)
    ]
    protos = np.concatenate([a for a, _ in embs])
    _, batch = ref.preprocess(images)
    return {
        "precision": precision,
        "raw_max_abs_diff": compare_raw(ref.raw(batch, protos), cand.raw(batch, protos)).to_dict(),
        "embedding_max_abs_diff": max(compare_embeddings(a, b) for a, b in embs),
        "detections": compare_detections(
            ref.detect(images, protos), cand.detect(images, protos)
        ).to_dict(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model", type=Path, default=None, help="model file (default: the embedded one)"
    )
    p.add_argument(
        "--onnx", type=Path, nargs="+", default=None, help="graphs to build (default: both)"
    )
    p.add_argument("--precision", nargs="+", choices=("fp16", "fp32"), default=["fp16"])
    p.add_argument("--batch", type=int, nargs=3, default=[1, 8, 16], metavar=("MIN", "OPT", "MAX"))
    p.add_argument(
        "--classes", type=int, nargs=3, default=[1, 8, 64], metavar=("MIN", "OPT", "MAX")
    )
    p.add_argument(
        "--regions", type=int, nargs=3, default=[1, 4, 64], metavar=("MIN", "OPT", "MAX")
    )
    p.add_argument("--workspace-gib", type=float, default=4.0)
    p.add_argument("--timing-cache", type=Path, default=None)
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    args = p.parse_args()

    if reason := tensorrt_unavailable_reason():
        print(f"build_engine: skipped, {reason}", file=sys.stderr)
        sys.exit(2)
    model_path = args.model
    if args.onnx is None:
        from models.checkpoint import load_model
        from models.export import export_graphs, graph_paths

        model_path = model_path or DEFAULT_MODEL_PATH
        graphs = graph_paths(model_path)
        if not graphs.exist():
            export_graphs(load_model(model_path), graphs)
        onnx_files = [graphs.detector, graphs.prompt_encoder]
    else:
        onnx_files = args.onnx
    dims = {
        "batch": profile(args.batch),
        "classes": profile(args.classes),
        "regions": profile(args.regions),
    }
    report = {"engines": []}
    try:
        for precision in args.precision:
            built = {}
            for onnx_path in onnx_files:
                graph = "prompt_encoder" if ".prompt_encoder." in onnx_path.name else "detector"
                wanted = {
                    k: dims[k]
                    for k in (("regions",) if graph == "prompt_encoder" else ("batch", "classes"))
                }
                out = engine_path(onnx_path, precision)
                cache = args.timing_cache or onnx_path.parent / "trt_timing.cache"
                header = build_engine(
                    onnx_path, out, precision, wanted, cache, args.workspace_gib, args.device
                )
                built[graph] = out
                report["engines"].append(
                    {"path": str(out), **{k: v for k, v in header.items() if k != "onnx_metadata"}}
                )
                print(f"built {out} in {header['build_seconds']} s", file=sys.stderr)
            if model_path is not None and len(built) == 2:
                report.setdefault("checks", []).append(
                    check(model_path, built["detector"], built["prompt_encoder"], precision)
                )
    except BackendUnavailable as exc:
        print(f"build_engine: skipped, {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
