# syntax=docker/dockerfile:1.7
# The ftops controller image: slim Python 3.11, the locked requirements, and torch as the CPU
# build (the controller never trains; without the CPU index pip would pull a multi-GB CUDA torch
# because bitsandbytes and peft depend on torch).
#
#   docker build -f docker/controller.Dockerfile -t ghcr.io/ftops/controller:0.1.0 .
#
# Build from the repository root (the context). docs/cluster.md has the full procedure.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ftops
ENV PATH=/opt/ftops/bin:$PATH
# torch first and pinned, from the CPU index; then the lock, which then finds torch satisfied
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY requirements.lock /src/requirements.lock
RUN pip install -r /src/requirements.lock
COPY pyproject.toml setup.py README.md /src/
COPY controller /src/controller
COPY templates /src/templates
RUN pip install --no-deps --no-build-isolation /src && rm -rf /src

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ftops controller" \
      org.opencontainers.image.description="GitOps for LLM fine-tuning: the controller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# git and ssh: the controller clones the GitOps repository (HTTPS or SSH)
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/ftops /opt/ftops
ENV PATH=/opt/ftops/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    HOME=/tmp
RUN groupadd --gid 10001 ftops && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ftops \
 && mkdir -p /var/lib/ftops && chown 10001:10001 /var/lib/ftops
USER 10001:10001
WORKDIR /var/lib/ftops
ENTRYPOINT ["/usr/bin/tini", "--", "ftops"]
CMD ["controller", "--help"]
