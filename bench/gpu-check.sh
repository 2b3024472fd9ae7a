#!/usr/bin/env bash
# The GPU check for issue 5, for a machine with an NVIDIA GPU (or any
# Vulkan device). Build here, carry the directory, run there:
#
#   bench/gpu-check.sh prepare target/gpu-check   # here: release build + Vulkan loader
#   bench/gpu-check.sh run target/gpu-check       # there: prints the report
#
# `run` prints nvidia-smi's view, then `flotilla-bench gpu-check`: each
# device's capability report, whether dma-buf export/import works,
# composition ms per frame (guest transfer + SUBMIT_3D + RESOURCE_FLUSH,
# I420 ready) at 1280x800 and 1920x1080 for 1 and 8 desktops, the ledger's
# GPU memory per desktop and NVML's figure for the process.
set -euo pipefail

mode=${1:-}
dir=${2:-target/gpu-check}
case "$mode" in
prepare)
    cargo build --release -p flotilla-bench --features nvml
    mkdir -p "$dir"
    cp target/release/flotilla-bench "$dir/"
    # Small enough to carry (the device tool takes 64 MiB in all).
    strip "$dir/flotilla-bench" 2>/dev/null || true
    cp "$0" "$dir/gpu-check.sh"
    # The Vulkan loader, in case the GPU machine has the driver's ICD but
    # no loader installed.
    loader=$(ldconfig -p | awk '/libvulkan.so.1 / && !found {print $NF; found = 1}')
    if [ -n "$loader" ]; then
        cp -L "$loader" "$dir/libvulkan.so.1"
    fi
    echo "prepared $dir: $(ls "$dir" | tr '\n' ' ')"
    ;;
run)
    if ! ldconfig -p | grep -q 'libvulkan.so.1 ' && [ -e "$dir/libvulkan.so.1" ]; then
        export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    echo "# $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || echo "# no nvidia-smi"
    ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null || true
    "$dir/flotilla-bench" gpu-check --iterations "${ITERATIONS:-200}"
    ;;
*)
    echo "usage: $0 prepare|run [DIR]" >&2
    exit 2
    ;;
esac
