#!/usr/bin/env bash
# The whole test suite: installs what is missing (redis-server; the e2e
# suite adds chromium, a Python venv with the MCP SDK and the pinned Node
# clients), then fmt, clippy, the Rust tests and the end-to-end suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_apt[@]}"
  else
    echo "scripts/test.sh: missing ${need_apt[*]}; install them (apt-get install -y ${need_apt[*]}) or run as root" >&2
    exit 1
  fi
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== end-to-end: real binaries and real MCP clients on SQLite, Redis and Redis Cluster"
bash tests/e2e/run.sh all
