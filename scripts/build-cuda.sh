#!/usr/bin/env bash
# build-cuda.sh owns the `--features cuda` build check: it builds the fml binary and every test
# binary with the CUDA feature when an nvcc is available, and otherwise says it is skipping and
# succeeds (machines without a CUDA toolkit, CI included, build the CPU version only).
#
# No GPU is needed: nvcc compiles kernels/*.cu to PTX (build.rs) and candle's CUDA kernels, and the
# binaries link against the CUDA libraries (a stub libcuda is enough). To run what it builds on a
# GPU machine, see benches/gpu_pack.sh and benches/gpu_check.sh.
#
# Usage: scripts/build-cuda.sh [--bin-only]
#   --bin-only   build the fml binary only (skip `cargo test --no-run`).
# Environment:
#   FML_CUDA_ENV      a script to source first that puts nvcc on PATH and sets CUDA_HOME and
#                     CUDA_COMPUTE_CAP [/root/cudatk/env.sh, when it exists; see ../shared/cuda/README.md]
#   CARGO_TARGET_DIR  where to build [cargo's default, target/]. The first CUDA build compiles
#                     candle's kernels for 15-18 minutes on 2 cores; keep this folder between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_only=0
for a in "$@"; do
    case "$a" in
        --bin-only) bin_only=1 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build-cuda.sh: unknown option $a (see --help)" >&2; exit 2 ;;
    esac
done

env_script="${FML_CUDA_ENV:-/root/cudatk/env.sh}"
if ! command -v nvcc >/dev/null 2>&1 && [ -f "$env_script" ]; then
    # shellcheck disable=SC1090
    source "$env_script"
fi
if ! command -v nvcc >/dev/null 2>&1; then
    echo "build-cuda.sh: no nvcc on PATH (and no $env_script): skipping the --features cuda build"
    exit 0
fi
echo "build-cuda.sh: $(nvcc --version | tail -n 1); CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90 (build.rs default)}"
echo "build-cuda.sh: target dir ${CARGO_TARGET_DIR:-target}"
cargo build --release --features cuda
if [ "$bin_only" = 0 ]; then
    cargo test --release --features cuda --no-run
fi
echo "build-cuda.sh: the --features cuda build succeeded"
