# One image for all three recipes on NVIDIA GPUs. Build:  docker build -t molrecipes .
# Run:  docker run --gpus all --ipc=host -it --rm -v $PWD/results:/workspace/molrecipes/results molrecipes
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-pip python3-dev git libxrender1 libxext6 && \
    rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3 /usr/bin/python

WORKDIR /workspace/molrecipes
# Dependencies first, so code edits do not invalidate this layer. On Linux x86_64, PyPI's
# torch==2.13.0 is the CUDA build.
COPY requirements.txt requirements-test.txt ./
RUN pip install -r requirements-test.txt && pip install --no-deps molsets qm9pack

COPY . .
RUN pip install --no-deps -e .
CMD ["bash"]
