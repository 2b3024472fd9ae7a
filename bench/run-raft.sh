#!/usr/bin/env bash
# Raft write throughput/latency of 3 Flotilla servers vs 3 etcd 3.4 members,
# and leader failover time. Needs Debian's etcd-server (apt-get install -y etcd-server).
# Extra arguments go to `flotilla-bench raft` (e.g. --seconds 5 --failover-runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin flotilla --bin flotilla-bench
FLOTILLA_BIN="$PWD/target/release/flotilla" exec target/release/flotilla-bench raft "$@"
