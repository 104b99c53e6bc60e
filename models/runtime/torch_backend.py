"""PyTorch eager backend: the reference every other backend is compared against."""

from __future__ import annotations

import numpy as np
import torch

from models.checkpoint import ModelFile
from models.runtime.base import DETECTOR_OUTPUTS, ModelInfo


class TorchBackend:
    """Runs the `UniSpector` module itself (CPU, or CUDA when given a CUDA device)."""

    name = "torch"

    def __init__(self, model_file: ModelFile, threads: int = 0, device: str = "cpu") -> None:
        self.file = model_file
        self.info = ModelInfo.from_model_file(model_file)
        self.torch_device = torch.device(device)
        self.model = model_file.model.eval().to(self.torch_device)
        self.device = (
            torch.cuda.get_device_name(self.torch_device)
            if self.torch_device.type == "cuda"
            else "cpu"
        )
        if threads:
            torch.set_num_threads(threads)

    @torch.no_grad()
    def detect_raw(self, batch: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(
            torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device),
            torch.from_numpy(np.ascontiguousarray(prototypes, dtype=np.float32)).to(
                self.torch_device
            ),
        )
        return {k: out[k].float().cpu().numpy() for k in DETECTOR_OUTPUTS}

    @torch.no_grad()
    def encode_raw(self, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
        dev = self.torch_device
        emb = self.model.encode_prompts(
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev),
            torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).to(dev),
            torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).to(dev),
            torch.zeros(len(boxes), dtype=torch.long, device=dev),
        )
        return emb.float().cpu().numpy()
