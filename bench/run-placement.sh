#!/usr/bin/env bash
# Placements per second end to end: 100,000 desktops onto 5,000 simulated nodes
# through a real 3-server cluster, with p50/p99 from request to committed placement.
# Extra arguments go to `flotilla-bench placement` (e.g. --desktops 20000 --nodes 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin flotilla --bin flotilla-bench
FLOTILLA_BIN="$PWD/target/release/flotilla" exec target/release/flotilla-bench placement "$@"
