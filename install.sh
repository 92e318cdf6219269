#!/usr/bin/env bash
# Sets up segnode on a Debian machine: DICOM tools, a virtual environment in
# .venv, PyTorch and segnode itself. Idempotent; run it again after a pull.
#   ./install.sh          the node
#   ./install.sh --test   the node and what its tests need
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# dcmtk: storescu/echoscu/storescp for diagnosis and tests; dicom3tools: dciodvfy;
# libgl1, libglib2.0-0: what OpenCV (RTSTRUCT contours, via rt-utils) loads;
# orthanc: the PACS of the end-to-end tests; openssl: s_client, a TLS peer that
# renegotiates and updates keys, for the hostile-peer tests; poppler-utils:
# pdftoppm and pdftotext, to look at the PDF report as a person would;
# chromium and chromium-driver: the web console's browser test.
# redis-server and rabbitmq-server: the brokers of the Celery backend's tests.
packages="dcmtk dicom3tools libgl1 libglib2.0-0"
[ -n "$extras" ] && packages="$packages orthanc openssl poppler-utils chromium chromium-driver redis-server rabbitmq-server"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $missing >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# PyTorch 2.13.0: where pip finds the CPU wheel on disk (our build machines)
# it takes that; elsewhere PyPI's Linux wheel, which is the CUDA build. See
# README for choosing explicitly.
.venv/bin/python -m pip install -q torch==2.13.0
# nnU-Net's network architectures. --no-deps: the package also requires timm
# (for architectures segnode does not use), which pulls torchvision and with
# it a second, CUDA build of torch.
.venv/bin/python -m pip install -q --no-deps dynamic-network-architectures==0.4.4
.venv/bin/python -m pip install -q -e ".${extras}"
if [ -n "$extras" ]; then
  # nnunetv2 is the reference the engine's parity tests compare against. It,
  # acvl-utils and batchgenerators go in without their requirements (torch,
  # timm, torchvision: see above); the rest of what its predictor imports
  # goes in normally.
  .venv/bin/python -m pip install -q --no-deps nnunetv2==2.8.1 acvl-utils==0.2.6 batchgenerators==0.25.5
  .venv/bin/python -m pip install -q tqdm==4.70.1 blosc2==4.14.1 threadpoolctl==3.8.0 numexpr==2.14.2 \
    pandas==3.1.1 scikit-image==0.26.0 tifffile==2026.3.3 nibabel==5.4.2 httpx==0.28.1
fi
echo "segnode installed in $(pwd)/.venv: run .venv/bin/segnode --help"
