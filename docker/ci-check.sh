#!/usr/bin/env bash
# The Docker image end to end, on a machine that reaches no image registry (CI:
# a fresh clone, as root). It starts dockerd if none answers, makes the Debian
# base if it is missing, builds the image from a wheelhouse served on loopback,
# runs it with --network host on free ports and waits for its HEALTHCHECK. Then
# the host plays scanner and PACS: dcmtk's storescu sends the phantom CT to the
# container's node and dcmtk's storescp takes the SEG and SR it sends back.
# `segnode demo` then runs inside the container, and the container must stop
# cleanly on SIGTERM. Each step prints its time and has a limit; the first
# failure ends the check with a non-zero status. Images are kept (the base is
# the next run's cache); the container, its volumes and a dockerd this script
# started are not.
#   docker/ci-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

base=segnode-base:bookworm
image=segnode:ci
container=segnode-ci-$$
scanner_ae=CI-SCANNER
pacs_ae=CI-PACS
# The classic builder: its RUN steps share the host's network with --network
# host, which the apt and pip steps need here, and it needs no buildx.
export DOCKER_BUILDKIT=0

work=$(mktemp -d /tmp/segnode-ci.XXXXXX)
started=$SECONDS
helpers=()
dockerd_pid=""

fail() {
  echo "ci-check: $*" >&2
  exit 1
}

step() {
  [ -z "${step_name:-}" ] || echo "== $step_name: $((SECONDS - step_started)) s"
  step_name=$1
  step_started=$SECONDS
  [ -z "$step_name" ] || echo "== $step_name"
}

# limited SECONDS WHAT COMMAND...: the command, failing the check if it fails or overruns.
limited() {
  local limit=$1 what=$2
  shift 2
  timeout "$limit" "$@" || fail "$what failed (status $?; limit $limit s)"
}

# wait_for SECONDS WHAT COMMAND...: poll the command until it succeeds.
wait_for() {
  local limit=$1 what=$2
  local deadline=$((SECONDS + limit))
  shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what: not within $limit s"
    sleep 1
  done
}

cleanup() {
  local status=$?
  if [ $status -ne 0 ] && docker inspect "$container" >/dev/null 2>&1; then
    echo "-- the container's last health checks:"
    docker inspect --format '{{range .State.Health.Log}}{{.ExitCode}} {{.Output}}{{end}}' "$container" || true
    echo "-- the container's log (last 40 lines):"
    docker logs --tail 40 "$container" 2>&1 || true
  fi
  docker rm -f -v "$container" >/dev/null 2>&1 || true
  for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    timeout 30 tail --pid="$dockerd_pid" -f /dev/null || kill -9 "$dockerd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  echo "ci-check: $([ $status -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - started)) s"
}
trap cleanup EXIT

step "packages (docker.io, debootstrap, dcmtk)"
[ "$(id -u)" -eq 0 ] || fail "must run as root (dockerd, debootstrap)"
missing=()
for package in docker.io debootstrap dcmtk; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  limited 120 "apt-get update" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive limited 600 "apt-get install ${missing[*]}" \
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "docker engine"
if ! docker info >/dev/null 2>&1; then
  # No bridge and no iptables rules: every container here uses the host's network.
  dockerd --bridge=none --iptables=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  engine_answers() {
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$work/dockerd.log" >&2; fail "dockerd exited"; }
    docker info >/dev/null 2>&1
  }
  wait_for 60 "dockerd answering" engine_answers
fi
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'

step "base image $base"
if docker image inspect "$base" >/dev/null 2>&1; then
  echo "kept from an earlier run"
else
  limited 600 "docker/build-base.sh" docker/build-base.sh "$base"
fi

step "wheelhouse"
# Its stderr to a log: this machine's pip configuration names a missing index
# folder, and pip warns about it once for every package.
timeout 900 docker/wheelhouse.sh "$work/wheels" 2>"$work/wheelhouse.log" \
  || { tail -20 "$work/wheelhouse.log" >&2; fail "docker/wheelhouse.sh failed"; }

# Distinct free ports, taken at once: the wheelhouse server's, the node's DICOM and metrics
# ports, the host PACS's.
read -r wheel_port dicom_port metrics_port pacs_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')

step "image $image"
python3 -m http.server --bind 127.0.0.1 --directory "$work/wheels" "$wheel_port" >"$work/http.log" 2>&1 &
helpers+=($!)
wait_for 10 "wheelhouse server" curl -fs -o /dev/null "http://127.0.0.1:$wheel_port/"
# Each run retags the image; the one it replaces would stay behind untagged, 2.5 GB a run.
replaced=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
timeout 1500 docker build --force-rm --network host -t "$image" \
  --build-arg BASE_IMAGE="$base" \
  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS="http://127.0.0.1:$wheel_port/" \
  . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; fail "docker build failed"; }
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
if [ -n "$replaced" ] && [ "$replaced" != "$(docker image inspect --format '{{.Id}}' "$image")" ]; then
  docker image rm "$replaced" >/dev/null 2>&1 || echo "the image this build replaced ($replaced) is still in use"
fi

step "run with --network host, until healthy"
mkdir -p "$work/pacs"
storescp --aetitle "$pacs_ae" --output-directory "$work/pacs" "$pacs_port" >"$work/storescp.log" 2>&1 &
helpers+=($!)
# The node on free ports (the host's, under --network host), the host as its scanner and PACS.
cat >"$work/segnode.yaml" <<CONFIG
node: {ae_title: SEGNODE, host: 127.0.0.1, port: $dicom_port, metrics_port: $metrics_port,
       storage_dir: /var/lib/segnode, series_stable_seconds: 2}
peers: [{ae_title: SEGNODE-HEALTH}, {ae_title: $scanner_ae, host: 127.0.0.1}]
destinations: {PACS: {ae_title: $pacs_ae, host: 127.0.0.1, port: $pacs_port}}
pipelines: {organs: {model: builtin}}
routes: [{name: ct-organs, match: {modality: CT}, pipeline: organs, send_to: [PACS]}]
sending: {retry_base_seconds: 1, retry_max_seconds: 5}
# One small series: a 1 GiB margin, not the default 10 GiB, which a CI machine may lack.
storage: {low_watermark_bytes: 1073741824}
CONFIG
chmod 644 "$work/segnode.yaml"
docker run -d --name "$container" --network host \
  -v "$work/segnode.yaml:/etc/segnode/segnode.yaml:ro" "$image" >/dev/null
healthy() {
  local health
  health=$(docker inspect --format '{{.State.Status}} {{.State.Health.Status}}' "$container")
  case "$health" in
    "running healthy") return 0 ;;
    "running starting") return 1 ;;
    *) fail "container is $health" ;;
  esac
}
# The first check runs 30 s (the HEALTHCHECK's interval) after the start.
wait_for 120 "HEALTHCHECK healthy" healthy
echo "healthy"

step "host scanner -> container -> host PACS"
mkdir -p "$work/scanner"
limited 120 "writing the phantom CT" docker run --rm --network none --user 0 \
  -v "$work/scanner:/out" --entrypoint python3 "$image" -c '
from pathlib import Path
from phantom.demo import DEMO_GRID
from phantom.study import write_study
write_study(Path("/out"), DEMO_GRID, with_pet=False)
'
ct_files=$(find "$work/scanner/ct" -type f | wc -l)
limited 120 "storescu" storescu -aet "$scanner_ae" -aec SEGNODE +sd 127.0.0.1 "$dicom_port" "$work/scanner/ct"
echo "sent $ct_files CT images"
# value FILE TAG: the tag's first value in the file, depth first, as dcmdump prints it
# between brackets. (sed reads to the end: under pipefail, an early exit's SIGPIPE
# would fail the pipe.)
value() { dcmdump -s +P "$2" "$1" | sed -n '1s/^[^[]*\[\(.*\)\].*/\1/p'; }
# The files storescp wrote, by their Modality (0008,0060), not by its file names.
received() {
  local file
  for file in "$work"/pacs/*; do
    [ -f "$file" ] && [ "$(value "$file" 0008,0060)" = "$1" ] && echo "$file"
  done
  return 0
}
results_back() { [ -n "$(received SEG)" ] && [ -n "$(received SR)" ]; }
wait_for 240 "SEG and SR back at the host PACS" results_back
seg=$(received SEG | sed -n 1p)
ct_series=$(value "$(find "$work/scanner/ct" -type f -print -quit)" 0020,000e)
# Every Series Instance UID in the SEG, its source's in the Referenced Series Sequence among them.
seg_series=$(dcmdump +P 0020,000e "$seg")
grep -qF "[$ct_series]" <<<"$seg_series" || fail "the SEG does not reference CT series $ct_series"
echo "SEG and SR received; the SEG references CT series $ct_series"
metrics=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics")
grep -qx "segnode_instances_received_total{modality=\"CT\"} $ct_files.0" <<<"$metrics" \
  || fail "metrics do not count $ct_files CT instances received"
grep -q '^segnode_associations_accepted_total{calling_ae="SEGNODE-HEALTH"}' <<<"$metrics" \
  || fail "metrics count no health check association"
echo "metrics: $ct_files CT instances received, health checks accepted"

step "segnode demo inside the container"
limited 300 "segnode demo" docker exec "$container" segnode demo

step "stop"
limited 90 "docker stop" docker stop -t 60 "$container" >/dev/null
exit_code=$(docker inspect --format '{{.State.ExitCode}}' "$container")
[ "$exit_code" = 0 ] || fail "segnode exited with $exit_code on SIGTERM"
echo "segnode stopped on SIGTERM with status 0"
step ""
