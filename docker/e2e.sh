#!/bin/bash
# End-to-end test of rxpath under docker-compose, with a real Docker engine.
#
#  1. installs what is missing from Debian (docker.io, docker-compose, debootstrap) and
#     starts dockerd in the background when none answers;
#  2. builds a base image with debootstrap (no image registry is reachable), the rxpath
#     wheels on the host, and the rxpath image from them (the build needs no network);
#  3. runs docker/compose.default.yml and asserts the coordinator's verdict;
#  4. chaos: runs docker/chaos.toml, SIGKILLs cpu0's container process mid-transfer,
#     lets the restart policy bring it back, and asserts that it rejoined and every flow is intact.
# Everything it made (containers, networks, volumes, images, a dockerd it started) is
# removed on exit. The debootstrap tree is kept as a tarball in $RXPATH_E2E_CACHE
# (default /var/cache/rxpath-e2e) to speed up the next run on this machine.
#
# Exit codes: 0 passed, 1 failed, 77 no Docker engine could be started here.
set -euo pipefail

NO_ENGINE=77
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
CACHE="${RXPATH_E2E_CACHE:-/var/cache/rxpath-e2e}"
SUITE="${RXPATH_E2E_SUITE:-bookworm}"
MIRROR="${RXPATH_E2E_MIRROR:-http://deb.debian.org/debian}"
TAG="e2e-$$"
BASE_IMAGE="rxpath-base:$TAG"
IMAGE="rxpath:$TAG"
WORK="$(mktemp -d /tmp/rxpath-e2e.XXXXXX)"
PROJECTS=()
DOCKERD_PID=""
T0=$SECONDS

log() { echo "e2e [$((SECONDS - T0))s]: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
no_engine() { log "no Docker engine: $*"; echo "NO_DOCKER_ENGINE: $*"; exit "$NO_ENGINE"; }

COMPOSE=()
find_compose() {
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=(docker-compose)
    else return 1; fi
}

cleanup() {
    local rc=$?
    set +e
    for p in "${PROJECTS[@]}"; do
        if [ "$rc" != 0 ] && [ -f "$WORK/$p.yml" ]; then
            log "logs of $p (tail):"
            "${COMPOSE[@]}" -p "$p" -f "$WORK/$p.yml" logs --no-color --tail 15 >&2 2>/dev/null
        fi
        "${COMPOSE[@]}" -p "$p" -f "$WORK/$p.yml" down -v --remove-orphans -t 5 >/dev/null 2>&1
    done
    if [ -n "$DOCKERD_PID" ] || docker info >/dev/null 2>&1; then
        docker rmi -f "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 1 20); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        # containerd started by dockerd goes with it
    fi
    rm -rf "$WORK"
    log "done (exit $rc)"
}
trap cleanup EXIT

# --- 1. tools and engine --------------------------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
find_compose || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then no_engine "need root to install: ${need[*]}"; fi
    log "installing from Debian: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || no_engine "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log" >&2; no_engine "cannot install ${need[*]}"; }
    find_compose || no_engine "no docker compose after installing docker-compose"
fi

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
        DOCKERD_PID_DEAD="$DOCKERD_PID"
        kill "$DOCKERD_PID_DEAD" 2>/dev/null || true
        DOCKERD_PID=""
        no_engine "dockerd did not come up within 60 s"
    fi
fi
log "engine: $(docker version --format '{{.Server.Version}}'), compose: ${COMPOSE[*]}"
# From here on, any failure is a real failure.

# --- 2. images ----------------------------------------------------------------------------
mkdir -p "$CACHE"
BASE_TAR="$CACHE/base-$SUITE.tar"
if [ ! -s "$BASE_TAR" ]; then
    log "debootstrap $SUITE (minbase + python3)"
    rm -rf "$CACHE/rootfs.tmp"
    debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" \
        "$CACHE/rootfs.tmp" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
    rm -rf "$CACHE/rootfs.tmp/var/cache/apt/archives/"*.deb "$CACHE/rootfs.tmp/var/lib/apt/lists/"*
    tar -C "$CACHE/rootfs.tmp" -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$CACHE/rootfs.tmp"
fi
docker import "$BASE_TAR" "$BASE_IMAGE" >/dev/null || fail "docker import of the base failed"
log "base image $BASE_IMAGE"

mkdir -p "$WORK/ctx/wheels"
python3 -m pip wheel --quiet "$ROOT" -w "$WORK/ctx/wheels" >"$WORK/wheel.log" 2>&1 \
    || { tail -20 "$WORK/wheel.log" >&2; fail "pip wheel failed"; }
cp "$HERE/Dockerfile" "$WORK/ctx/"
docker build --network none --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" "$WORK/ctx" \
    >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; fail "docker build failed"; }
log "image $IMAGE built"
export RXPATH_IMAGE="$IMAGE"

# --- helpers for a compose run -------------------------------------------------------------
# up PROJECT YML: start the project detached
up() {
    PROJECTS+=("$1")
    "${COMPOSE[@]}" -p "$1" -f "$2" up -d >"$WORK/$1.up.log" 2>&1 \
        || { cat "$WORK/$1.up.log" >&2; fail "$1: compose up failed"; }
}
cid() { "${COMPOSE[@]}" -p "$1" -f "$WORK/$1.yml" ps -q "$2"; }
# verdict PROJECT TIMEOUT: wait for the coordinator; copy its summary to $WORK/PROJECT.json
verdict() {
    local c code
    c="$(cid "$1" coordinator)"
    code="$(timeout "$2" docker wait "$c")" || fail "$1: coordinator still running after $2 s"
    docker cp "$c:/results/summary.json" "$WORK/$1.json" 2>/dev/null \
        || fail "$1: no summary.json (coordinator exit $code)"
    echo "$code"
}
check_summary() {  # check_summary PROJECT EXPECT_REJOIN
    python3 - "$WORK/$1.json" "$2" <<'PY'
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

# --- 3. the default topology ----------------------------------------------------------------
P1="rxpath-e2e-default-$$"
# The checked-in file, written afresh so that its CurveZMQ keys exist (never committed):
# tests/test_compose.py checks that `rxpath compose` writes exactly docker/compose.default.yml.
(cd "$ROOT" && python3 -m cli.main compose -o "$WORK/compose.default.yml") 2>/dev/null \
    || fail "rxpath compose failed"
cmp -s "$WORK/compose.default.yml" "$HERE/compose.default.yml" \
    || fail "docker/compose.default.yml is stale"
mv "$WORK/compose.default.yml" "$WORK/$P1.yml"
t=$SECONDS
up "$P1" "$WORK/$P1.yml"
code="$(verdict "$P1" 300)"
check_summary "$P1" - || fail "default topology: verdict says not intact"
[ "$code" = 0 ] || fail "default topology: coordinator exit $code"
log "default topology: every flow intact ($((SECONDS - t)) s)"
"${COMPOSE[@]}" -p "$P1" -f "$WORK/$P1.yml" down -v -t 5 >/dev/null 2>&1 || true

# --- 4. chaos: kill cpu0 mid-transfer --------------------------------------------------------
P2="rxpath-e2e-chaos-$$"
(cd "$ROOT" && python3 -m cli.main compose "$HERE/chaos.toml" -o "$WORK/$P2.yml") \
    2>/dev/null || fail "rxpath compose failed"
t=$SECONDS
up "$P2" "$WORK/$P2.yml"
coord="$(cid "$P2" coordinator)"
for _ in $(seq 1 240); do
    docker logs "$coord" 2>&1 | grep -q '"event": *"started"' && break
    [ "$(docker inspect -f '{{.State.Running}}' "$coord")" = true ] || break
    sleep 0.5
done
docker logs "$coord" 2>&1 | grep -q '"event": *"started"' || fail "chaos: traffic never started"
sleep "${RXPATH_E2E_KILL_AFTER:-1.5}"
cpu0="$(cid "$P2" cpu0)"
# SIGKILL to the container's process from the host: a crash, which the on-failure policy
# restarts. (`docker kill` would mark the container as stopped by hand, and the engine
# never applies a restart policy to such a container.)
pid="$(docker inspect -f '{{.State.Pid}}' "$cpu0")"
[ "${pid:-0}" -gt 0 ] || fail "chaos: cpu0 is not running"
kill -KILL "$pid" || fail "chaos: cannot kill cpu0's process $pid"
log "chaos: killed cpu0 (SIGKILL to its process) mid-transfer"
code="$(verdict "$P2" 400)"
restarts="$(docker inspect -f '{{.RestartCount}}' "$cpu0")"
log "chaos: cpu0 restarted $restarts time(s) by the engine"
check_summary "$P2" cpu0 || fail "chaos: verdict says not intact"
[ "$code" = 0 ] || fail "chaos: coordinator exit $code"
[ "$restarts" -ge 1 ] || fail "chaos: the engine never restarted cpu0"
log "chaos: cpu0 killed and restarted, every flow intact ($((SECONDS - t)) s)"
log "PASS"
