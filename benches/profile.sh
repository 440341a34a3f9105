#!/usr/bin/env bash
# Profiles a featurestore node under load with `perf` and writes where its CPU time goes.
#
#   benches/profile.sh [w1|w2|w4] [closed|open] [RATE]     # default: w1 open 20000
#
# Starts one release store-node (sled, periodic:1000) on 127.0.0.1 pinned to core 0, loads 100,000
# profiles, then runs `loadgen run` on core 1 for 12 s while `perf record -g` samples the node for 10 s.
# Writes benches/results/profile-<workload>-<mode>.txt (perf report, flat and by caller) and leaves
# perf.data in a temp dir it prints. Needs perf (Debian: apt-get install linux-perf). Everything it
# starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

workload=${1:-w1}
mode=${2:-open}
rate=${3:-20000}
profiles=${PROFILES:-100000}

command -v perf >/dev/null || { echo "profile.sh: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release --locked -q -p store-node -p benches --bin store-node --bin loadgen

work=$(mktemp -d /tmp/featurestore-profile.XXXXXX)
node_pid=""
cleanup() {
    if [ -n "$node_pid" ]; then kill -TERM "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

target/release/store-node certs --out "$work/certs" --nodes n1 --clients app >/dev/null
cat >"$work/node.toml" <<EOF
node_id = "n1"
listen = "127.0.0.1:0"
data_dir = "$work/data"
[durability]
mode = "periodic"
interval_ms = 1000
[tls]
ca_cert = "$work/certs/ca.pem"
cert = "$work/certs/node-n1.pem"
key = "$work/certs/node-n1.key"
EOF
pin_server=(); pin_client=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then pin_server=(taskset -c 0); pin_client=(taskset -c 1); fi
FEATURESTORE_LOG=warn "${pin_server[@]}" target/release/store-node serve --config "$work/node.toml" >"$work/node.out" 2>"$work/node.log" &
node_pid=$!
addr=""
for _ in $(seq 1 300); do
    addr=$(sed -n 's/.* ready on //p' "$work/node.out" | head -1)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "profile.sh: node did not start; log: $work/node.log" >&2; exit 1; }

"${pin_client[@]}" target/release/loadgen run --target featurestore --addr "$addr" --certs "$work/certs" \
    --profiles "$profiles" --load --duration 0 --warmup 0 --workload w1 >/dev/null
"${pin_client[@]}" target/release/loadgen run --target featurestore --addr "$addr" --certs "$work/certs" \
    --profiles "$profiles" --workload "$workload" --mode "$mode" --rate "$rate" --duration 12 --warmup 1 \
    --server-pid "$node_pid" --out "$work/run.json" &
load_pid=$!
sleep 2
perf record -F 1999 -g -o "$work/perf.data" -p "$node_pid" -- sleep 10 2>/dev/null
wait "$load_pid"

mkdir -p benches/results
out="benches/results/profile-$workload-$mode.txt"
# `head` closes the pipe before `perf report` has written everything: not an error here.
set +o pipefail
{
    echo "# perf profile of store-node: $workload $mode (rate $rate), $profiles profiles, $(date -u +%FT%TZ)"
    echo "# loadgen result:"
    sed 's/^/# /' "$work/run.json"
    echo
    echo "## flat (self time)"
    perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v '^$' | grep '%' | sed "s/ *$//" | head -60
    echo
    echo "## inclusive (children)"
    perf report -i "$work/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep '%' | sed "s/ *$//" | head -60
} >"$out"
echo "profile.sh: wrote $out (perf.data in $work)"
