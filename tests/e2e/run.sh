#!/usr/bin/env bash
# End-to-end suite: the real inkan binary, the Hanko emulator, the demo MCP
# upstream and (per backend) real Redis processes, all on free loopback ports,
# exercised by real MCP clients: the Python SDK, the TypeScript SDK, the MCP
# Inspector CLI, and Chromium through playwright-core.
#
#   tests/e2e/run.sh [sqlite|redis|cluster|all]     (default: all)
#
# Logs go to target/e2e-logs/<backend>/, screenshots to target/e2e-screenshots/.
# E2E_CLIENTS="python sdk" runs a subset of the clients (python sdk inspector browser).
# Exits non-zero on any failure; the last line is "N passed, N failed".
set -uo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
e2e="$root/tests/e2e"
mode="${1:-all}"
case "$mode" in
  sqlite | redis | cluster) backends=("$mode") ;;
  all) backends=(sqlite redis cluster) ;;
  *)
    echo "usage: $0 [sqlite|redis|cluster|all]" >&2
    exit 2
    ;;
esac

# Long enough for a token exchange and a tool call, short enough that every
# client sees its access token expire and refreshes during the run.
ACCESS_TTL=5
CLIENTS=(${E2E_CLIENTS:-python sdk inspector browser})

bash "$e2e/setup.sh" || exit 1
target="${CARGO_TARGET_DIR:-$root/target}"
echo "== building inkan, hanko-emulator, demo-upstream"
# The same targets as `cargo test --workspace`, so features unify the same way
# and scripts/test.sh reuses every compiled dependency.
(cd "$root" && cargo build --locked --workspace --all-targets) || exit 1
bin="$target/debug"

logs="$root/target/e2e-logs"
shots="$root/target/e2e-screenshots"
rm -rf "$logs" "$shots"
mkdir -p "$logs" "$shots"
work="$(mktemp -d "${TMPDIR:-/tmp}/inkan-e2e.XXXXXX")"

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null
  done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# N free loopback ports whose port+10000 is free too (Redis Cluster's bus port).
free_ports() {
  python3 - "$1" <<'EOF'
import random, socket, sys
n, got, held = int(sys.argv[1]), [], []
while len(got) < n:
    p = random.randint(20000, 50000)
    try:
        socks = [socket.socket() for _ in (0, 1)]
        socks[0].bind(("127.0.0.1", p))
        socks[1].bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    held += socks
    got.append(p)
for s in held:
    s.close()
print(" ".join(map(str, got)))
EOF
}

# start NAME CMD...: runs CMD in the background with its output in NAME.log.
start() {
  local name="$1"
  shift
  "$@" >"$blogs/$name.log" 2>&1 &
  pids+=($!)
}

# wait_http URL WHAT: until URL answers 2xx, or the last started process exits.
wait_http() {
  local url="$1" what="$2" pid="${pids[-1]}"
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "!! $what exited before answering $url" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "!! $what did not answer $url within 30s" >&2
  return 1
}

wait_redis_cluster() {
  local port
  for _ in $(seq 1 100); do
    local ok=1
    for port in "$@"; do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.2
  done
  echo "!! redis cluster did not reach cluster_state:ok" >&2
  return 1
}

show_logs() {
  local f
  for f in "$blogs"/*.log; do
    echo "---- $(basename "$f") (last 40 lines)"
    tail -n 40 "$f"
  done
}

# start_system BACKEND: everything inkan needs, then inkan; sets $inkan, $hanko.
start_system() {
  local backend="$1" store
  read -r ip hp up r1 r2 r3 <<<"$(free_ports 6)"
  inkan="http://127.0.0.1:$ip"
  hanko="http://127.0.0.1:$hp"

  case "$backend" in
    sqlite)
      store="backend = \"sqlite\"
path = \"$bwork/inkan.db\""
      ;;
    redis)
      start redis redis-server --bind 127.0.0.1 --port "$r1" --save '' --appendonly no --dir "$bwork"
      store="backend = \"redis\"
url = \"redis://127.0.0.1:$r1\""
      ;;
    cluster)
      local p
      for p in "$r1" "$r2" "$r3"; do
        mkdir -p "$bwork/redis-$p"
        start "redis-$p" redis-server --bind 127.0.0.1 --port "$p" --save '' --appendonly no \
          --cluster-enabled yes --cluster-config-file "$bwork/redis-$p/nodes.conf" \
          --cluster-node-timeout 5000 --dir "$bwork/redis-$p"
      done
      for p in "$r1" "$r2" "$r3"; do
        for _ in $(seq 1 50); do
          redis-cli -p "$p" ping >/dev/null 2>&1 && break
          sleep 0.1
        done
      done
      redis-cli --cluster create "127.0.0.1:$r1" "127.0.0.1:$r2" "127.0.0.1:$r3" \
        --cluster-replicas 0 --cluster-yes >"$blogs/redis-cluster-create.log" 2>&1 || return 1
      wait_redis_cluster "$r1" "$r2" "$r3" || return 1
      store="backend = \"redis\"
nodes = [\"redis://127.0.0.1:$r1\", \"redis://127.0.0.1:$r2\", \"redis://127.0.0.1:$r3\"]"
      ;;
  esac

  start demo-upstream "$bin/demo-upstream" --listen "127.0.0.1:$up" \
    --jwks-url "$inkan/.well-known/jwks.json" --audience "$inkan/mcp/demo"
  start hanko-emulator "$bin/hanko-emulator" --listen "127.0.0.1:$hp" --key-bits 2048 \
    --audience localhost --webhook "$inkan/hanko/webhook"

  cat >"$bwork/inkan.toml" <<EOF
public_url = "$inkan"
listen = "127.0.0.1:$ip"

[hanko]
api_url = "$hanko"
audience = "localhost"
admin_api_url = "$hanko/admin"
dev_sign_in_url = "$hanko/dev/sign-in"
# Never the public CDN: the suite talks to loopback only. The dev sign-in form
# works without Hanko Elements, so a 404 here is fine.
elements_url = "$hanko/e2e-no-elements.js"

[tokens]
access_ttl = "${ACCESS_TTL}s"

[store]
$store

[log]
level = "info,inkan=debug"

[[services]]
id = "demo"
name = "Demo MCP server"
upstream = "http://127.0.0.1:$up/mcp"
scopes = ["demo:use"]
EOF
  cp "$bwork/inkan.toml" "$blogs/inkan.toml"

  wait_http "$hanko/.well-known/jwks.json" hanko-emulator || return 1
  start inkan "$bin/inkan" serve --config "$bwork/inkan.toml"
  wait_http "$inkan/readyz" inkan || return 1
}

passed=0
failed=0
record() {
  local ok="$1" name="$2" secs="$3"
  if [ "$ok" = 0 ]; then
    passed=$((passed + 1))
    echo "ok   $name (${secs}s)"
  else
    failed=$((failed + 1))
    echo "FAIL $name (${secs}s)"
  fi
}

run_client() {
  local backend="$1" client="$2" rc started
  local common=(--inkan "$inkan" --hanko "$hanko" --service demo --access-ttl "$ACCESS_TTL")
  started=$SECONDS
  case "$client" in
    python) timeout 180 "$root/target/e2e-venv/bin/python" "$e2e/python_client.py" "${common[@]}" ;;
    sdk) timeout 180 node "$e2e/node/sdk_client.mjs" "${common[@]}" ;;
    inspector) timeout 240 node "$e2e/node/inspector.mjs" "${common[@]}" ;;
    browser) timeout 180 node "$e2e/node/browser.mjs" "${common[@]}" --screenshots "$shots/$backend" ;;
  esac >"$blogs/client-$client.log" 2>&1
  rc=$?
  record "$rc" "$backend/$client" $((SECONDS - started))
  if [ "$rc" != 0 ]; then
    echo "---- client-$client.log"
    cat "$blogs/client-$client.log"
  fi
  return "$rc"
}

for backend in "${backends[@]}"; do
  echo "== backend: $backend"
  blogs="$logs/$backend"
  bwork="$work/$backend"
  mkdir -p "$blogs" "$bwork"
  if ! start_system "$backend"; then
    record 1 "$backend/startup" 0
    show_logs
    stop_all
    continue
  fi
  any_failed=0
  for client in "${CLIENTS[@]}"; do
    run_client "$backend" "$client" || any_failed=1
  done
  [ "$any_failed" = 1 ] && show_logs
  stop_all
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
