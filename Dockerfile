# GPU image for minionerec: CUDA, the matching torch build, DeepSpeed + flash-attn, and the package with its configs.
# Not built in CI (no docker, no GPU there); tests/test_packaging.py lints this file with hadolint.
#
#   docker build -t minionerec:gpu .
#   docker build -t minionerec:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#       --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04 .     # another CUDA: keep the two in step
#   docker run --gpus all --ipc=host --rm -v "$PWD/runs:/work/runs" -v /path/holding/Amazon:/data \
#       -e MINIONEREC_DATA=/data minionerec:gpu bash -c \
#       'accelerate launch --config_file "$(minionerec launch-config accelerate_zero2_8gpu)" -m minionerec pipeline --config configs/industrial.yaml'
# One command, data to report: prepare/embed/sid/report run in the main process, sft/evaluate/rl on every GPU. The
# configs are the packaged ones (`minionerec launch-config` prints the path), so it runs from WORKDIR /work. It is
# tested on 2 CPU processes outside the checkout (tests/test_launch.py), not yet on a GPU.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# parallel compile jobs for flash-attn (each takes several GB of RAM)
ARG MAX_JOBS=8

# DL3064: TOKENIZERS_PARALLELISM is a setting, not a secret
# hadolint ignore=DL3064
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    MINIONEREC_CACHE=/cache/minionerec \
    TOKENIZERS_PARALLELISM=false

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# DL3008: the base image's Ubuntu release pins these packages' versions well enough
# python3-dev + build-essential + ninja: DeepSpeed's JIT ops and the flash-attn build need a compiler and headers
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ninja-build git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# DL3013: pip's own tools follow their latest release; torch is pinned
# the CUDA build of torch first, from the index that matches the base image's CUDA
# hadolint ignore=DL3013
RUN pip install --upgrade pip setuptools wheel packaging \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# the [gpu] extra: flash-attn compiles against the installed torch, so it is built without build isolation
RUN pip install "deepspeed>=0.14" \
    && MAX_JOBS="${MAX_JOBS}" pip install --no-build-isolation "flash-attn>=2.5"

WORKDIR /opt/minionerec
COPY . .
# DL3013: the package itself, from this checkout (its requirements carry lower bounds in settings.ini)
# hadolint ignore=DL3013
RUN pip install ".[gpu]" \
    && python -c "import minionerec, torch; print('minionerec', minionerec.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"

WORKDIR /work
CMD ["minionerec", "--help"]
