#!/bin/sh
# Entry point of the pmdrl images: entrypoint.sh BINARY [FLAGS...]
#
# Adds the flags that depend on where the container runs, before the caller's flags
# (the config takes the last value of a key, so flags given to the container win):
#   PMDRL_METRICS_PORT   --<component>.metrics_port (also what HEALTHCHECK polls), and
#                        --run.metrics_host=0.0.0.0 so Prometheus and probes reach it
#   PMDRL_NAME           --actor.name / --verifier.name; default: the hostname, so the
#                        replicas of `docker compose up --scale actor=8` differ (an
#                        actor's sampling seed derives from its name)
#   PMDRL_RANK_FROM_HOSTNAME=1   --learner.rank from the hostname's ordinal suffix
#                        (Kubernetes StatefulSet pod learner-3 -> rank 3)
#   PMDRL_RUN_DIR        --run.dir, and --learner.resume=auto once a checkpoint exists
#                        there (a restarted learner continues instead of starting over;
#                        with `latest` lost, from the newest complete update-N folder)
#   PMDRL_TOKEN_FILE     --run.token_file, when $PMDRL_TOKEN is empty; a token that is
#                        neither set nor readable stops the container (exit 1) with a line
#                        saying so, before the binary starts
#   PMDRL_FLAGS          extra --key=value flags, space-separated, after all others (so
#                        they win): the compose cluster's way to change a config key
#
# `entrypoint.sh base-policy DIR [FLAGS...]` writes the SFT base policy into DIR with
# `pmdrl sft` unless DIR already holds a model (config.json), then exits. It is the
# compose cluster's first container and every other waits for it, so it checks the token
# (and pmdrl sft the config) for all of them: bad input stops the stack there.
set -eu

if [ "$#" -eq 0 ]; then
  echo "usage: entrypoint.sh pmdrl-learner|pmdrl-actor|pmdrl-verifier|pmdrl|base-policy [FLAGS...]" >&2
  exit 2
fi
bin=$1
shift

pre=""
add() { pre="$pre $1"; }

if [ -z "${PMDRL_TOKEN:-}" ] && [ -n "${PMDRL_TOKEN_FILE:-}" ]; then
  if [ ! -e "$PMDRL_TOKEN_FILE" ]; then
    echo "entrypoint: no bearer token: PMDRL_TOKEN is empty and $PMDRL_TOKEN_FILE does not exist" \
         "(compose: the secret pmdrl_token, host file \$PMDRL_TOKEN_SECRET_FILE)" >&2
    exit 1
  fi
  if [ ! -r "$PMDRL_TOKEN_FILE" ] || [ ! -s "$PMDRL_TOKEN_FILE" ]; then
    echo "entrypoint: no bearer token: PMDRL_TOKEN is empty and $PMDRL_TOKEN_FILE is empty or" \
         "not readable by uid $(id -u) (give the host file mode 0644)" >&2
    exit 1
  fi
  add "--run.token_file=$PMDRL_TOKEN_FILE"
fi
if [ -n "${PMDRL_RUN_DIR:-}" ]; then add "--run.dir=$PMDRL_RUN_DIR"; fi
if [ -n "${PMDRL_METRICS_PORT:-}" ]; then add "--run.metrics_host=0.0.0.0"; fi

case "$bin" in
  base-policy)
    dir=${1:?base-policy needs the output directory}
    shift
    if [ -f "$dir/config.json" ]; then
      echo "entrypoint: base policy already in $dir"
      exit 0
    fi
    # shellcheck disable=SC2086 # $pre holds separate flags without spaces inside
    exec pmdrl sft $pre "--sft.output=$dir" "$@" ${PMDRL_FLAGS:-}
    ;;
  pmdrl-learner)
    if [ -n "${PMDRL_METRICS_PORT:-}" ]; then add "--learner.metrics_port=$PMDRL_METRICS_PORT"; fi
    if [ "${PMDRL_RANK_FROM_HOSTNAME:-0}" = "1" ]; then
      host=$(hostname)
      add "--learner.rank=${host##*-}"
    fi
    # Resume once a checkpoint exists: `latest`, or (when `latest` was lost) a finished
    # update-N folder, which resume=auto falls back to.
    if [ -n "${PMDRL_RUN_DIR:-}" ]; then
      found=""
      if [ -f "$PMDRL_RUN_DIR/checkpoints/latest" ]; then found=1; fi
      for d in "$PMDRL_RUN_DIR"/checkpoints/update-*; do
        case "$d" in *.tmp | *"update-*") ;; *) [ -d "$d" ] && found=1 ;; esac
      done
      if [ -n "$found" ]; then add "--learner.resume=auto"; fi
    fi
    ;;
  pmdrl-actor | pmdrl-verifier)
    section=${bin#pmdrl-}
    if [ -n "${PMDRL_METRICS_PORT:-}" ]; then add "--$section.metrics_port=$PMDRL_METRICS_PORT"; fi
    add "--$section.name=${PMDRL_NAME:-$(hostname)}"
    ;;
esac

# shellcheck disable=SC2086 # $pre and $PMDRL_FLAGS hold separate flags
exec "$bin" $pre "$@" ${PMDRL_FLAGS:-}
