#!/bin/sh
# Store benchmark: bytes per grant in Redis, and the time to revoke all 100
# grants of one user in a store of 10,000 and of N grants.
#
#   bench/store.sh                # N = 1,000,000 (takes a few minutes)
#   bench/store.sh --grants 50000 # quick run
#
# Starts its own redis-server on a free port (no persistence) and stops it
# when done. BENCH_PROFILE=dev skips the (long) release build; the memory
# figures do not depend on it.
set -eu
cd "$(dirname "$0")/.."

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no >"$dir/redis.log" &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$dir"' EXIT INT TERM

until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on port $port"

cargo run --quiet --profile "${BENCH_PROFILE:-release}" -p inkan --example store_bench -- --url "redis://127.0.0.1:$port" "$@"
