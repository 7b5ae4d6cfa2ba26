# One image for all three recipes on NVIDIA GPUs.
#   docker build -t molrecipes .                      # slim default: python:3.12-slim + PyPI torch
#   docker build -t molrecipes --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3 --build-arg INSTALL_TORCH=0 .
#   docker run --gpus all --ipc=host -it --rm -v $PWD/results:/workspace/molrecipes/results molrecipes
#
# Why a slim base: PyPI's torch==2.13.0 wheel for Linux x86_64 bundles its CUDA runtime, cuBLAS,
# cuDNN and NCCL (as nvidia-* wheels), so the image needs no CUDA toolkit; the host's driver comes
# in through the NVIDIA container toolkit (--gpus). That keeps one pinned torch for CPU CI and GPU
# nodes. An NGC PyTorch image is the alternative when its tuned builds matter: pass it as BASE_IMAGE
# with INSTALL_TORCH=0 so pip keeps NGC's own torch instead of replacing it with PyPI's.
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}
ARG INSTALL_TORCH=1

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1
# libxrender/libxext: RDKit's molecule drawing; libnuma1: --gpu_affinity memory binding.
RUN apt-get update && apt-get install -y --no-install-recommends libxrender1 libxext6 libnuma1 git && \
    rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/molrecipes
# Dependencies first, so code edits do not invalidate this layer.
COPY requirements.txt requirements-test.txt ./
RUN if [ "$INSTALL_TORCH" = "1" ]; then pip install -r requirements-test.txt; \
    else grep -v '^torch==' requirements.txt > /tmp/req.txt && pip install -r /tmp/req.txt pytest; fi && \
    pip install --no-deps molsets qm9pack

COPY . .
RUN pip install --no-deps -e .
CMD ["bash"]
