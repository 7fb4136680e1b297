# Sourced by scripts that need a Docker engine (scripts/make-base-image,
# scripts/fresh-check). `dockerd_up` starts dockerd in the background when `docker info`
# fails (as root; Debian's docker.io, installed with apt when dockerd is missing) and waits
# for its socket; `dockerd_down` stops it by its pid, and only if dockerd_up started it.
# DOCKERD_LOG (default /tmp/pmdrl-dockerd.log) gets the daemon's output; DOCKERD_DETACH=1
# starts it in a session of its own, so it outlives the script (scripts/docker-env).

PMDRL_DOCKERD_PID=""

dockerd_up() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "dockerd: no Docker engine answers, and starting one needs root" >&2
    return 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "dockerd: installing docker.io" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io \
      >/dev/null
  fi
  local log=${DOCKERD_LOG:-/tmp/pmdrl-dockerd.log}
  if [ "${DOCKERD_DETACH:-0}" = "1" ]; then
    setsid dockerd >"$log" 2>&1 </dev/null &
  else
    dockerd >"$log" 2>&1 &
  fi
  PMDRL_DOCKERD_PID=$!
  local i
  for i in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
      echo "dockerd: started (pid $PMDRL_DOCKERD_PID, log $log)" >&2
      return 0
    fi
    if ! kill -0 "$PMDRL_DOCKERD_PID" 2>/dev/null; then break; fi
    sleep 1
  done
  echo "dockerd: did not come up; last lines of $log:" >&2
  tail -n 20 "$log" >&2
  dockerd_down
  return 1
}

dockerd_down() {
  if [ -n "$PMDRL_DOCKERD_PID" ]; then
    kill "$PMDRL_DOCKERD_PID" 2>/dev/null || true
    # dockerd stops its containerd and shims itself; give it the time to.
    local i
    for i in $(seq 1 30); do
      kill -0 "$PMDRL_DOCKERD_PID" 2>/dev/null || break
      sleep 1
    done
    PMDRL_DOCKERD_PID=""
  fi
}
