#!/usr/bin/env bash
# Build the batchsub image with podman on a machine that cannot pull from a registry, then
# (with --smoke) run the daemon in it: a named volume, /healthz, a manifest dropped in, a clean
# stop on SIGTERM. CI does not run this; it needs root, podman and debootstrap:
#   apt-get install -y podman debootstrap && deploy/build-local.sh --smoke
#
# No base image can be pulled here, so a Debian bookworm root filesystem made by debootstrap
# (python3 3.11 with venv, as in python:3.11-slim) is imported as a local image and passed
# as BASE_IMAGE. With a registry at hand, build as usual: docker build -t batchsub .
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-/var/tmp/batchsub-build}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=${BASE:-localhost/batchsub-stand-in-base:bookworm}
IMAGE=${IMAGE:-localhost/batchsub:dev}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
VERSION=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")

# Running containers on this machine: root lacks CAP_SYS_RESOURCE, so podman's default
# ulimits cannot be set (explicit ones within the current limits are), and cgroup v1 with a
# controller left on v2 makes crun refuse ("hybrid mode"): runc copes.
RUN_OPTS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
if command -v runc >/dev/null; then
  RUN_OPTS+=(--runtime runc)
fi

say() { printf '== %s\n' "$*" >&2; }

stand_in_base() {
  if podman image exists "$BASE"; then
    return
  fi
  if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
    say "debootstrap bookworm into $WORK/rootfs"
    mkdir -p "$WORK"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$WORK/rootfs" "$MIRROR"
  fi
  say "import $WORK/rootfs as $BASE"
  tar -C "$WORK/rootfs" --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . |
    podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["python3"]' - "$BASE" >/dev/null
}

build() {
  # Behind a TLS-intercepting proxy pip must trust the host's CA bundle: it and a pip.conf
  # naming it are mounted for the RUN steps only, so nothing of them lands in a layer.
  local mounts=()
  if [ -f "$CA_BUNDLE" ]; then
    mkdir -p "$WORK"
    printf '[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n' >"$WORK/pip.conf"
    mounts=(--volume "$CA_BUNDLE:/etc/ssl/certs/host-ca-bundle.crt:ro"
      --volume "$WORK/pip.conf:/etc/pip.conf:ro")
  fi
  say "build $IMAGE from BASE_IMAGE=$BASE"
  # --format docker: the OCI image format has no HEALTHCHECK.
  podman build --isolation chroot --format docker "${mounts[@]}" --build-arg BASE_IMAGE="$BASE" \
    --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || true)" \
    -t "$IMAGE" .
  podman image inspect "$IMAGE" --format \
    'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} size={{.Size}}'
  podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" >"$WORK/history.txt"
  sed -n 1,14p "$WORK/history.txt"
}

smoke() {
  local name=batchsub-smoke volume=batchsub-smoke-data port=19100
  podman rm --force --ignore "$name" >/dev/null
  podman volume rm --force "$volume" >/dev/null 2>&1 || true
  podman volume create "$volume" >/dev/null
  say "run the daemon on the named volume $volume, with the built-in simulator"
  # As the Kubernetes manifests run it: read-only root (podman adds a tmpfs /tmp), no
  # capabilities, no privilege escalation.
  podman run "${RUN_OPTS[@]}" -d --name "$name" --network host --stop-timeout 45 \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$volume:/data" -e BATCHSUB_METRICS_PORT="$port" -e BATCHSUB_SETTLE_TIME=0.2 \
    "$IMAGE" watch /data/inbox --simulator >/dev/null
  # The image's HEALTHCHECK, run by hand: without systemd podman schedules none.
  wait_for "the image's health check" podman healthcheck run "$name"
  say "drop a manifest into /data/inbox"
  podman exec -i "$name" sh -c 'cat > /data/inbox/.smoke.tmp && mv /data/inbox/.smoke.tmp /data/inbox/smoke.json' \
    < examples/manifests/api-example.json
  wait_for "the manifest in done/" podman exec "$name" test -f /data/inbox/done/smoke.json
  podman exec "$name" id
  podman exec "$name" ls -ln /data /data/inbox/done
  say "stop with SIGTERM"
  podman stop --time 45 "$name" >/dev/null
  local code
  code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
  podman logs "$name" 2>&1 | grep -E '"event":"(watch.started|file.done|run.stopping|watch.stopped)"' || true
  say "exit code after SIGTERM: $code"
  [ "$code" = 0 ]
  say "the ledger survives the container, on the volume"
  podman rm "$name" >/dev/null
  podman run "${RUN_OPTS[@]}" --rm -v "$volume:/data" "$IMAGE" status --project-id batchsub-demo
  podman volume rm "$volume" >/dev/null
}

wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then
      say "ok: $what"
      return 0
    fi
    sleep 1
  done
  say "timed out waiting for $what"
  return 1
}

stand_in_base
build
if [ "${1:-}" = "--smoke" ]; then
  smoke
fi
