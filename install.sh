#!/usr/bin/env bash
# Sets up segnode on a Debian machine: DICOM tools, a virtual environment in
# .venv, PyTorch and segnode itself. Idempotent; run it again after a pull.
#   ./install.sh          the node
#   ./install.sh --test   the node and what its tests need
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# dcmtk: storescu/echoscu/storescp for diagnosis and tests; dicom3tools: dciodvfy.
packages="dcmtk dicom3tools"
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
.venv/bin/python -m pip install -q -e ".${extras}"
echo "segnode installed in $(pwd)/.venv: run .venv/bin/segnode --help"
