#!/usr/bin/env bash
# docker-compose validates deploy/docker-compose.yml (no Docker engine needed): syntax,
# anchors and merges, variable substitution with deploy/.env.example, the default
# services and the gpu profile.
#   compose_config_test.sh SOURCE_DIR
set -euo pipefail
SRC=${1:?usage: compose_config_test.sh SOURCE_DIR}
cd "$SRC/deploy"

if ! command -v docker-compose >/dev/null 2>&1; then
  echo "FAIL: docker-compose is not installed; run scripts/install-deps (Debian's docker-compose 1.29)" >&2
  exit 1
fi
dc=(docker-compose --env-file .env.example -f docker-compose.yml)

echo "== ${dc[*]} config"
"${dc[@]}" config -q

echo "== services"
services=$("${dc[@]}" config --services | sort | tr '\n' ' ')
echo "$services"
for s in learner actor verifier prometheus grafana; do
  case " $services " in
    *" $s "*) ;;
    *) echo "FAIL: service $s missing from docker-compose.yml" >&2; exit 1 ;;
  esac
done

echo "== profile gpu"
"${dc[@]}" --profile gpu config -q
gpu=$("${dc[@]}" --profile gpu config --services | sort | tr '\n' ' ')
echo "$gpu"
for s in learner-gpu actor-gpu; do
  case " $gpu " in
    *" $s "*) ;;
    *) echo "FAIL: service $s missing from profile gpu" >&2; exit 1 ;;
  esac
done

# A broken file must fail: the check above is not vacuous.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed 's/^services:/servicez:/' docker-compose.yml > "$tmp/docker-compose.yml"
if docker-compose -f "$tmp/docker-compose.yml" config -q >/dev/null 2>&1; then
  echo "FAIL: docker-compose accepted a broken file" >&2
  exit 1
fi
echo "compose config OK"
