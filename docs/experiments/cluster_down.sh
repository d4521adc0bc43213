#!/usr/bin/env bash
# How long cluster/local/down.sh takes to stop a fresh 3-node local cluster, against another
# version of it, alternating in one run:
#   git show 2bdbc61:cluster/local/down.sh > /tmp/down-old.sh
#   docs/experiments/cluster_down.sh /tmp/down-old.sh 2
set -euo pipefail
other=$1
pairs=${2:-2}
here=$(cd "$(dirname "$0")/../.." && pwd)
export GANREC_CLUSTER_DIR=$(mktemp -d /tmp/grc-down-XXXX) RAY_AUTH_MODE=token
export GANREC_RAY_PORT=${GANREC_RAY_PORT:-6391} GANREC_DASHBOARD_PORT=${GANREC_DASHBOARD_PORT:-8266}
echo "down.sh seconds ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
for _ in $(seq 1 "$pairs"); do
  for script in "$other" "$here/cluster/local/down.sh"; do
    "$here/cluster/local/up.sh" 2 >/dev/null
    sleep 3
    start=$(date +%s.%N)
    bash "$script" >/dev/null
    printf '%-40s %.1f\n' "$script" "$(echo "$(date +%s.%N) - $start" | bc)"
    left=$( (pgrep -f -- "$GANREC_CLUSTER_DIR/" || true) | wc -l)
    [ "$left" -eq 0 ] || { echo "left running: $left"; exit 1; }
  done
done
rm -rf "$GANREC_CLUSTER_DIR"
