#!/usr/bin/env bash
# Full benchmark runs (about 15 minutes on the 2-core machine): the issue-6 targets,
# one node versus a 3-node cluster in the same run, node kill and recovery, side by side
# with Socket.IO + Redis. Every part writes OUT/<part>-<stamp>.json and .svg and prints
# its table; the load average at start is in each JSON.
#
# Environment: OUT (default bench/results), PARTS (default: idle fanout rooms cluster
# hop recover churn; sio2 on request), SIO (default: socketio when node and redis-server exist, else empty).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/roomcast" ./cmd/roomcast
go build -o "$bin/roomcast-bench" ./cmd/roomcast-bench

out=${OUT:-bench/results}
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
sio=${SIO-}
if [ -z "${SIO+x}" ] && command -v node >/dev/null && command -v redis-server >/dev/null && [ -d bench/socketio/node_modules ]; then
  sio=socketio
fi
with() { if [ -n "$sio" ]; then echo "$1,$sio"; else echo "$1"; fi; }

run() { # run PART ARGS...
  local part=$1
  shift
  echo "== $part (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$bin/roomcast-bench" run --local --roomcast-bin "$bin/roomcast" --socketio-dir bench/socketio \
    --json "$out/$part-$stamp.json" --svg "$out/$part-$stamp.svg" --server-log "$out/$part-$stamp.log" "$@"
}

for part in ${PARTS:-idle fanout rooms cluster hop recover churn}; do
  case $part in
  idle) # ≤ 4 KB per idle authenticated connection at 19,000
    run idle --targets "$(with roomcast)" --scenarios idle --idle-conns 19000 --idle-settle 5s ;;
  fanout) # ≤ 1 µs/delivery; ≥ 1M deliveries/s before p99 > 50 ms; p99 ≤ 5 ms at 100k/s
    run fanout --targets "$(with roomcast)" --scenarios fanout --fanout-members 1000 \
      --fanout-rates 100,200,500,1000,1500 --step 8s --tail 5s --p99-limit 1h ;;
  rooms) # ≥ 50,000 publishes/s to rooms of 5 among 10,000 connections
    run rooms --targets "$(with roomcast)" --scenarios rooms --rooms-conns 10000 --rooms-count 10000 \
      --rooms-size 5 --rooms-rates 10000,25000,50000 --rooms-streams 4 --step 8s --tail 5s \
      --pprof-dir "$out/pprof-$stamp" ;;
  cluster) # 3 nodes ≤ 1 ms above one node's p99, same run, same rates and members
    run cluster --targets roomcast,cluster --scenarios fanout,rooms --fanout-members 1000 \
      --fanout-rates 100,300 --rooms-conns 5000 --rooms-count 5000 --rooms-rates 2000,5000 \
      --rooms-streams 8 --step 8s --tail 5s --p99-limit 1h ;;
  hop) # the mesh hop itself: one node vs 3 nodes at loads that leave the two cores idle
    run hop --targets roomcast,cluster --scenarios fanout --fanout-members 100 \
      --fanout-rates 10,100,1000 --step 8s --tail 5s --p99-limit 1h ;;
  recover) # kill -9 one node of three under Go SDK clients
    run recover --targets cluster --scenarios recover --recover-clients 1500 --recover-rooms 300 \
      --recover-joins 3 --recover-rate 1000 --recover-duration 12s --recover-kill-after 3s --recover-timeout 30s ;;
  churn) # connects/disconnects per second, control-API publish throughput
    run churn --targets "$(with roomcast)" --scenarios churn,publish ;;
  sio2) # Socket.IO on two nodes with the Redis adapter, beside one
    run sio2 --targets socketio,socketio2 --scenarios fanout,rooms --fanout-members 1000 \
      --fanout-rates 100 --rooms-conns 5000 --rooms-count 5000 --rooms-rates 2000 --step 8s --tail 5s --p99-limit 1h ;;
  *) echo "full.sh: unknown part $part" >&2; exit 2 ;;
  esac
done
echo "results in $out (*-$stamp.*)" >&2
