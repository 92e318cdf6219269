#!/usr/bin/env bash
# Makes a Debian bookworm base image without an image registry: debootstrap
# installs a minimal system into a folder, which `docker import` turns into an
# image. The Dockerfile takes it as BASE_IMAGE and installs python3 and dcmtk
# itself, with apt over the network the build is given (--network host).
#   docker/build-base.sh [TAG]      (default segnode-base:bookworm; root; about 40 s)
set -euo pipefail
tag=${1:-segnode-base:bookworm}
mirror=http://deb.debian.org/debian

for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "build-base: $tool is not installed (apt-get install debootstrap docker.io)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "build-base: debootstrap must run as root" >&2; exit 1; }

root=$(mktemp -d /tmp/segnode-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; echo "build-base: debootstrap failed; its log is $root.log" >&2; exit 1; }
rm -f "$root.log"
# debootstrap writes only the release itself; Debian's own images also follow
# the point-release updates and the security archive.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# The downloaded packages and package lists are stale by the first apt-get update.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# An imported image has no environment; without a PATH the Dockerfile's
# `ENV PATH=/opt/segnode/venv/bin:$PATH` would drop /usr/bin.
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' - "$tag" >/dev/null
echo "build-base: $tag"
