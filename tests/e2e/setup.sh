#!/usr/bin/env bash
# Installs what the end-to-end suite needs; safe to run again (it skips what is
# already there): Debian's chromium and redis, a Python venv with the MCP SDK
# under target/e2e-venv, and the pinned Node packages in tests/e2e/node.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
e2e="$root/tests/e2e"
venv="$root/target/e2e-venv"

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_apt[@]}"
  else
    echo "setup.sh: missing ${need_apt[*]}; run as root or apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi

# The stamp holds the requirements it was built from, so a changed pin reinstalls.
if ! cmp -s "$e2e/requirements.txt" "$venv/.requirements.txt" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$e2e/requirements.txt"
  cp "$e2e/requirements.txt" "$venv/.requirements.txt"
fi

if ! cmp -s "$e2e/node/package-lock.json" "$e2e/node/node_modules/.e2e-lock" 2>/dev/null; then
  (cd "$e2e/node" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$e2e/node/package-lock.json" "$e2e/node/node_modules/.e2e-lock"
fi
