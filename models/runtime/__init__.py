"""Inference runtime: one backend interface (`base.InferenceBackend`) with PyTorch, ONNX Runtime
(CPU/CUDA) and TensorRT implementations, and the automatic choice between them
(`select.select_backend`). Import the submodules directly; this package imports nothing."""
