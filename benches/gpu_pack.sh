#!/usr/bin/env bash
# gpu_pack.sh owns the packing of GPU binaries: it builds fml and its test binaries with
# `--features cuda` on this (GPU-less) machine and packs, stripped and xz-compressed, the fml binary
# and every test binary that holds CUDA tests into gpu-bin/ (git-ignored), with a manifest.
# benches/gpu_check.sh unpacks and runs them on the GPU machine; name gpu-bin in the device
# tool's `carry` (the GPU machine has no Rust and no network).
#
# Usage: benches/gpu_pack.sh [--out DIR] [--tests LIST]
#   --out DIR     where to pack [gpu-bin, in the repository root of the checkout that is sent]
#   --tests LIST  comma-separated test targets to pack: `lib` (the library's unit tests, with
#                 infer::reconstruct's cpu_and_cuda_agree) and integration tests by name [lib,cuda]
# Environment: FML_CUDA_ENV (script that puts nvcc on PATH) [/root/cudatk/env.sh];
#   CARGO_TARGET_DIR [/root/fml-cuda-target: outside the tree so the 15-minute first build of
#   candle's CUDA kernels survives between sessions; see ../shared/cuda/README.md].
#
# Test binaries are chosen by target, not by listing their tests: a CUDA build links libcuda,
# which this machine lacks, so the binaries cannot start here.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

out=gpu-bin
tests=lib,cuda
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --tests) tests=$2; shift 2 ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "gpu_pack.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

env_script="${FML_CUDA_ENV:-/root/cudatk/env.sh}"
if ! command -v nvcc >/dev/null 2>&1 && [ -f "$env_script" ]; then
    # shellcheck disable=SC1090
    source "$env_script"
fi
command -v nvcc >/dev/null 2>&1 || { echo "gpu_pack.sh: no nvcc (set FML_CUDA_ENV or see ../shared/cuda/README.md)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/fml-cuda-target}"
for tool in xz strip python3 sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || { echo "gpu_pack.sh: needs $tool" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "gpu_pack.sh: building with --features cuda in $CARGO_TARGET_DIR"
cargo build --release --features cuda --message-format=json-render-diagnostics >"$tmp/build.json"
cargo test --release --features cuda --no-run --message-format=json-render-diagnostics >"$tmp/test.json"

# (role, target, path) of what to pack, from cargo's artifact messages.
python3 - "$tmp/build.json" "$tmp/test.json" "$tests" >"$tmp/list" <<'EOF'
import json, sys
build, test, wanted = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
def artifacts(path):
    with open(path) as f:
        for line in f:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if m.get("reason") == "compiler-artifact" and m.get("executable"):
                yield m
found = {}
for m in artifacts(build):
    if m["target"]["name"] == "fml" and "bin" in m["target"]["kind"]:
        found["bin:fml"] = ("bin", "fml", m["executable"])
for m in artifacts(test):
    if not m["profile"]["test"]:
        continue
    kind, name = m["target"]["kind"], m["target"]["name"]
    key = "lib" if "lib" in kind else name if "test" in kind else None
    if key in wanted:
        found["test:" + key] = ("test", key, m["executable"])
missing = [w for w in wanted if "test:" + w not in found] + ([] if "bin:fml" in found else ["the fml binary"])
if missing:
    sys.exit("gpu_pack.sh: cargo built no " + ", ".join(missing))
for role, name, path in found.values():
    print(role, name, path, sep="\t")
EOF

rm -rf "$out"
mkdir -p "$out"
{
    echo "# fml GPU binaries, packed by benches/gpu_pack.sh; unpack and run with benches/gpu_check.sh"
    echo "# commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!gpu-bin' 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "# built $(date -u '+%Y-%m-%d %H:%M UTC') with $(nvcc --version | tail -n 1), CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}"
    echo "# role	name	file	sha256 (unpacked)	bytes (unpacked)"
} >"$out/MANIFEST.tsv"
while IFS=$'\t' read -r role name path; do
    file="$role-$name"
    strip --strip-debug -o "$tmp/$file" "$path"
    sum=$(sha256sum "$tmp/$file" | cut -d' ' -f1)
    bytes=$(stat -c %s "$tmp/$file")
    nice -n 10 xz -T2 -6 -c "$tmp/$file" >"$out/$file.xz"
    printf '%s\t%s\t%s\t%s\t%s\n' "$role" "$name" "$file.xz" "$sum" "$bytes" >>"$out/MANIFEST.tsv"
    echo "gpu_pack.sh: $file: $((bytes / 1000000)) MB -> $(($(stat -c %s "$out/$file.xz") / 1000000)) MB xz"
done <"$tmp/list"
total=$(du -sm "$out" | cut -f1)
echo "gpu_pack.sh: wrote $out ($total MB; the device tool carries at most 64 MiB with the tree)"
case "$(realpath "$out")" in
    "$root"/*) git check-ignore -q "$out" || echo "gpu_pack.sh: warning: $out is not git-ignored; the device tool only carries ignored paths" >&2 ;;
esac
