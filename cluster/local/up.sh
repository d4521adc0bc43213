#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this machine: a head node and N worker nodes, each a
# separate raylet with its own CPUs, all on 127.0.0.1. Token auth stays on; clients need
# RAY_AUTH_MODE=token (the token is in ~/.ray/auth_token). Every PID started is recorded in
# $GANREC_CLUSTER_DIR/pids so that down.sh stops exactly these processes.
#
#   cluster/local/up.sh [N_WORKERS] [CPUS_PER_NODE]
set -euo pipefail
workers=${1:-2}
cpus=${2:-1}
dir=${GANREC_CLUSTER_DIR:-/tmp/ganrec-cluster}
port=${GANREC_RAY_PORT:-6390}
dash=${GANREC_DASHBOARD_PORT:-8265}
here=$(cd "$(dirname "$0")/../.." && pwd)
ray=${RAY:-$(command -v ray || echo "$here/.venv/bin/ray")}
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
mkdir -p "$dir"
: > "$dir/pids"

python=${PYTHON:-$(dirname "$ray")/python}
# Several raylets share this machine: each needs its own agent and metrics ports.
node_ports() {
  "$python" - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
a, g, m, r = (s.getsockname()[1] for s in socks)
print(f"--dashboard-agent-listen-port={a} --dashboard-agent-grpc-port={g} --metrics-export-port={m} --runtime-env-agent-port={r}")
PY
}

ray_pids() { pgrep -f 'ray/core/src/ray/(raylet|gcs)|ray/_private/|ray/autoscaler/_private/monitor|ray/dashboard|ray::|raylet|gcs_server' 2>/dev/null | sort -n || true; }
record_new() { comm -13 <(echo "$1") <(ray_pids) >> "$dir/pids"; sort -un -o "$dir/pids" "$dir/pids"; }

"$ray" get-auth-token --generate >/dev/null 2>&1 || true
before=$(ray_pids)
"$ray" start --head --node-ip-address=127.0.0.1 --port="$port" --dashboard-host=127.0.0.1 \
  --dashboard-port="$dash" --num-cpus="$cpus" --num-gpus=0 --resources='{"head": 1}' \
  --temp-dir="$dir/r" --disable-usage-stats $(node_ports) >"$dir/head.log" 2>&1
record_new "$before"
# Each node gets its own temporary directory, as separate machines would: a job's working_dir is
# unpacked under it, and a node that unpacks the same package replaces the directory first,
# which, shared, pulls it from under a driver already running on another node.
for i in $(seq 1 "$workers"); do
  before=$(ray_pids)
  "$ray" start --address="127.0.0.1:$port" --node-ip-address=127.0.0.1 --num-cpus="$cpus" --num-gpus=0 \
    --resources="{\"worker$i\": 1}" --temp-dir="$dir/w$i" --disable-usage-stats $(node_ports) \
    >"$dir/worker$i.log" 2>&1
  record_new "$before"
done
echo "127.0.0.1:$port" > "$dir/address"
echo "http://127.0.0.1:$dash" > "$dir/dashboard"
echo "Ray cluster up: head + $workers worker node(s), $cpus CPU(s) each"
echo "  cluster address:    127.0.0.1:$port    (RAY_ADDRESS for ganrec --address)"
echo "  dashboard / Jobs:   http://127.0.0.1:$dash"
echo "  clients need:       export RAY_AUTH_MODE=token"
echo "  stop with:          cluster/local/down.sh"
