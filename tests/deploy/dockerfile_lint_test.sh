#!/usr/bin/env bash
# Lints docker/Dockerfile.cpu, .cuda and .prometheus with dockerfilelint (npm),
# installed by npx into a cache under the build folder, and the image entrypoint with
# `sh -n` (and shellcheck when installed). Exit 77 (skipped) only when npm cannot reach
# its registry and dockerfilelint is not cached.
#   dockerfile_lint_test.sh SOURCE_DIR BINARY_DIR
set -uo pipefail
SRC=${1:?usage: dockerfile_lint_test.sh SOURCE_DIR BINARY_DIR}
BIN=${2:?usage: dockerfile_lint_test.sh SOURCE_DIR BINARY_DIR}
cd "$SRC" || exit 1

sh -n docker/entrypoint.sh || { echo "FAIL: docker/entrypoint.sh has a syntax error" >&2; exit 1; }
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck -x docker/entrypoint.sh tests/deploy/*.sh scripts/cluster scripts/docker-env || { echo "FAIL: shellcheck" >&2; exit 1; }
fi

if ! command -v npx >/dev/null 2>&1; then
  echo "FAIL: npx is not installed; run scripts/install-deps (nodejs, npm)" >&2
  exit 1
fi
export npm_config_cache="$BIN/deploy-npm-cache"
export npm_config_update_notifier=false
mkdir -p "$npm_config_cache"
out=$(timeout 300 npx --yes dockerfilelint docker/Dockerfile.cpu docker/Dockerfile.cuda \
  docker/Dockerfile.prometheus 2>&1)
rc=$?
echo "$out"
if [ $rc -ne 0 ] && ! grep -q "^File:" <<<"$out"; then
  # dockerfilelint never ran: tell a registry outage from a real failure.
  if ! timeout 60 npm view dockerfilelint version >/dev/null 2>&1; then
    echo "SKIP: npm cannot reach its registry to install dockerfilelint"
    exit 77
  fi
  echo "FAIL: npx dockerfilelint did not run (rc $rc)" >&2
  exit 1
fi
if [ $rc -ne 0 ]; then
  echo "FAIL: dockerfilelint found issues (rc $rc)" >&2
  exit 1
fi
n=$(grep -c "Issues: None found" <<<"$out")
if [ "$n" -ne 3 ]; then
  echo "FAIL: expected the three Dockerfiles clean, $n were" >&2
  exit 1
fi
echo "dockerfilelint OK"
