# syntax=docker/dockerfile:1
# The inspection service as container images: one process per container (uvicorn serving
# `python -m service`), configuration only by environment (service/README.md lists every setting),
# the embedded default model and its exported ONNX graphs inside, a non-root user, a healthcheck.
#
#   docker build -t defect-inspector:cpu .              # CPU: ONNX Runtime CPU (the default target)
#   docker build -t defect-inspector:gpu --target gpu . # NVIDIA: TensorRT / ONNX Runtime CUDA
#   docker run -p 8000:8000 -e REDIS_URL=redis://:PASSWORD@redis-host:6379/0 defect-inspector:cpu
#
# REDIS_URL is required: the images hold no redis-server, so the service's embedded store (what it
# starts when REDIS_URL is unset) is not available in them. docker-compose.yml runs the whole stack.
# Stages: cpu-build -> cpu (runtime), gpu-build -> gpu (runtime). Dependencies are installed into a
# virtual environment in the build stages and only that environment is copied into the runtime
# stages, so pip caches, sources and build tools never reach the images.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, with the README's pin, so the project's `torch>=2.13,<2.14` is already satisfied.
# The README's `pip install torch==2.13.0` gets the CPU build where the package index serves it
# (as on the development and CI machines); public PyPI's Linux x86_64 wheel of that version is the
# CUDA build with gigabytes of nvidia-* wheels, so by default the same version is taken from
# PyTorch's CPU index. `--build-arg TORCH_INDEX_URL=` runs exactly the README's line.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY prompt_store ./prompt_store
COPY service ./service
COPY scripts ./scripts
# The project itself, as the README installs it but without the dev extra.
RUN pip install .
# The default model's ONNX graphs, exported and checked against PyTorch now (the build fails when
# the check does), so the container starts on ONNX Runtime without exporting at run time.
RUN python scripts/export_onnx.py --out-dir /opt/inspector/onnx --check-images 2

# ------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Same pin; here the CUDA build is wanted (the TensorRT backend keeps its buffers in torch CUDA
# tensors), which is what public PyPI serves for Linux x86_64. TORCH_INDEX_URL picks another
# index (e.g. https://download.pytorch.org/whl/cu128 for a given CUDA version).
ARG TORCH_INDEX_URL=
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY prompt_store ./prompt_store
COPY service ./service
COPY scripts ./scripts
# The `gpu` extra adds onnxruntime-gpu and tensorrt. onnxruntime (a base dependency) and
# onnxruntime-gpu install the same `onnxruntime` module, so the CPU one is removed and the GPU one
# reinstalled over it, at the version the resolver chose.
RUN pip install ".[gpu]" \
 && ort_version="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
 && pip uninstall -y onnxruntime onnxruntime-gpu \
 && pip install --no-deps "onnxruntime-gpu==${ort_version}"
# The ONNX graphs are device-independent: exported (on the CPU) and checked as in the CPU image.
# TensorRT engines are specific to the GPU and TensorRT version, so they are built on the target
# machine, next to these graphs (docker-compose.yml keeps them in a volume):
#   python /opt/inspector/scripts/build_engine.py --onnx /var/lib/inspector/onnx/unispector_small.detector.onnx
RUN python scripts/export_onnx.py --out-dir /opt/inspector/onnx --check-images 2

# ------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/inspector \
      --shell /usr/sbin/nologin inspector \
 && install -d -o inspector -g inspector /var/lib/inspector /var/cache/inspector/onnx
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=gpu-build --chown=inspector:inspector /opt/inspector/onnx /var/lib/inspector/onnx
COPY --from=gpu-build /src/scripts /opt/inspector/scripts
# INSPECT_ONNX_DIR: the graphs exported at build time (and the engines built next to them);
# INSPECT_ONNX_CACHE_DIR: where graphs of another model (INSPECT_MODEL_PATH) are exported on
# first use. Both belong to the service's user.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INSPECT_HOST=0.0.0.0 \
    INSPECT_PORT=8000 \
    INSPECT_ONNX_DIR=/var/lib/inspector/onnx \
    INSPECT_ONNX_CACHE_DIR=/var/cache/inspector/onnx
WORKDIR /var/lib/inspector
USER inspector:inspector
EXPOSE 8000
# Liveness (/healthz) with the image's own python: slim and CUDA runtime images have no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INSPECT_PORT', '8000'), timeout=4)" || exit 1
CMD ["python", "-m", "service"]

# ------------------------------------------------------------------------------------------------
# The CPU image; last, so that a plain `docker build .` builds it.
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/inspector \
      --shell /usr/sbin/nologin inspector \
 && install -d -o inspector -g inspector /var/lib/inspector /var/cache/inspector/onnx
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build --chown=inspector:inspector /opt/inspector/onnx /var/lib/inspector/onnx
COPY --from=cpu-build /src/scripts /opt/inspector/scripts
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INSPECT_HOST=0.0.0.0 \
    INSPECT_PORT=8000 \
    INSPECT_ONNX_DIR=/var/lib/inspector/onnx \
    INSPECT_ONNX_CACHE_DIR=/var/cache/inspector/onnx
WORKDIR /var/lib/inspector
USER inspector:inspector
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INSPECT_PORT', '8000'), timeout=4)" || exit 1
CMD ["python", "-m", "service"]
