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
# (default /var/cache/rxpath-e2e) to speed up the next run on this machine. Steps 1, 2
# and the cleanup are shared with docker/e2e-swarm.sh (docker/e2e-lib.sh).
#
# Exit codes: 0 passed, 1 failed, 77 no Docker engine could be started here.
set -euo pipefail

E2E_NAME=e2e
# shellcheck source=docker/e2e-lib.sh
. "$(dirname "$0")/e2e-lib.sh"
PROJECTS=()

COMPOSE=()
find_compose() {
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=(docker-compose)
    else return 1; fi
}

compose_down() {
    local p
    for p in "${PROJECTS[@]}"; do
        if [ "$E2E_RC" != 0 ] && [ -f "$WORK/$p.yml" ]; then
            log "logs of $p (tail):"
            "${COMPOSE[@]}" -p "$p" -f "$WORK/$p.yml" logs --no-color --tail 15 >&2 2>/dev/null
        fi
        "${COMPOSE[@]}" -p "$p" -f "$WORK/$p.yml" down -v --remove-orphans -t 5 >/dev/null 2>&1
    done
}
on_exit compose_down

# --- 1. tools and engine --------------------------------------------------------------
compose_pkg=()
find_compose || compose_pkg=(docker-compose)
e2e_tools "${compose_pkg[@]}"
find_compose || no_engine "no docker compose after installing docker-compose"
e2e_engine
log "compose: ${COMPOSE[*]}"
# From here on, any failure is a real failure.

# --- 2. images ----------------------------------------------------------------------------
e2e_images
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
check_summary "$WORK/$P1.json" - || fail "default topology: verdict says not intact"
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
wait_started "$coord" || fail "chaos: traffic never started"
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
check_summary "$WORK/$P2.json" cpu0 || fail "chaos: verdict says not intact"
[ "$code" = 0 ] || fail "chaos: coordinator exit $code"
[ "$restarts" -ge 1 ] || fail "chaos: the engine never restarted cpu0"
log "chaos: cpu0 killed and restarted, every flow intact ($((SECONDS - t)) s)"
log "PASS"
