# segnode: the DICOM node with its workers, and dcmtk for diagnosis.
#
# CPU (the default):
#   docker build -t segnode .
# NVIDIA GPU: a CUDA base image and PyTorch's CUDA build of the same version:
#   docker build -t segnode:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Python comes from the base image where it has one (python:*), else from apt.
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/segnode/venv
ENV PATH=/opt/segnode/venv/bin:$PATH

# PyTorch first, from the index the build argument names (CPU or CUDA), and
# nnU-Net's architectures without their torchvision/timm requirements.
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX_URL} torch==2.13.0 \
 && pip install --no-cache-dir --no-deps dynamic-network-architectures==0.4.4

WORKDIR /opt/segnode
COPY pyproject.toml README.md ./
COPY node node
COPY config config
COPY dicomio dicomio
COPY inference inference
RUN pip install --no-cache-dir .

RUN useradd --system --home-dir /var/lib/segnode --create-home segnode \
 && mkdir -p /etc/segnode /var/lib/segnode-models \
 && chown segnode /var/lib/segnode-models \
 && sed -e 's|^  host: 127.0.0.1|  host: 0.0.0.0|' \
        -e 's|storage_dir: ./var/segnode|storage_dir: /var/lib/segnode|' \
        -e 's|  - {ae_title: STORESCU}|  - {ae_title: STORESCU}\n  - {ae_title: SEGNODE-HEALTH}|' \
        config/segnode.example.yaml > /etc/segnode/segnode.yaml
USER segnode
# Installed models live apart from the store, so either can be backed up or moved alone.
ENV SEGNODE_MODELS=/var/lib/segnode-models
VOLUME ["/var/lib/segnode", "/var/lib/segnode-models"]
# DICOM, Prometheus metrics.
EXPOSE 11112 9102

HEALTHCHECK --interval=30s --timeout=10s --start-period=30s \
  CMD echoscu -aet SEGNODE-HEALTH -aec SEGNODE 127.0.0.1 11112 || exit 1

ENTRYPOINT ["segnode"]
CMD ["serve", "--config", "/etc/segnode/segnode.yaml"]
