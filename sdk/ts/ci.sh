#!/usr/bin/env bash
# CI for the TypeScript SDK, the demo and the browser tests. Called by the repository's
# .ci/run on a fresh machine (root, Go and Node 20+ preinstalled, apt and the npm registry
# reachable). It installs what is missing (Debian's chromium, `npm ci`), builds the Go
# binary, then runs: typecheck, unit tests (with the check that src/gen and the embedded
# demo are not stale), the package against a real node, and the demo in headless
# Chromium. Screenshots, the node's logs and the bundle size go to sdk/ts/artifacts/.
# Every wait in the tests polls a condition with a deadline; nothing sleeps to sync.
set -euo pipefail
cd "$(dirname "$0")"
SDK="$PWD"
ROOT="$(cd ../.. && pwd)"
ART="$SDK/artifacts"
rm -rf "$ART" && mkdir -p "$ART/browser"

step() { printf '\n==> %s\n' "$*"; }

step "chromium"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: apt-get install -y chromium (as root), or set CHROMIUM" >&2
    exit 1
  fi
fi
"$CHROMIUM" --version 2>/dev/null | head -1
export CHROMIUM

step "npm ci"
npm ci --no-audit --no-fund

step "go build ./cmd/roomcast"
(cd "$ROOT" && go build -buildvcs=false -o "$ART/roomcast" ./cmd/roomcast)
export ROOMCAST_BIN="$ART/roomcast"

step "typecheck"
npm run --silent typecheck

step "unit tests (vitest), generated code and embedded demo up to date"
npx vitest run

step "the package against a real node"
ROOMCAST_NODE_LOG="$ART/realnode-node.log" npx vitest run -c vitest.realnode.config.ts

step "the demo in headless Chromium"
ARTIFACTS_DIR="$ART/browser" node --test --test-reporter=spec "$ROOT/e2e/browser/"

step "bundle size"
node scripts/size.mjs | tee "$ART/size.txt"

echo "ok: artifacts in $ART"
