#!/usr/bin/env bash
# Stop the cluster that up.sh started: exactly the recorded PIDs and their descendants.
set -uo pipefail
dir=${GANREC_CLUSTER_DIR:-/tmp/ganrec-cluster}
[ -f "$dir/pids" ] || { echo "no cluster recorded in $dir"; exit 0; }
descendants() { local p; for p in $(pgrep -P "$1" 2>/dev/null); do echo "$p"; descendants "$p"; done; }
pids=$(for p in $(cat "$dir/pids"); do kill -0 "$p" 2>/dev/null && { echo "$p"; descendants "$p"; }; done | sort -un)
[ -n "$pids" ] && kill -TERM $pids 2>/dev/null
for _ in $(seq 1 30); do
  alive=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done)
  [ -z "$alive" ] && break
  sleep 0.5
done
[ -n "${alive:-}" ] && kill -KILL $alive 2>/dev/null
rm -f "$dir/pids" "$dir/address" "$dir/dashboard"
echo "Ray cluster down ($(echo $pids | wc -w) process(es) stopped)"
