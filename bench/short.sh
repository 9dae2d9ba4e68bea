#!/usr/bin/env bash
# Short benchmark (make bench): builds roomcast and roomcast-bench, starts a node, then a
# 3-node cluster (embedded etcd + three roomcast node processes) and, when node and
# redis-server are installed, the Socket.IO + Redis adapter server; runs idle (2,000
# connections), fanout (1,000 members, two short steps) and a small many-rooms step
# against each, compares one node with the cluster (same run, same rates and members),
# and on the cluster kills a node under Go SDK clients (recover). Prints the tables.
# Under 5 minutes.
#
# Environment: TARGETS (default: roomcast and cluster, plus socketio when available), OUT (results
# directory, default bench/results), BENCH_ARGS (extra roomcast-bench run flags).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/roomcast" ./cmd/roomcast
go build -o "$bin/roomcast-bench" ./cmd/roomcast-bench

targets=${TARGETS:-}
if [ -z "$targets" ]; then
  targets=roomcast,cluster
  if command -v node >/dev/null && command -v redis-server >/dev/null; then
    if [ -d bench/socketio/node_modules ] || (cd bench/socketio && npm ci --no-audit --no-fund --silent); then
      targets=roomcast,cluster,socketio
    fi
  else
    echo "short.sh: node or redis-server missing: measuring roomcast only (apt-get install redis-server nodejs npm)" >&2
  fi
fi

out=${OUT:-bench/results}
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
# shellcheck disable=SC2086
"$bin/roomcast-bench" run --local --roomcast-bin "$bin/roomcast" --socketio-dir bench/socketio \
  --targets "$targets" --scenarios idle,fanout,rooms,recover \
  --workers 2 --idle-conns 2000 --idle-settle 2s \
  --fanout-members 1000 --fanout-rates 100,500 --p99-limit 1h --step 3s --tail 3s \
  --rooms-conns 2000 --rooms-count 2000 --rooms-size 5 --rooms-rates 5000 --rooms-streams 4 \
  --recover-clients 600 --recover-rooms 120 --recover-rate 500 --recover-duration 5s \
  --recover-kill-after 2s --recover-timeout 10s \
  --server-log "$out/short-$stamp.log" --json "$out/short-$stamp.json" --svg "$out/short-$stamp.svg" \
  ${BENCH_ARGS:-}
echo "results: $out/short-$stamp.json, chart: $out/short-$stamp.svg" >&2
