"""Export the detector and prompt-encoder graphs of a model file to ONNX and check them against
PyTorch on real images (max abs differences reported; exit status 1 when over the bound).

    python scripts/export_onnx.py                                   # the embedded default model
    python scripts/export_onnx.py --model runs/default/model.pt --out-dir build/onnx
    python scripts/export_onnx.py --model runs/default/model.pt \
        --images ../shared/datasets/magnetic_tile/Blowhole --check-images 8 --report export.json

Writes `<stem>.detector.onnx` and `<stem>.prompt_encoder.onnx` next to the model (or in
--out-dir), with the model's fingerprint, input size, normalisation and preset in their metadata.
Without --images the check uses synthetic defect images written to PNG and decoded back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.checkpoint import load_model
from models.decode import image_files, read_image
from models.export import DEFAULT_OPSET, check_export, check_images, export_graphs, graph_paths
from models.runtime.select import DEFAULT_MODEL_PATH


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="model file (.pt)")
    p.add_argument("--out-dir", type=Path, default=None, help="default: next to the model")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--images", type=Path, default=None, help="folder of real images to check on")
    p.add_argument("--check-images", type=int, default=4, help="images in the check (0: none)")
    p.add_argument("--classes", type=int, default=5, help="prototypes C in the check")
    p.add_argument("--tolerance", type=float, default=1e-3, help="bound on max abs differences")
    p.add_argument("--report", type=Path, default=None, help="also write the check as JSON here")
    args = p.parse_args()

    model_file = load_model(args.model)
    paths = graph_paths(args.model, args.out_dir)
    started = time.perf_counter()
    export_graphs(model_file, paths, args.opset)
    report = {
        "model": str(args.model),
        "fingerprint": model_file.fingerprint,
        "detector": str(paths.detector),
        "prompt_encoder": str(paths.prompt_encoder),
        "export_seconds": round(time.perf_counter() - started, 1),
        "sizes_bytes": {p.name: p.stat().st_size for p in (paths.detector, paths.prompt_encoder)},
    }
    if args.check_images:
        if args.images is not None:
            files = image_files(args.images)
            if not files:
                sys.exit(f"no images under {args.images}")
            images = [read_image(f) for f in files[: args.check_images]]
            report["check_images"] = str(args.images)
        else:
            images = check_images(args.check_images)
            report["check_images"] = "synthetic (written to PNG and decoded)"
        report["check"] = check_export(model_file, paths, images, args.classes, args.tolerance)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    if "check" in report and not report["check"]["ok"]:
        sys.exit(f"export check failed: max abs difference above {args.tolerance}")


if __name__ == "__main__":
    main()
