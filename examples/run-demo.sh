#!/usr/bin/env bash
# Run the example daemon in the foreground (`make run`).
#
# Uses whatever Redis answers on 127.0.0.1:6379; when nothing does, starts a
# throwaway redis-server there (no persistence, files under .demo/) and stops
# it again once the daemon has exited.  SIGTERM and SIGINT (Ctrl-C) are passed
# on to the daemon, which lets its running scripts finish; the throwaway
# Redis is stopped only after that.
#
# Overridable from the environment: GOOPHRY_DEMO_PORT (6379),
# GOOPHRY_DEMO_CONFIG (examples/goophry.config.json, which must point at that
# port), GOOPHRY_DEMO_DIR (.demo) and VENV (.venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
venv=${VENV:-.venv}
host=127.0.0.1
port=${GOOPHRY_DEMO_PORT:-6379}
config=${GOOPHRY_DEMO_CONFIG:-examples/goophry.config.json}
demo=$(mkdir -p "${GOOPHRY_DEMO_DIR:-.demo}" && cd "${GOOPHRY_DEMO_DIR:-.demo}" && pwd)

redis_answers() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = "PONG" ]
    else
        python3 - "$host" "$port" <<'PY'
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
    fi
}

stop_demo_redis() {
    if [ -f "$demo/redis.pid" ]; then
        local pid
        pid=$(cat "$demo/redis.pid")
        kill "$pid" 2>/dev/null || true
        # Bounded wait for it to be gone: nothing of the demo outlives it.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$demo/redis.pid"
        echo "run-demo: stopped the throwaway redis-server"
    fi
}

if redis_answers; then
    echo "run-demo: using the Redis already answering on $host:$port"
elif command -v redis-server >/dev/null 2>&1; then
    redis-server --bind "$host" --port "$port" --save "" --appendonly no \
        --daemonize yes --pidfile "$demo/redis.pid" --dir "$demo" \
        --logfile "$demo/redis.log"
    trap stop_demo_redis EXIT
    # Bounded wait for the daemonized server to accept connections.
    for _ in $(seq 50); do
        redis_answers && break
        sleep 0.1
    done
    redis_answers || { echo "run-demo: redis-server did not start, see $demo/redis.log" >&2; exit 1; }
    echo "run-demo: started a throwaway redis-server on $host:$port (files in $demo/, stopped on exit)"
else
    echo "redis-server is not installed: sudo apt-get install redis-server" >&2
    exit 1
fi

cat <<EOF

Goophry is starting with $config (Ctrl-C stops it). In another terminal:
  push a task:     redis-cli RPUSH goophry:hello '{"Args":["world"]}'
                   (it appends to \${TMPDIR:-/tmp}/goophry-demo.log)
  a failing task:  redis-cli RPUSH goophry:fail '{"Args":["oops"]}'
                   redis-cli LRANGE goophry:fail:failed 0 -1
  read the stats:  curl http://127.0.0.1:8080/
  the dashboard:   http://127.0.0.1:8080/ui/ (read-only; set DashboardToken to act)

EOF

# The daemon runs in a process group of its own (set -m), so that Ctrl-C at
# the terminal reaches it once, through the trap below, and not twice (a
# second SIGINT would stop its running scripts at once).
set -m
# PYTHONPATH makes the checkout's twisted/plugins/ visible to twistd however
# the project was installed; the pid file keeps twistd from writing to the repo root.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
    "$venv/bin/twistd" -n --pidfile "$demo/goophry.pid" goophry -c "$config" -v &
daemon=$!
set +m
trap 'kill -TERM "$daemon" 2>/dev/null || true' TERM
trap 'kill -INT "$daemon" 2>/dev/null || true' INT
# `wait` returns early when a trapped signal arrives: wait again until the
# daemon is gone, then (EXIT trap) stop the throwaway Redis.
while :; do
    status=0
    wait "$daemon" || status=$?
    kill -0 "$daemon" 2>/dev/null || break
done
echo "run-demo: goophry exited with status $status"
exit "$status"
