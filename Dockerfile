# segnode: the DICOM node with its workers, and dcmtk for diagnosis.
#
# CPU (the default):
#   docker build -t segnode .
# NVIDIA GPU: a CUDA base image and PyTorch's CUDA build of the same version:
#   docker build -t segnode:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# Without a registry or the package indexes (docker/ci-check.sh does this): a
# base made by docker/build-base.sh, and every wheel from a folder filled by
# docker/wheelhouse.sh DIR and served by python3 -m http.server -b 127.0.0.1 -d DIR 8000:
#   docker build --network host -t segnode \
#     --build-arg BASE_IMAGE=segnode-base:bookworm \
#     --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/ .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# pip reads these from the environment (build arguments are, during RUN only);
# unset, as normally, they change nothing.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS

# Python comes from the base image where it has one (python:*), else from apt;
# libgl1 and libglib2.0-0 are what OpenCV loads (RTSTRUCT contours, rt-utils).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk python3 python3-venv libgl1 libglib2.0-0 \
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
COPY phantom phantom
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

# A C-ECHO to the AE title and port of the configuration in use (docker/healthcheck.py).
COPY docker/healthcheck.py /usr/local/bin/segnode-healthcheck
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["segnode-healthcheck"]

ENTRYPOINT ["segnode"]
CMD ["serve", "--config", "/etc/segnode/segnode.yaml"]
