#!/usr/bin/env bash
# Fills a folder with every wheel the Dockerfile installs, for builds that
# reach no package index (or, as here, only through a TLS proxy whose CA the
# image does not have): serve the folder over HTTP on loopback and build with
# --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:PORT/.
#   docker/wheelhouse.sh DIR
# The wheels come from wherever this machine's pip finds them (on our build
# machines the CPU PyTorch wheel lies in /opt/wheels, see /etc/pip.conf), for
# this machine's Python, which must therefore be the image's: Debian
# bookworm's 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: docker/wheelhouse.sh DIR" >&2; exit 2; }
dest=$1
python=${PYTHON:-python3}

"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "wheelhouse: $python is not Python 3.11, the image's; set PYTHON" >&2; exit 1; }
# The pins are the Dockerfile's and pyproject.toml's, read rather than repeated.
torch=$(grep -o -m1 'torch==[^ ]*' Dockerfile)
architectures=$(grep -o -m1 'dynamic-network-architectures==[^ ]*' Dockerfile)
if [ -z "$torch" ] || [ -z "$architectures" ]; then
  echo "wheelhouse: no torch or dynamic-network-architectures pin in Dockerfile" >&2
  exit 1
fi
mapfile -t build_requires < <("$python" -c '
import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")')

mkdir -p "$dest"
# One resolution, so that segnode's "torch>=2.1" is met by the pinned build
# rather than by the newest (on PyPI, the CUDA build and 3 GB of nvidia-*
# wheels). For "." pip builds only segnode's metadata and saves nothing.
"$python" -m pip download -q --only-binary=:all: -d "$dest" "$torch" "${build_requires[@]}" .
# As in the Dockerfile, without its requirements (timm, and with it torchvision).
"$python" -m pip download -q --no-deps -d "$dest" "$architectures"
# What the image's Python (bookworm's 3.11.2) needs and this machine's newer 3.11
# may not: pip's --python-version does not evaluate environment markers, so the
# requirements under a python_full_version marker are named here (redis-py's).
"$python" -m pip download -q --only-binary=:all: -d "$dest" "async-timeout>=4.0.3"
echo "wheelhouse: $(find "$dest" -type f | wc -l) files, $(du -sh "$dest" | cut -f1) in $dest"
