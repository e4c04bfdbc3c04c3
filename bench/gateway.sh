#!/usr/bin/env bash
# What inkan costs in front of an MCP server, measured against nginx.
#
# Scenarios, all on this machine, all in front of the same static upstream:
#   upstream       (a) nginx `return 200` with a fixed JSON-RPC answer, called directly
#   nginx          (b) nginx reverse proxy (keep-alive upstream pool), no auth
#   inkan-sqlite   (c) inkan, valid bearer token, SQLite store
#   inkan-redis    (d) inkan, valid bearer token, Redis store
#   inkan-nocache  (e) inkan on SQLite with gateway.cache_capacity = 0: every
#                      request takes the miss path (one store round trip)
#
# Every scenario gets the same JSON-RPC POST from wrk (Lua script in the work
# dir) with `Authorization: Bearer`. Scenarios alternate within each round, so
# drift on the machine (other jobs, thermal) spreads over all of them.
#
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION [10s]  CONNECTIONS [64]  THREADS [2]  WARMUP [2s]
#   SCENARIOS ["upstream nginx inkan-sqlite inkan-redis inkan-nocache"]
#   SKIP_BUILD [0]  set to 1 to use the release binaries as they are
# A quick run: ROUNDS=1 DURATION=3s WARMUP=1s bench/gateway.sh
#
# Results: a table on stdout and in target/bench/gateway.txt; raw wrk output
# in target/bench/gateway-raw.txt.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}
SCENARIOS=${SCENARIOS:-upstream nginx inkan-sqlite inkan-redis inkan-nocache}
SKIP_BUILD=${SKIP_BUILD:-0}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release
out=$root/target/bench
mkdir -p "$out"
work=$(mktemp -d /tmp/inkan-bench.XXXXXX)
pids=()

cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

die() {
  echo "!! $*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------
missing=()
for tool in wrk nginx redis-server curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them (apt-get install wrk nginx redis-server curl)"
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx redis-server curl >/dev/null
fi

# inkan and its helpers are built and started only for the scenarios that use them.
wants_inkan=0
for s in $SCENARIOS; do
  case "$s" in
    upstream | nginx) ;;
    inkan-sqlite | inkan-redis | inkan-nocache) wants_inkan=1 ;;
    *) die "unknown scenario $s (known: upstream nginx inkan-sqlite inkan-redis inkan-nocache)" ;;
  esac
done
if [ "$wants_inkan" = 1 ]; then
  if [ "$SKIP_BUILD" != 1 ]; then
    echo "== building inkan, hanko-emulator and the mint_token example (release)"
    (cd "$root" && cargo build --release -p inkan -p hanko-emulator &&
      cargo build --release -p inkan --example mint_token)
  fi
  for exe in "$bin/inkan" "$bin/hanko-emulator" "$bin/examples/mint_token"; do
    [ -x "$exe" ] || die "$exe is missing; build it or unset SKIP_BUILD"
  done
fi

# --- processes ---------------------------------------------------------------
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# start NAME CMD...: runs CMD in the background, output to $work/NAME.log.
start() {
  local name="$1"
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
}

# wait_http URL NAME: until URL answers at all (any status).
wait_http() {
  local i
  for i in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  echo "!! $2 did not come up at $1; its log:" >&2
  tail -n 30 "$work/$2.log" >&2
  exit 1
}

read -r up_port proxy_port redis_port hanko_port sqlite_port redis_inkan_port nocache_port <<<"$(free_ports 7)"

nginx_user=""
[ "$(id -u)" = 0 ] && nginx_user="user root;"
render_nginx() {
  sed -e "s|\${NGINX_USER}|$nginx_user|" -e "s|\${WORK}|$work|g" \
    -e "s|\${UPSTREAM_PORT}|$up_port|g" -e "s|\${PROXY_PORT}|$proxy_port|g" \
    "$root/bench/nginx/$1.conf.template" >"$work/$1.conf"
}
render_nginx upstream
render_nginx proxy
start nginx-upstream nginx -p "$work" -c "$work/upstream.conf" -g "daemon off;"
start nginx-proxy nginx -p "$work" -c "$work/proxy.conf" -g "daemon off;"

# inkan_config NAME PORT STORE_TOML CACHE_CAPACITY
inkan_config() {
  cat >"$work/$1.toml" <<EOF
public_url = "http://127.0.0.1:$2"
listen = "127.0.0.1:$2"

[hanko]
api_url = "http://127.0.0.1:$hanko_port"
audience = "localhost"

[tokens]
access_ttl = "12h"

[store]
$3

[gateway]
cache_capacity = $4

[log]
level = "warn"

[[services]]
id = "bench"
name = "Benchmark upstream"
upstream = "http://127.0.0.1:$up_port/mcp"
scopes = ["bench:use"]
EOF
}
inkan_config inkan-sqlite "$sqlite_port" "backend = \"sqlite\"
path = \"$work/sqlite.db\"" 100000
inkan_config inkan-redis "$redis_inkan_port" "backend = \"redis\"
url = \"redis://127.0.0.1:$redis_port\"" 100000
inkan_config inkan-nocache "$nocache_port" "backend = \"sqlite\"
path = \"$work/nocache.db\"" 0

wait_http "http://127.0.0.1:$up_port/" nginx-upstream
wait_http "http://127.0.0.1:$proxy_port/" nginx-proxy

start_inkan_helpers() {
  start redis redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work"
  start hanko-emulator "$bin/hanko-emulator" --listen "127.0.0.1:$hanko_port" --audience localhost
  wait_http "http://127.0.0.1:$hanko_port/.well-known/jwks.json" hanko-emulator
  local i
  for i in $(seq 1 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "redis-server did not come up on port $redis_port"
}
declare -A url token
url[upstream]="http://127.0.0.1:$up_port/mcp"
url[nginx]="http://127.0.0.1:$proxy_port/mcp"
token[upstream]="not-checked"
token[nginx]="not-checked"
declare -A inkan_port=([inkan-sqlite]=$sqlite_port [inkan-redis]=$redis_inkan_port [inkan-nocache]=$nocache_port)
[ "$wants_inkan" = 1 ] && start_inkan_helpers
for s in $SCENARIOS; do
  [[ $s == inkan-* ]] || continue
  port=${inkan_port[$s]}
  start "$s" "$bin/inkan" serve --config "$work/$s.toml"
  wait_http "http://127.0.0.1:$port/readyz" "$s"
  token[$s]=$("$bin/examples/mint_token" --config "$work/$s.toml" --service bench) ||
    die "mint_token failed for $s"
  url[$s]="http://127.0.0.1:$port/mcp/bench"
done

body='{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'
cat >"$work/request.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH rps=%.1f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

# Every scenario must answer the benchmark request with 200 before it is
# measured, and inkan must refuse it without a token: a benchmark of error
# responses would measure nothing.
for s in $SCENARIOS; do
  status=$(curl -s -o "$work/check.out" -w '%{http_code}' -X POST "${url[$s]}" \
    -H "Authorization: Bearer ${token[$s]}" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' --data "$body")
  [ "$status" = 200 ] || die "$s answered $status to the benchmark request: $(head -c 300 "$work/check.out")"
  if [[ $s == inkan-* ]]; then
    status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "${url[$s]}" \
      -H 'Content-Type: application/json' --data "$body")
    [ "$status" = 401 ] || die "$s answered $status without a token (expected 401)"
  fi
done

# --- measurement -------------------------------------------------------------
raw=$out/gateway-raw.txt
results=$work/results
: >"$raw"
: >"$results"
echo "== warming up ($WARMUP each)"
for s in $SCENARIOS; do
  BENCH_TOKEN=${token[$s]} wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$work/request.lua" "${url[$s]}" >/dev/null
done
for round in $(seq 1 "$ROUNDS"); do
  for s in $SCENARIOS; do
    echo "== round $round/$ROUNDS: $s"
    echo "### round $round $s ${url[$s]}" >>"$raw"
    BENCH_TOKEN=${token[$s]} wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
      -s "$work/request.lua" "${url[$s]}" >"$work/wrk.out"
    cat "$work/wrk.out" >>"$raw"
    line=$(grep '^BENCH ' "$work/wrk.out") || die "wrk printed no summary for $s"
    echo "$s $line" >>"$results"
  done
done

# --- report ------------------------------------------------------------------
report=$out/gateway.txt
{
  echo "inkan gateway benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))," \
    "$(uname -sr)"
  echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS round(s) alternating, POST tools/list;" \
    "everything on this machine, nothing pinned"
  echo
  awk -v scenarios="$SCENARIOS" '
    {
      s = $1
      for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      n[s]++; rps[s] += v["rps"]; p50[s] += v["p50_us"]; p99[s] += v["p99_us"]
      err[s] += v["errors"] + v["non2xx"]
      if (!(s in lo) || v["rps"] < lo[s]) lo[s] = v["rps"]
      if (!(s in hi) || v["rps"] > hi[s]) hi[s] = v["rps"]
    }
    END {
      label["upstream"] = "(a) upstream direct"
      label["nginx"] = "(b) nginx proxy"
      label["inkan-sqlite"] = "(c) inkan, SQLite"
      label["inkan-redis"] = "(d) inkan, Redis"
      label["inkan-nocache"] = "(e) inkan, no cache"
      printf "%-22s %10s %21s %9s %9s %7s\n", "scenario", "req/s", "req/s min..max", "p50 ms", "p99 ms", "errors"
      count = split(scenarios, order, " ")
      for (k = 1; k <= count; k++) {
        s = order[k]
        if (!n[s]) continue
        m_rps[s] = rps[s] / n[s]; m_p50[s] = p50[s] / n[s] / 1000; m_p99[s] = p99[s] / n[s] / 1000
        printf "%-22s %10.0f %10.0f..%-10.0f %9.3f %9.3f %7d\n", label[s], m_rps[s], lo[s], hi[s], m_p50[s], m_p99[s], err[s]
      }
      printf "\n(req/s and latencies are means over the rounds)\n"
      if (!n["nginx"]) exit
      heading = "\nrelative to (b) nginx proxy:\n"
      for (k = 1; k <= count; k++) {
        s = order[k]
        if (s !~ /^inkan-/ || !n[s]) continue
        printf "%s", heading; heading = ""
        printf "  %-22s throughput %5.2f x   p99 %+8.3f ms (%5.2f x)\n", label[s], m_rps[s] / m_rps["nginx"], m_p99[s] - m_p99["nginx"], m_p99[s] / m_p99["nginx"]
      }
    }' "$results"
} | tee "$report"
echo
echo "written to $report (raw wrk output: $raw)"
