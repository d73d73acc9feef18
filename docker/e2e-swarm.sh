#!/bin/bash
# End-to-end test of rxpath on Docker Swarm (`rxpath compose --swarm`), with a real engine.
#
#  1. installs what is missing (docker.io, debootstrap) and starts dockerd when none
#     answers; makes this node a single-node swarm (`docker swarm init` on loopback)
#     unless it already is a swarm manager;
#  2. builds the rxpath image as docker/e2e.sh does (docker/e2e-lib.sh) and names it by
#     its image ID, which Swarm runs as it is (a tag would be looked up in a registry);
#  3. labels the node with every role the stack's placement constraints ask for,
#     deploys docker/chaos.toml as a stack, SIGKILLs cpu0's container process
#     mid-transfer, and asserts that Swarm started a new task for it, that it rejoined,
#     that the coordinator's verdict is PASS with every flow intact and that the
#     coordinator's task exit code (how a user reads the verdict) says the same.
# Everything it made is removed on every exit path: the stack (services, secrets,
# configs, the overlay network), its volumes, the labels it added, the images, the swarm
# if it initialised it (`docker swarm leave --force`), and a dockerd it started.
#
# Exit codes: 0 passed, 1 failed, 77 no Docker engine (or no swarm) could be had here.
set -euo pipefail

E2E_NAME=e2e-swarm
# shellcheck source=docker/e2e-lib.sh
. "$(dirname "$0")/e2e-lib.sh"
STACK="rxpath-e2e-$$"
SWARM_INIT=""        # this script made the swarm: leave it on exit
GWBRIDGE_MADE=""     # ...and docker_gwbridge, which leaving keeps
NODE=""
LABELS_ADDED=()
DEPLOYED=""

# --- cleanup, in reverse order of registration --------------------------------------------
leave_swarm() {
    [ -n "$SWARM_INIT" ] || return 0
    docker swarm leave --force >/dev/null 2>&1 || log "swarm leave failed"
    [ -z "$GWBRIDGE_MADE" ] || docker network rm docker_gwbridge >/dev/null 2>&1
}
remove_labels() {
    [ -z "$SWARM_INIT" ] || return 0    # the swarm goes, and its labels with it
    local l args=()
    for l in "${LABELS_ADDED[@]}"; do args+=(--label-rm "$l"); done
    [ ${#args[@]} -eq 0 ] || docker node update "${args[@]}" "$NODE" >/dev/null 2>&1
}
stack_down() {
    [ -n "$DEPLOYED" ] || return 0
    local s ns="label=com.docker.stack.namespace=$STACK"
    if [ "$E2E_RC" != 0 ]; then
        for s in $(docker stack services -q "$STACK" 2>/dev/null); do
            log "tasks and logs of $(docker service inspect -f '{{.Spec.Name}}' "$s"):"
            docker service ps --no-trunc --format '  {{.Name}} {{.CurrentState}} {{.Error}}' \
                "$s" >&2 2>/dev/null
            docker service logs --no-task-ids --tail 10 "$s" >&2 2>/dev/null
        done
    fi
    docker stack rm "$STACK" >/dev/null 2>&1
    # `stack rm` returns before the tasks' containers are gone; volumes in use stay.
    for _ in $(seq 1 120); do
        [ -z "$(docker ps -aq --filter "$ns")" ] && break
        sleep 0.5
    done
    docker ps -aq --filter "$ns" | xargs -r docker rm -f >/dev/null 2>&1
    docker volume rm "${STACK}_results" "${STACK}_state" >/dev/null 2>&1
    # What `stack rm` left (the network can linger while its last endpoint goes).
    for _ in $(seq 1 40); do
        [ -z "$(docker network ls -q --filter "$ns")" ] && break
        docker network ls -q --filter "$ns" | xargs -r docker network rm >/dev/null 2>&1
        sleep 0.5
    done
    docker secret ls -q --filter "$ns" | xargs -r docker secret rm >/dev/null 2>&1
    docker config ls -q --filter "$ns" | xargs -r docker config rm >/dev/null 2>&1
}
on_exit leave_swarm
on_exit remove_labels
on_exit stack_down

# --- 1. tools, engine, swarm ----------------------------------------------------------------
e2e_tools
e2e_engine
case "$(docker info -f '{{.Swarm.LocalNodeState}}')" in
    inactive)
        docker network inspect docker_gwbridge >/dev/null 2>&1 || GWBRIDGE_MADE=1
        # Loopback only: a single-node swarm needs no address another host can reach.
        docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 \
            >"$WORK/swarm-init.log" 2>&1 \
            || { cat "$WORK/swarm-init.log" >&2; no_engine "docker swarm init failed"; }
        SWARM_INIT=1
        log "initialised a single-node swarm"
        ;;
    active)
        [ "$(docker info -f '{{.Swarm.ControlAvailable}}')" = true ] \
            || no_engine "this node is a worker of a swarm: a stack is deployed from a manager"
        log "using the swarm this node is a manager of"
        ;;
    *) no_engine "swarm state $(docker info -f '{{.Swarm.LocalNodeState}}')" ;;
esac
NODE="$(docker info -f '{{.Swarm.NodeID}}')"
# From here on, any failure is a real failure.

# --- 2. image -----------------------------------------------------------------------------------
e2e_images
RXPATH_IMAGE="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
export RXPATH_IMAGE

# --- 3. the stack: kill cpu0 mid-transfer --------------------------------------------------------
YML="$WORK/stack.yml"
(cd "$ROOT" && python3 -m cli.main compose --swarm "$HERE/chaos.toml" -o "$YML") 2>/dev/null \
    || fail "rxpath compose --swarm failed"
for l in $(grep -o 'node\.labels\.rxpath\.[a-z]* == true' "$YML" | cut -d' ' -f1 \
           | sed 's/^node\.labels\.//' | sort -u); do
    if [ -z "$(docker node inspect -f "{{index .Spec.Labels \"$l\"}}" "$NODE")" ]; then
        docker node update --label-add "$l=true" "$NODE" >/dev/null || fail "cannot label $l"
        LABELS_ADDED+=("$l")
    fi
done
log "node labelled: ${LABELS_ADDED[*]:-(had every label already)}"

t=$SECONDS
DEPLOYED=1
docker stack deploy --resolve-image never -c "$YML" "$STACK" >"$WORK/deploy.log" 2>&1 \
    || { cat "$WORK/deploy.log" >&2; fail "docker stack deploy failed"; }
log "stack $STACK deployed"

# running_container SERVICE TIMEOUT: the container of SERVICE's running task
running_container() {
    local c task
    for _ in $(seq 1 $(($2 * 2))); do
        task="$(docker service ps -q --filter desired-state=running "${STACK}_$1" 2>/dev/null \
                | head -1)"
        if [ -n "$task" ]; then
            c="$(docker inspect -f '{{if eq .Status.State "running"}}{{.Status.ContainerStatus.ContainerID}}{{end}}' "$task")"
            [ -n "$c" ] && { echo "$c"; return 0; }
        fi
        sleep 0.5
    done
    fail "$1: no running task after $2 s"
}

coord="$(running_container coordinator 120)"
wait_started "$coord" || fail "traffic never started"
log "every actor ready, traffic started ($((SECONDS - t)) s after the deploy)"
sleep "${RXPATH_E2E_KILL_AFTER:-1.5}"
cpu0="$(running_container cpu0 10)"
# SIGKILL to the container's process from the host: a crash, which the on-failure policy
# answers with a new task (`docker kill` would be a stop by hand, never restarted).
pid="$(docker inspect -f '{{.State.Pid}}' "$cpu0")"
[ "${pid:-0}" -gt 0 ] || fail "cpu0 is not running"
kill -KILL "$pid" || fail "cannot kill cpu0's process $pid"
log "killed cpu0 (SIGKILL to its process) mid-transfer"

code="$(timeout 400 docker wait "$coord")" || fail "coordinator still running after 400 s"
docker cp "$coord:/results/summary.json" "$WORK/summary.json" 2>/dev/null \
    || fail "no summary.json (coordinator exit $code)"
# The verdict as a user reads it from Swarm: the coordinator's one task and its exit code.
task_state=""
for _ in $(seq 1 20); do
    task_state="$(docker inspect -f '{{.Status.State}} {{.Status.ContainerStatus.ExitCode}}' \
                  "$(docker service ps -q "${STACK}_coordinator" | head -1)")"
    case "$task_state" in complete*|failed*) break ;; esac
    sleep 0.5
done
log "coordinator: container exit $code, task '$task_state'"
cpu0_tasks="$(docker service ps --no-trunc --format '{{.CurrentState}} | {{.Error}}' \
              "${STACK}_cpu0")"
log "cpu0's tasks:"; sed 's/^/  /' <<<"$cpu0_tasks" >&2
check_summary "$WORK/summary.json" cpu0 || fail "verdict says not intact"
[ "$code" = 0 ] || fail "coordinator exit $code"
[ "$task_state" = "complete 0" ] || fail "coordinator's task says '$task_state'"
[ "$(wc -l <<<"$cpu0_tasks")" -ge 2 ] || fail "Swarm never started a new task for cpu0"
grep -q 'non-zero exit (137)' <<<"$cpu0_tasks" || fail "no cpu0 task died of the SIGKILL"
log "cpu0 killed, Swarm started a new task, it rejoined, every flow intact ($((SECONDS - t)) s)"
log "PASS"
