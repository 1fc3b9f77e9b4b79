# syntax=docker/dockerfile:1.7
# The ftops trainer/server image: the CUDA runtime, Python 3.11, torch's CUDA build (pinned),
# and the locked requirements. Training Jobs run `python -m controller.train` (through torchrun
# for several GPUs) in it; serving Deployments run `ftops serve`; the init container runs
# `ftops data prepare`.
#
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/ftops/trainer:0.1.0 .
#
# CUDA 12.8 runtime with cuDNN; TORCH_CUDA selects the matching torch wheel index.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ftops trainer" \
      org.opencontainers.image.description="GitOps for LLM fine-tuning: training, evaluation and serving" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# Python 3.11 (Ubuntu 22.04 ships 3.10), git for the data-pull init container
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates git openssh-client \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/ftops
ENV PATH=/opt/ftops/bin:$PATH
# torch's CUDA build, pinned, before the lock (which then finds torch satisfied)
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}"
COPY requirements.lock /src/requirements.lock
RUN pip install -r /src/requirements.lock
COPY pyproject.toml setup.py README.md /src/
COPY controller /src/controller
COPY templates /src/templates
RUN pip install --no-deps --no-build-isolation /src && rm -rf /src
ENV PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    HOME=/tmp
# uid 1000: the operator config's cluster.runAsUser default, which the rendered pods run as
RUN groupadd --gid 1000 ftops && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin ftops \
 && mkdir -p /workspace && chown 1000:1000 /workspace
USER 1000:1000
WORKDIR /workspace
CMD ["ftops", "--help"]
