# Shared steps of the end-to-end scripts (docker/e2e.sh, docker/e2e-swarm.sh), sourced by
# them after `set -euo pipefail` and E2E_NAME=<name used in log lines>:
#
#   e2e_tools PKG...   installs what is missing from Debian (docker.io, debootstrap and
#                      the script's own PKGs); exits 77 when that is not possible
#   e2e_engine         starts dockerd in the background when none answers (exit 77 if
#                      it cannot); a dockerd started here is stopped on exit
#   e2e_images         builds the base image with debootstrap (no image registry is
#                      reachable), the rxpath wheels on the host and the rxpath image
#                      from them ($IMAGE; the build needs no network)
#   wait_started CONTAINER   waits (up to 2 min) for a coordinator's "started" event;
#                      fails if it exits first
#   check_summary FILE ACTOR|-   prints a coordinator's summary.json; fails unless every
#                      flow is intact (and ACTOR rejoined, unless -)
#   on_exit FUNCTION   runs FUNCTION on exit, before the images and the engine go (the
#                      last registered runs first); it sees $E2E_RC, the exit status
#
# Everything made is removed on exit. The debootstrap tree is kept as a tarball in
# $RXPATH_E2E_CACHE (default /var/cache/rxpath-e2e) to speed up the next run.

NO_ENGINE=77
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
CACHE="${RXPATH_E2E_CACHE:-/var/cache/rxpath-e2e}"
SUITE="${RXPATH_E2E_SUITE:-bookworm}"
MIRROR="${RXPATH_E2E_MIRROR:-http://deb.debian.org/debian}"
TAG="e2e-$$"
BASE_IMAGE="rxpath-base:$TAG"
IMAGE="rxpath:$TAG"
WORK="$(mktemp -d /tmp/rxpath-e2e.XXXXXX)"
DOCKERD_PID=""
E2E_RC=0
T0=$SECONDS
_ON_EXIT=()

log() { echo "${E2E_NAME:-e2e} [$((SECONDS - T0))s]: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
no_engine() { log "no Docker engine: $*"; echo "NO_DOCKER_ENGINE: $*"; exit "$NO_ENGINE"; }
on_exit() { _ON_EXIT+=("$1"); }

_e2e_cleanup() {
    E2E_RC=$?
    set +e
    local i
    for ((i = ${#_ON_EXIT[@]} - 1; i >= 0; i--)); do "${_ON_EXIT[i]}"; done
    if [ -n "$DOCKERD_PID" ] || docker info >/dev/null 2>&1; then
        docker rmi -f "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 1 20); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        # containerd started by dockerd goes with it
    fi
    rm -rf "$WORK"
    log "done (exit $E2E_RC)"
}
trap _e2e_cleanup EXIT

e2e_tools() {
    local need=("$@")
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    command -v docker >/dev/null 2>&1 || need+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    [ ${#need[@]} -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ]; then no_engine "need root to install: ${need[*]}"; fi
    log "installing from Debian: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || no_engine "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log" >&2; no_engine "cannot install ${need[*]}"; }
}

e2e_engine() {
    if ! docker info >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || no_engine "no engine answers and starting dockerd needs root"
        command -v dockerd >/dev/null 2>&1 || no_engine "no dockerd binary"
        log "starting dockerd"
        dockerd >"$WORK/dockerd.log" 2>&1 &
        DOCKERD_PID=$!
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 1
        done
        if ! docker info >/dev/null 2>&1; then
            tail -15 "$WORK/dockerd.log" >&2
            kill "$DOCKERD_PID" 2>/dev/null || true
            DOCKERD_PID=""
            no_engine "dockerd did not come up within 60 s"
        fi
    fi
    log "engine: $(docker version --format '{{.Server.Version}}')"
}

e2e_images() {
    mkdir -p "$CACHE"
    local base_tar="$CACHE/base-$SUITE.tar"
    if [ ! -s "$base_tar" ]; then
        log "debootstrap $SUITE (minbase + python3)"
        rm -rf "$CACHE/rootfs.tmp"
        debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" \
            "$CACHE/rootfs.tmp" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
        rm -rf "$CACHE/rootfs.tmp/var/cache/apt/archives/"*.deb \
            "$CACHE/rootfs.tmp/var/lib/apt/lists/"*
        tar -C "$CACHE/rootfs.tmp" -cf "$base_tar.part" . && mv "$base_tar.part" "$base_tar"
        rm -rf "$CACHE/rootfs.tmp"
    fi
    docker import "$base_tar" "$BASE_IMAGE" >/dev/null || fail "docker import of the base failed"
    log "base image $BASE_IMAGE"

    mkdir -p "$WORK/ctx/wheels"
    python3 -m pip wheel --quiet "$ROOT" -w "$WORK/ctx/wheels" >"$WORK/wheel.log" 2>&1 \
        || { tail -20 "$WORK/wheel.log" >&2; fail "pip wheel failed"; }
    cp "$HERE/Dockerfile" "$WORK/ctx/"
    docker build --network none --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" "$WORK/ctx" \
        >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; fail "docker build failed"; }
    log "image $IMAGE built"
}

wait_started() {  # wait_started CONTAINER: until its coordinator logs "started" (or exits)
    for _ in $(seq 1 240); do
        docker logs "$1" 2>&1 | grep -q '"event": *"started"' && return 0
        [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || break
        sleep 0.5
    done
    docker logs "$1" 2>&1 | grep -q '"event": *"started"'
}
check_summary() {  # check_summary SUMMARY_JSON EXPECT_REJOIN
    python3 - "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for f in s["flows"]:
    print(f"  {f['flow']}: {f['received']}/{f['bytes']} bytes, bad {f['bad_chunks']}, "
          f"eof {f['eof']}, intact {f['intact']}", file=sys.stderr)
print(f"  reason {s['reason']}, transfer {s['transfer_s']} s, rejoined {s.get('rejoined')}",
      file=sys.stderr)
ok = s["integrity"] and s["reason"] == "complete" and all(f["intact"] for f in s["flows"])
if sys.argv[2] != "-" and not s.get("rejoined", {}).get(sys.argv[2]):
    print(f"  {sys.argv[2]} never rejoined", file=sys.stderr)
    ok = False
sys.exit(0 if ok else 1)
PY
}
