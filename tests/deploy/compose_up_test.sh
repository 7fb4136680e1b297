#!/usr/bin/env bash
# The compose cluster on a real Docker engine, as the README's quick start runs it
# (`make cluster` = scripts/cluster up): builds pmdrl:cpu, brings up a learner, 3 actors,
# 2 verifiers and Prometheus on the arith config with a short schedule, and reads
# everything it checks through Prometheus's HTTP API:
#   - the learner's update counter advances; cluster tokens/s > 0 from 3 actor series;
#   - scaled to 5 actors: 5 live actors (pmdrl_learner_live_actors), 5 series; scaled to
#     1: training goes on;
#   - the learner's process killed (as the kernel's OOM killer would): Docker's restart
#     policy restarts it, it resumes from its checkpoint (its counter continues from the
#     checkpoint's update, not from 0) and the actors register again on their own;
#   - one verifier killed (`docker kill`, so it stays down): training goes on with the other;
#   - bad input stops the stack with a clear message: a missing token file, an unreadable
#     one, a PMDRL_CONFIG path that does not exist.
# Prints the throughput at 1, 3 and 5 actors (figures, not assertions: 2 cores here).
#
#   compose_up_test.sh SOURCE_DIR
#
# Starts dockerd when no engine answers and it may (root), and stops it again; exits 77
# (ctest: skipped) with one line saying why when there is no engine and it may not start
# one. Cleans up with `docker-compose down -v`; the images it built stay cached.
set -uo pipefail
SRC=${1:?usage: compose_up_test.sh SOURCE_DIR}
cd "$SRC" || exit 1
export COMPOSE_PROJECT_NAME=pmdrl-composetest
DEADLINE=$((SECONDS + ${COMPOSE_TEST_SECONDS:-2700}))

log() { printf '[compose_up_test %4ds] %s\n' "$SECONDS" "$*"; }
fail() {
  log "FAIL: $*"
  exit 1
}

# ------------------------------------------------------------------- engine
# shellcheck source=scripts/lib/dockerd.sh
source scripts/lib/dockerd.sh
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: no Docker engine answers and starting one needs root (run scripts/docker-env as root)"
    exit 77
  fi
  if ! dockerd_up; then
    echo "SKIP: no Docker engine answers and dockerd would not start here (see above)"
    exit 77
  fi
fi

TMP=$(mktemp -d /tmp/pmdrl-compose-test.XXXXXX)
# docker-compose on the cluster's file, with the Prometheus image scripts/cluster picks.
dc() { bash "$SRC/scripts/cluster" compose "$@"; }

cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    log "last lines of every container:"
    dc logs --no-color --tail 15 2>&1 | tail -n 120
  fi
  log "cleanup: docker-compose down -v"
  dc down -v --remove-orphans >/dev/null 2>&1
  COMPOSE_PROJECT_NAME=pmdrl-composetest-bad dc down -v --remove-orphans >/dev/null 2>&1
  rm -rf "$TMP"
  dockerd_down
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
dc down -v --remove-orphans >/dev/null 2>&1  # what a killed earlier run left

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PROMETHEUS_PORT=$PORT
PROM=http://127.0.0.1:$PORT
export PMDRL_TOKEN_SECRET_FILE=$TMP/pmdrl_token
export PMDRL_TOKEN=
# A short schedule that runs until the test stops it: no time limit, a checkpoint every 5
# updates, no held-out evaluation in the way, a base policy in a few seconds.
export PMDRL_FLAGS="--learner.max_seconds=0 --learner.updates=100000 --learner.checkpoint_every=5 \
--learner.eval_every=100000 --learner.prompts_per_update=16 --learner.mini_batches=1 \
--actor.prompts_per_batch=8 --sft.max_steps=100 --sft.eval_every=50"

# prom QUERY: the first result's value, or nothing.
prom() {
  curl -fsS --max-time 5 "$PROM/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
    python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "")' 2>/dev/null
}
# until_true WHAT SECONDS COMMAND...: polls COMMAND every 3 s.
until_true() {
  local what=$1 limit=$2
  shift 2
  local end=$((SECONDS + limit))
  [ $end -gt $DEADLINE ] && end=$DEADLINE
  while ! "$@"; do
    if [ $SECONDS -ge $end ]; then fail "timed out after ${limit} s waiting for: $what"; fi
    sleep 3
  done
  log "ok: $what"
}
ge() { local v; v=$(prom "$1"); [ -n "$v" ] && python3 -c "import sys; sys.exit(0 if float('$v') >= float('$2') else 1)"; }
eq() { local v; v=$(prom "$1"); [ -n "$v" ] && python3 -c "import sys; sys.exit(0 if float('$v') == float('$2') else 1)"; }
updates() { local v; v=$(prom 'max(pmdrl_learner_update)'); echo "${v:-0}"; }
THROUGHPUT='sum(rate(pmdrl_actor_generated_tokens_total[30s]))'
SERIES='count(rate(pmdrl_actor_generated_tokens_total[30s]) > 0)'
throughput() { printf '%.0f' "$(prom "$THROUGHPUT" || echo 0)"; }
scale() {
  bash scripts/cluster scale "$1" 2 2>&1 | grep -v "is up-to-date"
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail "scripts/cluster scale $1 failed"
}

# ------------------------------------------------------------------- up: 3 actors
log "scripts/cluster up (ACTORS=3 VERIFIERS=2, Prometheus on $PROM)"
start=$SECONDS
ACTORS=3 VERIFIERS=2 bash scripts/cluster up || fail "scripts/cluster up failed"
log "cluster up in $((SECONDS - start)) s (image build included); pmdrl:cpu is" \
    "$(docker image inspect -f '{{.Size}}' pmdrl:cpu | awk '{printf "%.0f MB", $1 / 1e6}')"

until_true "Prometheus answers" 120 curl -fsS --max-time 5 -o /dev/null "$PROM/-/ready"
until_true "the learner's update counter reaches 2 (via Prometheus)" 600 ge 'max(pmdrl_learner_update)' 2
until_true "3 actors produce tokens (3 series in $SERIES)" 180 eq "$SERIES" 3
until_true "cluster throughput > 0" 60 ge "$THROUGHPUT" 0.001
sleep 30
T3=$(throughput)
log "throughput at 3 actors: $T3 tokens/s"

# ------------------------------------------------------------------- 5 actors
log "scale to 5 actors"
scale 5
until_true "5 live actors (pmdrl_learner_live_actors)" 240 eq 'max(pmdrl_learner_live_actors)' 5
until_true "5 actor series in $SERIES" 180 eq "$SERIES" 5
sleep 30
T5=$(throughput)
log "throughput at 5 actors: $T5 tokens/s"

# ------------------------------------------------------------------- 1 actor
log "scale to 1 actor"
scale 1
until_true "1 live actor" 120 eq 'max(pmdrl_learner_live_actors)' 1
until_true "1 actor series" 120 eq "$SERIES" 1
u=$(updates)
until_true "training goes on at 1 actor (update > $u)" 300 ge 'max(pmdrl_learner_update)' "$((${u%.*} + 1))"
sleep 30
T1=$(throughput)
log "throughput at 1 actor: $T1 tokens/s"

# ------------------------------------------------------------------- learner killed
until_true "a checkpoint was written (update >= 5)" 300 ge 'max(pmdrl_learner_update)' 5
learner=$(dc ps -q learner)
[ -n "$learner" ] || fail "no learner container"
before=$(updates)
pid=$(docker inspect -f '{{.State.Pid}}' "$learner")
log "kill -9 the learner's process (pid $pid on the host, update $before): a crash, not a stop"
kill -9 "$pid"
killed=$SECONDS
restarted() {
  local state
  state=$(docker inspect -f '{{.RestartCount}} {{.State.Running}}' "$learner")
  [ "${state% *}" -ge 1 ] && [ "${state#* }" = true ]
}
until_true "Docker restarted the learner (restart policy)" 120 restarted
resumed_line() { docker logs "$learner" 2>&1 | grep -m1 "resumed from"; }
until_true "the learner resumed from a checkpoint" 180 resumed_line
resumed=$(resumed_line | sed -n 's/.*: update \([0-9]*\),.*/\1/p')
log "learner log: $(resumed_line | sed 's/^.*\(resumed from\)/\1/')"
if [ -z "$resumed" ] || [ "$resumed" -lt 5 ]; then
  fail "the learner resumed at update '${resumed}', not at its checkpoint (>= 5)"
fi
# The checkpoint holds a few buffered groups: 6 more updates need new rollouts, so an actor
# has registered with the restarted learner and leased from it.
until_true "the update counter continues from the checkpoint's $resumed past $((resumed + 5)) (it was $before before the kill)" \
  300 ge 'max(pmdrl_learner_update)' "$((resumed + 6))"
until_true "1 live actor (registered again on its own)" 60 eq 'max(pmdrl_learner_live_actors)' 1
low=$(prom "min_over_time(pmdrl_learner_update[$((SECONDS - killed + 10))s])")
log "lowest update counter Prometheus saw since the kill: $low"
ge "min_over_time(pmdrl_learner_update[$((SECONDS - killed + 10))s])" 1 ||
  fail "the update counter fell to $low after the restart (not resumed from the checkpoint)"

# ------------------------------------------------------------------- verifier killed
mapfile -t verifiers < <(dc ps -q verifier)
[ ${#verifiers[@]} -eq 2 ] || fail "expected 2 verifiers, have ${#verifiers[@]}"
log "docker kill one verifier (${verifiers[0]:0:12}); it stays down"
docker kill "${verifiers[0]}" >/dev/null
u=$(updates)
until_true "training goes on with the other verifier (update > $((${u%.*} + 1)))" 300 \
  ge 'max(pmdrl_learner_update)' "$((${u%.*} + 2))"
[ "$(docker inspect -f '{{.State.Running}}' "${verifiers[0]}")" = false ] ||
  fail "the killed verifier is running again"

log "throughput (tokens/s, from Prometheus): 1 actor $T1, 3 actors $T3, 5 actors $T5"
dc down -v --remove-orphans >/dev/null 2>&1

# ------------------------------------------------------------------- bad input
export COMPOSE_PROJECT_NAME=pmdrl-composetest-bad
# bad_input WHAT EXPECTED-IN-OUTPUT: `up` must fail and its output or the first
# container's log must carry EXPECTED.
bad_input() {
  local what=$1 expected=$2 out
  out=$(dc up -d base learner 2>&1)
  local rc=$?
  out="$out
$(dc logs --no-color base 2>&1)"
  dc down -v --remove-orphans >/dev/null 2>&1
  if [ $rc -eq 0 ]; then
    echo "$out" | tail -n 20
    fail "$what: docker-compose up succeeded"
  fi
  if ! grep -qF -- "$expected" <<<"$out"; then
    echo "$out" | tail -n 20
    fail "$what: the output does not say '$expected'"
  fi
  log "ok: $what stops the stack: $(grep -F -m1 -- "$expected" <<<"$out" | cut -c1-200)"
}
export PMDRL_TOKEN_SECRET_FILE=$TMP/absent_token
bad_input "a missing token file" "absent_token"
export PMDRL_TOKEN_SECRET_FILE=$TMP/private_token
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PMDRL_TOKEN_SECRET_FILE"
chmod 0600 "$PMDRL_TOKEN_SECRET_FILE"
bad_input "a token file the containers cannot read" "not readable by uid 10001"
export PMDRL_TOKEN_SECRET_FILE=$TMP/pmdrl_token
PMDRL_CONFIG=/opt/pmdrl/examples/no-such-config.yaml \
  bad_input "a PMDRL_CONFIG that does not exist" "no-such-config.yaml"
log "PASS"
