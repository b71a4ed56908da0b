#!/usr/bin/env bash
# gpu_check.sh owns the one-call check of fml on a GPU machine: from the repository root, with
# the binaries that benches/gpu_pack.sh packed into gpu-bin/, it
#   1. unpacks them and checks them against the manifest;
#   2. runs the CUDA tests (every test whose name contains "cuda": kernels, layer and network
#      against the CPU; a missing GPU is a failure here, FML_REQUIRE_CUDA=1);
#   3. trains configs/tiny.toml for a few steps on CPU and on CUDA with the same seed and data
#      (a small `fml synth` + `fml prepare` set) and compares the logged losses step by step,
#      and reports how far a TF32 run moves them;
#   4. times `fml bench infer/render/train` on CUDA and runs the PyTorch comparison
#      (benches/peer/compare.py, BENCHMARKS.md);
#   5. prints a summary table last.
# Steps 1-3 take about two minutes on an H100, 4 about five (more with --peer-full). Exit status:
# 0 when the tests and the training comparison pass (benchmarks are measurements, not checks).
#
# Usage (e.g. through the device tool, with carry ["gpu-bin"]):
#   bash benches/gpu_check.sh [options]
#   --bin DIR        packed binaries [gpu-bin]
#   --work DIR       scratch folder [/tmp/fml-gpu-check]
#   --quick          only steps 1-3 (no benchmarks)
#   --no-tests | --no-train | --no-bench | --no-peer   skip that step
#   --steps N        training steps of the comparison [20]
#   --loss-tol X     largest relative difference of a logged loss allowed at any step [0.02]
#   --tf32           also time inference and training with TF32 matmuls
#   --peer-full      the PyTorch comparison as in BENCHMARKS.md (batches 256,5, 50 steps)
#                    instead of the short one (batch 64, 10 steps); best with --no-tests --no-train
#   --peer-selfcheck run the peer's own selfcheck first (about a minute)
# Results: WORK/summary.txt, logs and JSON under WORK; when $OUT is set (the device tool), the
# summary, the comparison table and a tarball of the logs are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."

bin=gpu-bin work=/tmp/fml-gpu-check steps=20 loss_tol=0.02
do_tests=1 do_train=1 do_bench=1 do_peer=1 tf32=0 peer_full=0 peer_selfcheck=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --quick) do_bench=0; do_peer=0; shift ;;
        --no-tests) do_tests=0; shift ;;
        --no-train) do_train=0; shift ;;
        --no-bench) do_bench=0; shift ;;
        --no-peer) do_peer=0; shift ;;
        --steps) steps=$2; shift 2 ;;
        --loss-tol) loss_tol=$2; shift 2 ;;
        --tf32) tf32=1; shift ;;
        --peer-full) peer_full=1; shift ;;
        --peer-selfcheck) peer_selfcheck=1; shift ;;
        -h | --help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

t_start=$(date +%s)
mkdir -p "$work/bin" "$work/logs" "$work/json"
rm -f "$work"/json/*.json "$work"/status.tsv
status="$work/status.tsv" # step <TAB> PASS|FAIL|SKIP|INFO <TAB> detail
note() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$status"; echo "== $1: $2 $3"; }
elapsed() { echo "$(($(date +%s) - t_start)) s"; }

export LD_LIBRARY_PATH="/usr/local/cuda-13.0/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- 1. unpack
manifest="$bin/MANIFEST.tsv"
if [ ! -f "$manifest" ]; then
    echo "gpu_check.sh: no $manifest: run benches/gpu_pack.sh on the build machine and carry $bin" >&2
    exit 2
fi
grep '^# commit\|^# built' "$manifest"
unpacked_ok=1
tests_bins=()
while IFS=$'\t' read -r role name file sum _bytes; do
    case "$role" in '#'* | '') continue ;; esac
    dst="$work/bin/$role-$name"
    if command -v xz >/dev/null 2>&1; then
        xz -dc "$bin/$file" >"$dst"
    else
        python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin/$file" "$dst"
    fi
    chmod +x "$dst"
    if [ "$(sha256sum "$dst" | cut -d' ' -f1)" != "$sum" ]; then
        echo "gpu_check.sh: $file does not match its manifest checksum" >&2
        unpacked_ok=0
    fi
    [ "$role" = test ] && tests_bins+=("$dst")
done <"$manifest"
fml="$work/bin/bin-fml"
if [ "$unpacked_ok" = 0 ] || [ ! -x "$fml" ]; then
    note unpack FAIL "see above"
    exit 1
fi
note unpack PASS "$(grep -c '^test' "$manifest") test binaries + fml ($(elapsed))"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } |
    tee "$work/logs/gpu.txt"

# ---------------------------------------------------------------- 2. CUDA tests
if [ "$do_tests" = 1 ]; then
    for exe in "${tests_bins[@]}"; do
        name=$(basename "$exe")
        log="$work/logs/$name.log"
        echo "== running the cuda tests of $name"
        FML_REQUIRE_CUDA=1 timeout 600 "$exe" cuda --test-threads=1 --nocapture >"$log" 2>&1
        rc=$?
        # The measured errors of every comparison stay in the log.
        grep -E '^test |panicked|  note:' "$log" | sed 's/^/   /'
        passed=$(grep -o '[0-9]* passed' "$log" | tail -n 1 | cut -d' ' -f1)
        failed=$(grep -o '[0-9]* failed' "$log" | tail -n 1 | cut -d' ' -f1)
        if grep -q 'no CUDA device' "$log"; then
            # A test that skipped (and passed) without a GPU: a guard, every test honours FML_REQUIRE_CUDA.
            note "tests $name" FAIL "a test found no CUDA device; $log"
        elif [ "$rc" = 0 ] && [ "${passed:-0}" -gt 0 ]; then
            note "tests $name" PASS "${passed} passed ($(elapsed))"
        else
            note "tests $name" FAIL "exit $rc, ${passed:-0} passed, ${failed:-?} failed; $log"
        fi
    done
else
    note tests SKIP "--no-tests"
fi

# ---------------------------------------------------------------- 3. training CPU vs CUDA
if [ "$do_train" = 1 ]; then
    data="$work/train-data"
    rm -rf "$data" "$work"/train-*
    mkdir -p "$data"
    train_ok=1
    "$fml" synth --count 48 --size 128 --seed 3 -o "$data/synth" --quiet >"$work/logs/synth.log" 2>&1 &&
        "$fml" prepare "$data/synth" --size 64 --val-fraction 0 -o "$data/tiny.fmlds" --quiet >"$work/logs/prepare.log" 2>&1 ||
        train_ok=0
    # The TF32 run is cheap here and the only measurement of what TF32 does to the losses.
    for r in cpu cuda cuda-tf32; do
        [ "$train_ok" = 1 ] || break
        dev=${r%%-*}
        extra=()
        [ "$r" = cuda-tf32 ] && extra=(--tf32)
        echo "== training configs/tiny.toml for $steps steps on $r"
        "$fml" train --config configs/tiny.toml --data "$data/tiny.fmlds" --steps "$steps" --device "$dev" \
            "${extra[@]}" --out "$work/train-$r" --quiet >"$work/logs/train-$r.log" 2>&1 || {
            echo "   failed: $(head -n 3 "$work/logs/train-$r.log")"
            [ "$r" = cuda-tf32 ] || train_ok=0
        }
    done
    if [ "$train_ok" = 1 ]; then
        python3 - "$work" "$steps" "$loss_tol" <<'EOF'
import json, os, sys
work, steps, tol = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def losses(run):
    out = {}
    path = os.path.join(work, "train-" + run, "log.jsonl")
    if not os.path.exists(path):
        return None
    for line in open(path):
        m = json.loads(line)
        if m.get("split") == "train":
            out[m["step"]] = m["loss"]
    return out
cpu, cuda, tf32 = losses("cpu"), losses("cuda"), losses("cuda-tf32")
def rel(a, b, total):
    # Relative to the CPU value, but not below 1e-4 of the total loss: a term that is ~0 (the
    # statistical priors at step 1) is not compared digit by digit.
    return abs(a - b) / max(abs(b), 1e-4 * abs(total), 1e-12)
def diffs(other):
    rows, worst, worst_at = [], 0.0, ""
    for s in sorted(cpu):
        if other is None or s not in other:
            continue
        d = {k: rel(other[s][k], v, cpu[s]["total"]) for k, v in cpu[s].items() if k in other[s]}
        k = max(d, key=d.get)
        rows.append((s, cpu[s]["total"], other[s]["total"], d["total"], d[k], k))
        if d[k] > worst:
            worst, worst_at = d[k], f"{k} at step {s}"
    return rows, worst, worst_at
rows, worst, at = diffs(cuda)
trows, tworst, tat = diffs(tf32)
print(f"   {'step':>4} {'cpu total':>11} {'cuda total':>11} {'rel':>9} {'max term rel':>13} {'tf32 rel':>9}")
tf = {r[0]: r for r in trows}
for s, a, b, d, dm, k in rows:
    t = f"{tf[s][3]:9.2e}" if s in tf else "        -"
    print(f"   {s:4d} {a:11.6f} {b:11.6f} {d:9.2e} {dm:9.2e} ({k}) {t}")
ok = len(rows) == steps and worst <= tol and (rows[0][4] <= 1e-3 if rows else False)
line = (f"{len(rows)}/{steps} steps; max relative difference {worst:.2e} ({at}); step 1 {rows[0][4]:.1e}"
        if rows else f"no common steps ({0 if cpu is None else len(cpu)} cpu, {0 if cuda is None else len(cuda)} cuda)")
with open(os.path.join(work, "status.tsv"), "a") as f:
    f.write(f"training CPU vs CUDA\t{'PASS' if ok else 'FAIL'}\t{line} (tolerance {tol:g}, step 1: 1e-3)\n")
    if trows:
        f.write(f"training CPU vs CUDA+TF32\tINFO\tmax relative difference {tworst:.2e} ({tat}): what TF32 costs here\n")
print(f"== training CPU vs CUDA: {'PASS' if ok else 'FAIL'} {line}")
EOF
    else
        note "training CPU vs CUDA" FAIL "a run failed; see $work/logs/"
    fi
    echo "   ($(elapsed))"
else
    note "training CPU vs CUDA" SKIP "--no-train"
fi

# ---------------------------------------------------------------- 4. benchmarks
run_bench() { # name, fml bench arguments...
    local name=$1
    shift
    echo "== fml bench $*"
    if timeout 600 "$fml" bench "$@" --device cuda --json "$work/json/$name.json" >"$work/logs/bench-$name.log" 2>&1; then
        grep -v '^wrote' "$work/logs/bench-$name.log" | sed 's/^/   /'
    else
        echo "   failed: $(grep -m 3 -i 'error' "$work/logs/bench-$name.log")"
        note "bench $name" FAIL "$work/logs/bench-$name.log"
    fi
}
if [ "$do_bench" = 1 ]; then
    run_bench render render
    if [ "$do_peer" = 1 ]; then
        if [ "$peer_selfcheck" = 1 ]; then
            echo "== peer selfcheck"
            if python3 benches/peer/fml_peer.py selfcheck >"$work/logs/peer-selfcheck.log" 2>&1; then
                note "peer selfcheck" PASS ""
            else
                note "peer selfcheck" FAIL "$work/logs/peer-selfcheck.log"
            fi
        fi
        if [ "$peer_full" = 1 ]; then pb=256,5 ps=50; else pb=64 ps=10; fi
        if [ "$peer_full" = 0 ] && [ $(($(date +%s) - t_start)) -gt 330 ]; then
            # Keep the whole call inside the device tool's 10 minutes per command.
            note "PyTorch comparison" SKIP "$(elapsed) already spent; run again with --no-tests --no-train"
        else
            echo "== PyTorch comparison (train batches $pb, $ps steps; $(elapsed) so far)"
            rm -rf "$work/peer"
            # compare.py runs fml's infer and train benchmarks itself, each beside the peer's;
            # its JSON and benchmarks.md land in WORK/peer.
            python3 benches/peer/compare.py --fml "$fml" --work "$work/peer" --device cuda \
                --infer-config configs/base.toml --pretrain-config configs/base.toml \
                --finetune-config configs/finetune.toml --train-batches "$pb" --train-steps "$ps" \
                --timeout 300 >"$work/logs/compare.log" 2>&1 || note "PyTorch comparison" FAIL "$work/logs/compare.log"
            sed -n '/^### fml vs PyTorch/,/^Commands/p' "$work/logs/compare.log" | sed 's/^/   /'
            n_fml=$(ls "$work"/peer/fml-*.json 2>/dev/null | wc -l)
            n_peer=$(ls "$work"/peer/peer-*.json 2>/dev/null | wc -l)
            note "PyTorch comparison" INFO "$n_fml fml and $n_peer PyTorch rows measured; table in $work/peer/benchmarks.md, logs in $work/peer/logs"
        fi
    else
        run_bench infer infer --config configs/base.toml
        run_bench train-pretrain-b64 train --config configs/base.toml --stage pretrain --batch 64 --steps 10
        run_bench train-finetune-b64 train --config configs/finetune.toml --stage finetune --batch 64 --steps 10
    fi
    if [ "$tf32" = 1 ]; then
        run_bench infer-tf32 infer --config configs/base.toml --tf32
        run_bench train-pretrain-b64-tf32 train --config configs/base.toml --stage pretrain --batch 64 --steps 10 --tf32
    fi
    echo "   ($(elapsed))"
else
    note benchmarks SKIP "--no-bench / --quick"
fi

# ---------------------------------------------------------------- 5. summary
python3 - "$work" "$(elapsed)" <<'EOF' | tee "$work/summary.txt"
import glob, json, os, sys
work, took = sys.argv[1], sys.argv[2]
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
gpu = open(os.path.join(work, "logs", "gpu.txt")).read().strip() if os.path.exists(os.path.join(work, "logs", "gpu.txt")) else "?"
print()
print(f"fml GPU check: {gpu}; {took}")
print()
print(f"| {'check':<28} | {'result':<6} | detail")
print(f"|{'-' * 30}|{'-' * 8}|{'-' * 60}")
failed = False
for line in open(os.path.join(work, "status.tsv")):
    step, res, detail = (line.rstrip("\n").split("\t") + ["", ""])[:3]
    failed |= res == "FAIL"
    print(f"| {step:<28} | {res:<6} | {detail}")
rows = []
fmt = lambda v, d=1: "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.{d}f}")
def infer_rows(label, j):
    if j:
        rows.append((f"infer latency b1 ({label})", f"{fmt(j.get('latency_ms_b1'), 3)} ms", f"{fmt(j.get('hz_b1'))} Hz"))
        rows.append((f"infer throughput ({label})", f"{fmt(j.get('throughput_img_s'))} img/s", f"best batch {j.get('best_batch')}"))
def train_rows(label, j):
    if j:
        rows.append((f"train {j.get('stage')} b{j.get('batch')} ({label})", f"{fmt(j.get('images_per_s'))} img/s", f"{fmt(j.get('ms_per_step'), 2)} ms/step"))
r = load(os.path.join(work, "json", "render.json"))
if r:
    rows.append((f"render b{r['batch']} x {r['vertices']} vertices", f"fwd {r['fwd_ms']:.3f} ms", f"fwd+bwd {r['fwd_bwd_ms']:.3f} ms, {r['gb_s']:.1f} GB/s (traffic floor / time)"))
peer = os.path.join(work, "peer")
infer_rows("fml", load(os.path.join(peer, "fml-infer.json")) or load(os.path.join(work, "json", "infer.json")))
infer_rows("PyTorch", load(os.path.join(peer, "peer-infer.json")))
infer_rows("fml TF32", load(os.path.join(work, "json", "infer-tf32.json")))
for path in sorted(glob.glob(os.path.join(peer, "fml-train-*.json")) + glob.glob(os.path.join(work, "json", "train-*.json"))):
    train_rows("fml TF32" if path.endswith("-tf32.json") else "fml", load(path))
    p = load(path.replace("fml-train", "peer-train")) if "fml-train" in path else None
    train_rows("PyTorch", p)
if rows:
    print()
    print(f"| {'measurement':<36} | {'value':<16} | detail")
    print(f"|{'-' * 38}|{'-' * 18}|{'-' * 40}")
    for a, b, c in rows:
        print(f"| {a:<36} | {b:<16} | {c}")
md = os.path.join(peer, "benchmarks.md")
if os.path.exists(md):
    print(f"\nThe comparison table for BENCHMARKS.md: {md}")
print("\nOVERALL: " + ("FAIL" if failed else "PASS"))
EOF
overall=$(tail -n 1 "$work/summary.txt")

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$work/summary.txt" "$OUT/"
    [ -f "$work/peer/benchmarks.md" ] && cp "$work/peer/benchmarks.md" "$OUT/"
    tar czf "$OUT/gpu_check_logs.tgz" -C "$work" logs json status.tsv $(cd "$work" && ls -d peer/*.json peer/logs train-*/log.jsonl 2>/dev/null) 2>/dev/null
fi
[ "$overall" = "OVERALL: PASS" ]
