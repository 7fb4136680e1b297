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
#   PMDRL_TLS_DIR        --run.tls_cert/--run.tls_key/--run.tls_ca of DIR/node.crt,
#                        DIR/node.key and DIR/ca.crt (mutual TLS) for pmdrl-learner,
#                        pmdrl-actor and pmdrl-verifier; a missing file stops the container
#   PMDRL_FLAGS          extra --key=value flags, space-separated, after all others (so
#                        they win): the compose cluster's way to change a config key
#
# `entrypoint.sh base-policy DIR [FLAGS...]` writes the SFT base policy into DIR with
# `pmdrl sft` unless DIR already holds a model (config.json), then exits. It is the
# compose cluster's first container and every other waits for it, so it checks the token
# (and pmdrl sft the config) for all of them: bad input stops the stack there.
#
# `entrypoint.sh certs DIR [NAME...]` makes the cluster's mutual-TLS files in DIR unless
# they are there: a throw-away CA (its key deleted once used) and one certificate for
# every service, server and client, whose SANs are the NAMEs (DNS names; default
# learner verifier) plus localhost, 127.0.0.1 and ::1; node.key is mode 0600. The
# compose cluster's one-shot `certs` service.
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
         "not readable by uid $(id -u) (the host file must be uid $(id -u)'s, mode 0600:" \
         "scripts/cluster up does that)" >&2
    exit 1
  fi
  case "$(stat -L -c %a "$PMDRL_TOKEN_FILE")" in
    *00) ;;
    *)
      echo "entrypoint: no bearer token: permissions $(stat -L -c %a "$PMDRL_TOKEN_FILE") of" \
           "$PMDRL_TOKEN_FILE are too open (group or others may read it); chmod 600 the host" \
           "file and chown it to uid $(id -u) (scripts/cluster up does that)" >&2
      exit 1
      ;;
  esac
  add "--run.token_file=$PMDRL_TOKEN_FILE"
fi
if [ -n "${PMDRL_RUN_DIR:-}" ]; then add "--run.dir=$PMDRL_RUN_DIR"; fi
if [ -n "${PMDRL_METRICS_PORT:-}" ]; then add "--run.metrics_host=0.0.0.0"; fi

case "$bin" in
  pmdrl-learner | pmdrl-actor | pmdrl-verifier)
    if [ -n "${PMDRL_TLS_DIR:-}" ]; then
      for f in node.crt node.key ca.crt; do
        if [ ! -r "$PMDRL_TLS_DIR/$f" ]; then
          echo "entrypoint: PMDRL_TLS_DIR is set but $PMDRL_TLS_DIR/$f is missing or not" \
               "readable by uid $(id -u) (compose: the certs service writes it)" >&2
          exit 1
        fi
      done
      add "--run.tls_cert=$PMDRL_TLS_DIR/node.crt"
      add "--run.tls_key=$PMDRL_TLS_DIR/node.key"
      add "--run.tls_ca=$PMDRL_TLS_DIR/ca.crt"
    fi
    ;;
esac

case "$bin" in
  certs)
    dir=${1:?certs needs the output directory}
    shift
    if [ -s "$dir/node.crt" ] && [ -s "$dir/node.key" ] && [ -s "$dir/ca.crt" ]; then
      echo "entrypoint: certificates already in $dir"
      exit 0
    fi
    names=${*:-learner verifier}
    san="DNS:localhost,IP:127.0.0.1,IP:::1"
    for n in $names; do san="$san,DNS:$n"; done
    umask 077
    work=$(mktemp -d)
    printf '%s\n' "[req]" "distinguished_name = dn" "prompt = no" "[dn]" "CN = pmdrl" \
      "[ca]" "basicConstraints = critical, CA:TRUE, pathlen:0" \
      "keyUsage = critical, keyCertSign, cRLSign" "subjectKeyIdentifier = hash" \
      "[node]" "basicConstraints = critical, CA:FALSE" \
      "keyUsage = critical, digitalSignature, keyEncipherment" \
      "extendedKeyUsage = serverAuth, clientAuth" "subjectAltName = $san" \
      "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" >"$work/openssl.cnf"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key"
    openssl req -config "$work/openssl.cnf" -x509 -new -key "$work/ca.key" -sha256 \
      -days 365 -subj "/CN=pmdrl cluster CA" -extensions ca -out "$work/ca.crt"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/node.key"
    openssl req -config "$work/openssl.cnf" -new -key "$work/node.key" -subj "/CN=pmdrl" \
      -out "$work/node.csr"
    openssl x509 -req -in "$work/node.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
      -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -days 365 -sha256 \
      -extfile "$work/openssl.cnf" -extensions node -out "$work/node.crt"
    mkdir -p "$dir"
    # The CA's key goes with $work: no further certificate can be signed by this CA.
    cp "$work/ca.crt" "$work/node.crt" "$work/node.key" "$dir/"
    chmod 0644 "$dir/ca.crt" "$dir/node.crt"
    chmod 0600 "$dir/node.key"
    rm -rf "$work"
    echo "entrypoint: wrote ca.crt, node.crt and node.key to $dir (SANs $san)"
    exit 0
    ;;
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
