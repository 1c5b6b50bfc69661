#!/usr/bin/env bash
# Run the example daemon in the foreground (`make run`).
#
# Uses whatever Redis answers on 127.0.0.1:6379; when nothing does, starts a
# throwaway redis-server there (no persistence, files under .demo/) and stops
# it again when the daemon exits.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
venv=${VENV:-.venv}
host=127.0.0.1
port=6379
config=examples/goophry.config.json
mkdir -p .demo

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
    if [ -f .demo/redis.pid ]; then
        kill "$(cat .demo/redis.pid)" 2>/dev/null || true
        rm -f .demo/redis.pid
        echo "run-demo: stopped the throwaway redis-server"
    fi
}

if redis_answers; then
    echo "run-demo: using the Redis already answering on $host:$port"
elif command -v redis-server >/dev/null 2>&1; then
    redis-server --bind "$host" --port "$port" --save "" --appendonly no \
        --daemonize yes --pidfile "$root/.demo/redis.pid" --dir "$root/.demo" \
        --logfile "$root/.demo/redis.log"
    trap stop_demo_redis EXIT
    # Bounded wait for the daemonized server to accept connections.
    for _ in $(seq 50); do
        redis_answers && break
        sleep 0.1
    done
    redis_answers || { echo "run-demo: redis-server did not start, see .demo/redis.log" >&2; exit 1; }
    echo "run-demo: started a throwaway redis-server on $host:$port (files in .demo/, stopped on exit)"
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

# PYTHONPATH makes the checkout's twisted/plugins/ visible to twistd however
# the project was installed; the pid file keeps twistd from writing to the repo root.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
    "$venv/bin/twistd" -n --pidfile .demo/goophry.pid goophry -c "$config" -v
