#!/usr/bin/env bash
# Azurite (the Azure Storage emulator) for vhdforge's upload tests.
#
#   scripts/azurite.sh install   npm-install azurite@3.37.0 into .tools/azurite (idempotent)
#   scripts/azurite.sh start [--extentMemoryLimit MB]
#                                start azurite-blob on a free 127.0.0.1 port, in memory;
#                                prints the port; pid and port go to .tools/azurite/run/
#                                (the limit caps its in-memory store; default: half the RAM)
#   scripts/azurite.sh stop      stop the instance started by `start`
#
# The Rust integration tests start their own instance from the same install; they need
# only `install`. Paths are relative to the repository root, wherever this is run from.
set -euo pipefail

VERSION=3.37.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.tools/azurite"
RUN="$DIR/run"
BIN="$DIR/node_modules/.bin/azurite-blob"

installed_version() {
  node -e "console.log(require('$DIR/node_modules/azurite/package.json').version)" 2>/dev/null || true
}

cmd_install() {
  if [[ -x "$BIN" && "$(installed_version)" == "$VERSION" ]]; then
    return 0
  fi
  command -v npm >/dev/null || { echo "azurite.sh: npm is needed (apt-get install nodejs npm)" >&2; exit 2; }
  mkdir -p "$DIR"
  npm install --prefix "$DIR" "azurite@$VERSION" --no-audit --no-fund --loglevel=error >/dev/null
  [[ -x "$BIN" ]] || { echo "azurite.sh: install finished but $BIN is missing" >&2; exit 2; }
}

free_port() {
  # Ask the kernel for a free port (bind to 0), then release it for azurite.
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

cmd_start() {
  [[ -x "$BIN" ]] || { echo "azurite.sh: not installed; run scripts/azurite.sh install" >&2; exit 2; }
  if [[ -f "$RUN/pid" ]] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
    cat "$RUN/port"
    return 0
  fi
  mkdir -p "$RUN"
  local port
  port="$(free_port)"
  local extra=()
  if [[ "${1:-}" == "--extentMemoryLimit" && -n "${2:-}" ]]; then
    extra+=(--extentMemoryLimit "$2")
  elif [[ -n "${1:-}" ]]; then
    echo "azurite.sh: unknown start option $1 (expected --extentMemoryLimit MB)" >&2
    exit 2
  fi
  "$BIN" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence --disableTelemetry --silent \
    "${extra[@]}" >"$RUN/azurite.log" 2>&1 &
  echo $! >"$RUN/pid"
  echo "$port" >"$RUN/port"
  # Wait until it answers HTTP (any status: an unauthenticated request gets 4xx).
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/devstoreaccount1?comp=list" 2>/dev/null; then
      echo "$port"
      return 0
    fi
    if ! kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
      echo "azurite.sh: azurite exited; log:" >&2
      cat "$RUN/azurite.log" >&2
      exit 2
    fi
    sleep 0.1
  done
  echo "azurite.sh: azurite did not answer on port $port within 10 s" >&2
  exit 2
}

cmd_stop() {
  if [[ -f "$RUN/pid" ]]; then
    kill "$(cat "$RUN/pid")" 2>/dev/null || true
    rm -f "$RUN/pid" "$RUN/port"
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
