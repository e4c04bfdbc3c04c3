#!/usr/bin/env bash
# Revocation propagation across instances: two inkan instances share one
# real redis-server; each of N revocations is made on instance A, and the
# time from the revoking call's return until instance B rejects the token is
# measured by polling. Prints p50/p99 (target: p99 <= 100 ms).
#
#   bench/revocation.sh [REVOCATIONS]      # default 200
#   BENCH_PROFILE=dev bench/revocation.sh  # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null 2>&1 || {
  echo "bench/revocation.sh: redis-server is needed (apt-get install -y redis-server)" >&2
  exit 1
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done

profile=(--release)
[ "${BENCH_PROFILE:-release}" = dev ] && profile=()
cargo run "${profile[@]}" --quiet -p inkan --example revocation_bench -- \
  --redis "redis://127.0.0.1:$port" --revocations "${1:-200}"
