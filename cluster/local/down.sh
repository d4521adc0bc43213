#!/usr/bin/env bash
# Stop the cluster that up.sh started: the recorded PIDs and their descendants, then anything
# else that still names the cluster's directory on its command line. The second sweep matters:
# a raylet can fork a worker between the scan of its children and its own death, and that
# orphan is in no record.
set -uo pipefail
dir=${GANREC_CLUSTER_DIR:-/tmp/ganrec-cluster}
[ -f "$dir/pids" ] || { echo "no cluster recorded in $dir"; exit 0; }
descendants() { local p; for p in $(pgrep -P "$1" 2>/dev/null); do echo "$p"; descendants "$p"; done; }
of_this_cluster() { pgrep -f -- "$dir/" 2>/dev/null || true; }
stop() {  # TERM, up to 15 s of grace, then KILL
  local pids="$1" alive=""
  [ -z "$pids" ] && return
  kill -TERM $pids 2>/dev/null
  for _ in $(seq 1 30); do
    alive=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done)
    [ -z "$alive" ] && return
    sleep 0.5
  done
  kill -KILL $alive 2>/dev/null
}
pids=$(for p in $(cat "$dir/pids"); do kill -0 "$p" 2>/dev/null && { echo "$p"; descendants "$p"; }; done | sort -un)
# The GCS last: terminated together with the nodes and the autoscaler's monitor, it and the
# monitor outwait the whole grace period; alone, it exits within a second or two.
gcs=$(for p in $pids; do [ "$(cat /proc/"$p"/comm 2>/dev/null)" = gcs_server ] && echo "$p"; done)
stop "$(echo "$pids" | grep -vxF -- "${gcs:-none}")"
stop "$gcs"
stopped=$(echo $pids | wc -w)
for _ in 1 2 3; do
  strays=$(for p in $(of_this_cluster); do echo "$p"; descendants "$p"; done | sort -un)
  [ -z "$strays" ] && break
  stop "$strays"
  stopped=$((stopped + $(echo $strays | wc -w)))
done
rm -f "$dir/pids" "$dir/address" "$dir/dashboard"
echo "Ray cluster down ($stopped process(es) stopped)"
