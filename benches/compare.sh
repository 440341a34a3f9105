#!/usr/bin/env bash
# One command for the whole featurestore vs Redis vs QUIC-echo comparison (issue 4).
#
#   benches/compare.sh              # full run (about 10-15 minutes), writes docs/benchmarks.md
#   benches/compare.sh --smoke      # a few seconds per target; results in a temp dir, doc not touched
#   benches/compare.sh --help       # every option of `loadgen compare`
#
# From a clean clone it: builds the release binaries (store-node, loadgen), installs Debian's redis-server
# when it is missing and we are root (otherwise says what is missing and exits 1), then runs
# `loadgen compare`, which generates certificates, starts each server on 127.0.0.1 pinned to core 0
# (`taskset`, when there are >= 2 cores), runs the load generator on core 1, and stops every server at the
# end. Extra arguments go to `loadgen compare` (e.g. --profiles 20000 --duration 3 --restart-profiles 0).
#
# Run it on a quiet machine: anything else using the CPU (compilers, tests) shows up in the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "compare.sh: $*" >&2; exit 1; }

smoke=0
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        -h|--help) exec cargo run --release --locked -q -p benches --bin loadgen -- compare --help ;;
    esac
done

command -v cargo >/dev/null || die "cargo is missing: install a Rust toolchain (https://rustup.rs)"

if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "compare.sh: installing Debian's redis-server" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        die "redis-server is missing. Install it as root with: apt-get update && apt-get install -y redis-server"
    fi
fi
command -v redis-server >/dev/null || die "redis-server is still missing after apt-get install"
command -v taskset >/dev/null || echo "compare.sh: taskset missing (util-linux): servers and client will not be pinned" >&2

echo "compare.sh: building release binaries" >&2
cargo build --release --locked -q -p store-node -p benches --bin store-node --bin loadgen

args=(compare --require-redis --command-line "benches/compare.sh $*")
if [ "$smoke" = 0 ]; then
    args+=(--doc docs/benchmarks.md)
fi

# Servers are children of loadgen, which kills them when it ends or gets SIGINT/SIGTERM; forward those.
target/release/loadgen "${args[@]}" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null' INT TERM
wait "$pid"
