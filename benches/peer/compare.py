#!/usr/bin/env python3
"""compare.py owns the side-by-side benchmark of fml and its PyTorch (eager) peer: it runs both on
the same machine in one go, then prints the comparison table and writes it as Markdown.

Standard library only (the peer it calls needs torch). Usage, on the GPU machine:

  python3 benches/peer/compare.py --fml ./fml --work /tmp/cmp --device cuda \\
      --infer-config configs/base.toml --pretrain-config configs/base.toml \\
      --finetune-config configs/finetune.toml --train-batches 256,5

For every row it runs `fml bench ... --json F` and the matching `fml_peer.py bench-... --json F`
(one after the other, fml first), keeps every JSON and log under --work, and writes
--work/benchmarks.md (the table, the exact commands, the date and the machine) to paste into
BENCHMARKS.md. A side that fails or is missing is shown as "-" with the log to read.
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11: model.path is then read with a plain line scan
    tomllib = None

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "fml_peer.py")

# The targets (H100) and the paper's figures (Sec. 7: "under 4 ms", "over 250 Hz";
# 390k iterations of batch 5 in 16 hours = 33.9 images/s of training).
PAPER_MS, PAPER_HZ, PAPER_TRAIN = 4.0, 250.0, 390_000 * 5 / (16 * 3600)
TARGET_HZ, TARGET_BATCHED, TARGET_TRAIN, TARGET_RATIO = 2000.0, 30000.0, 5000.0, 1.5


class Failure(Exception):
    pass


def model_path_of(config):
    """model.path of a config ("demo" when absent, like fml's default)."""
    try:
        with open(config, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise Failure(f"{config}: {e.strerror}")
    if tomllib is not None:
        try:
            return tomllib.loads(raw.decode("utf-8")).get("model", {}).get("path", "demo")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise Failure(f"{config}: not valid TOML: {e}")
    section = None
    for line in raw.decode("utf-8", "replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section == "model" and line.startswith("path") and "=" in line:
            return line.split("=", 1)[1].strip().strip('"')
    return "demo"


class Runner:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
        self.commands = []

    def run(self, name, cmd):
        """Run `cmd`, log its output to work/logs/NAME.log; return True on success."""
        log = os.path.join(self.work, "logs", name + ".log")
        line = " ".join(shlex.quote(c) for c in cmd)
        self.commands.append(line)
        print(f"$ {line}", flush=True)
        with open(log, "w") as f:
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=self.args.timeout).returncode
            except subprocess.TimeoutExpired:
                f.write(f"\n(stopped after {self.args.timeout} s)\n")
                rc = -1
            except OSError as e:
                f.write(f"\ncould not start: {e}\n")
                rc = -1
        if rc != 0:
            print(f"  failed (exit {rc}); see {log}", flush=True)
        return rc == 0

    def json_of(self, name, ok):
        path = os.path.join(self.work, name + ".json")
        if not ok:
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"  no usable {path}: {e}", flush=True)
            return None


def fml_has_bench(fml):
    try:
        r = subprocess.run([fml, "bench", "--help"], capture_output=True, timeout=60)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def machine(python, device):
    """torch version and device name, from the peer's Python."""
    code = ("import torch,platform;d=" + repr(device) + ";print(torch.__version__);"
            "print(torch.cuda.get_device_name(0) if d=='cuda' and torch.cuda.is_available() "
            "else platform.processor() or platform.machine())")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120).stdout.split("\n")
        return out[0].strip(), out[1].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?", "?"


def fmt(v, digits=1):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}" if v >= 1 else f"{v:.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run fml and its PyTorch peer side by side and tabulate.")
    ap.add_argument("--fml", required=True, help="the fml binary")
    ap.add_argument("--work", required=True, help="folder for JSON results, logs and the Markdown table")
    ap.add_argument("--python", default=sys.executable, help="Python with torch for the peer [this one]")
    ap.add_argument("--device", default="cuda", help="cuda or cpu [cuda]")
    ap.add_argument("--infer-config", default="configs/base.toml", help="[configs/base.toml]")
    ap.add_argument("--pretrain-config", default="configs/base.toml", help="[configs/base.toml]")
    ap.add_argument("--finetune-config", default="configs/finetune.toml", help="[configs/finetune.toml]")
    ap.add_argument("--model", help="native face model for the peer, with every array [the configs' model.path "
                                    "re-saved by `fml model import --format native`; \"demo\" written by "
                                    "`fml model demo`]")
    ap.add_argument("--train-batches", default="256,5", help="training batch sizes [256,5: GPU-sized and the paper's]")
    ap.add_argument("--train-steps", type=int, default=50, help="timed training steps per row [50]")
    ap.add_argument("--infer-batches", help="peer inference batch sizes (comma-separated, with 1) [peer default]")
    ap.add_argument("--compile", action="store_true", help="also time the peer under torch.compile (extra rows)")
    ap.add_argument("--tf32", action="store_true", help="let the peer use TF32 (default: full f32, like fml)")
    ap.add_argument("--peer-threads", type=int, help="CPU threads for torch (the peer's --threads)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per command [1800]")
    ap.add_argument("--out", help="Markdown output [WORK/benchmarks.md]")
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.train_batches.split(",") if b.strip()]
    except ValueError:
        print(f"error: --train-batches {args.train_batches!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    if not batches or min(batches) <= 0 or args.train_steps <= 0:
        print("error: --train-batches and --train-steps must be positive", file=sys.stderr)
        return 2
    for c in (args.infer_config, args.pretrain_config, args.finetune_config):
        if not os.path.isfile(c):
            print(f"error: {c}: no such config file", file=sys.stderr)
            return 2

    r = Runner(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    have_bench = fml_has_bench(args.fml)
    if not have_bench:
        print(f"note: {args.fml} has no `bench` command (or does not run): the fml column stays empty", flush=True)

    # The peer reads the same face model file that fml uses.
    models = {}
    for c in {args.infer_config, args.pretrain_config, args.finetune_config}:
        try:
            p = args.model or model_path_of(c)
        except Failure as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if p == "demo":
            demo = os.path.join(r.work, "demo.safetensors")
            if not os.path.exists(demo) and not r.run("model-demo", [args.fml, "model", "demo", "-o", demo]):
                print("error: could not write the demo model with fml (see the log)", file=sys.stderr)
                return 1
            p = demo
        elif not args.model:
            # fml derives missing parts on load (reflectance prior, skin mask); re-saving through
            # fml writes them out, so the peer reads exactly the arrays fml trains with.
            stem = os.path.splitext(os.path.basename(p))[0]
            saved = os.path.join(r.work, f"model-{stem}.safetensors")
            if not os.path.exists(saved) and not r.run(f"model-{stem}", [args.fml, "model", "import", "--format",
                                                                          "native", p, "-o", saved]):
                print(f"error: fml could not re-save {p} (see the log)", file=sys.stderr)
                return 1
            p = saved
        models[c] = p

    common = ["--device", args.device] + (["--tf32"] if args.tf32 else []) + (
        ["--threads", str(args.peer_threads)] if args.peer_threads else [])
    peer = [args.python, PEER]
    rows = []  # (label, unit, fml value, peer value, peer compile value, paper, target, higher_is_better)

    def both(name, fml_cmd, peer_cmd):
        f = r.json_of("fml-" + name, have_bench and r.run("fml-" + name, fml_cmd + ["--json", os.path.join(
            r.work, "fml-" + name + ".json")]))
        p = r.json_of("peer-" + name, r.run("peer-" + name, peer_cmd + ["--json", os.path.join(
            r.work, "peer-" + name + ".json")]))
        c = None
        if args.compile:
            c = r.json_of("peer-compile-" + name, r.run("peer-compile-" + name, peer_cmd + ["--compile", "--json",
                          os.path.join(r.work, "peer-compile-" + name + ".json")]))
        return f, p, c

    ic = args.infer_config
    infer_extra = ["--batches", args.infer_batches] if args.infer_batches else []
    fi, pi, ci = both("infer", [args.fml, "bench", "infer", "--config", ic, "--device", args.device],
                      peer + ["bench-infer", "--config", ic, "--model", models[ic]] + common + infer_extra)
    g = lambda d, k: None if d is None else d.get(k)  # noqa: E731
    rows.append(("Inference latency, batch 1", "ms", g(fi, "latency_ms_b1"), g(pi, "latency_ms_b1"),
                 g(ci, "latency_ms_b1"), f"{PAPER_MS:g} ms", f"<= {1e3 / TARGET_HZ:g} ms", False))
    rows.append(("Inference rate, batch 1", "Hz", g(fi, "hz_b1"), g(pi, "hz_b1"), g(ci, "hz_b1"),
                 f"{PAPER_HZ:g} Hz", f">= {TARGET_HZ:,.0f} Hz", True))
    best = lambda d: "" if d is None else f" (b={d.get('best_batch')})"  # noqa: E731
    rows.append((f"Inference throughput, best batch: fml{best(fi)}, PyTorch{best(pi)}", "img/s",
                 g(fi, "throughput_img_s"), g(pi, "throughput_img_s"), g(ci, "throughput_img_s"), "-",
                 f">= {TARGET_BATCHED:,.0f} img/s", True))
    for stage, cfg in (("pretrain", args.pretrain_config), ("finetune", args.finetune_config)):
        for b in batches:
            name = f"train-{stage}-b{b}"
            ft, pt, ct = both(name, [args.fml, "bench", "train", "--config", cfg, "--stage", stage, "--steps",
                                     str(args.train_steps), "--batch", str(b), "--device", args.device],
                              peer + ["bench-train", "--config", cfg, "--model", models[cfg], "--stage", stage,
                                      "--steps", str(args.train_steps), "--batch", str(b)] + common)
            paper = f"~{PAPER_TRAIN:.0f} img/s (b=5)" if b == 5 else "-"
            target = f">= {TARGET_TRAIN:,.0f} img/s" if b >= 64 else "-"
            rows.append((f"Training {stage}, batch {b}", "img/s", g(ft, "images_per_s"), g(pt, "images_per_s"),
                         g(ct, "images_per_s"), paper, target, True))

    torch_version, device_name = machine(args.python, args.device)
    on_gpu = args.device == "cuda"
    head = ["Row", "fml", "PyTorch eager", "fml/PyTorch (speed)", "paper", "target", "target met"]
    if args.compile:
        head[3:3] = ["PyTorch compile", "fml/compile (speed)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, unit, fv, pv, cv, paper, target, higher in rows:
        def speed(a, b):
            if a is None or b is None or a <= 0 or b <= 0:
                return None
            return a / b if higher else b / a
        sp = speed(fv, pv)
        met = "n/a (not the GPU)"
        if on_gpu:
            if fv is None or sp is None:
                met = "-"
            else:
                absolute = {"Hz": fv >= TARGET_HZ, "ms": fv <= 1e3 / TARGET_HZ}.get(unit)
                if unit == "img/s":
                    absolute = (fv >= TARGET_BATCHED) if label.startswith("Inference") else (
                        fv >= TARGET_TRAIN if target != "-" else True)
                met = "yes" if absolute and sp >= TARGET_RATIO else "no"
        with_unit = lambda v: "-" if v is None else f"{fmt(v, 2)} {unit}"  # noqa: E731
        ratio_target = f">= {TARGET_RATIO:g}x PyTorch"
        cells = [label, with_unit(fv), with_unit(pv), "-" if sp is None else f"{sp:.2f}x", paper,
                 ratio_target if target == "-" else f"{target}, {ratio_target}", met]
        if args.compile:
            sc = speed(fv, cv)
            cells[3:3] = [with_unit(cv), "-" if sc is None else f"{sc:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)

    notes = [
        f"Date: {started.strftime('%Y-%m-%d %H:%M UTC')}. Device: {args.device} ({device_name}); "
        f"PyTorch {torch_version}; precision f32, TF32 {'on' if args.tf32 else 'off'} on the PyTorch side.",
        "fml/PyTorch is a speed ratio: rate / rate for img/s and Hz rows, PyTorch ms / fml ms for the latency row "
        "(above 1 means fml is faster).",
        "Inference: the network forward (encoder, parameter split, face model levels) on a device-resident input, "
        "synchronised; latency = median of single batch-1 runs after warm-up; throughput = best over the batch sweep.",
        "Training: full steps (forward, all loss terms, backward, AdaDelta) on synthetic crops uploaded from host "
        f"memory each step, {args.train_steps} timed steps after warm-up; batch 5 is the paper's.",
    ]
    if not have_bench:
        notes.append(f"The fml column is empty: `{args.fml} bench` does not exist in this build.")
    md = ["### fml vs PyTorch (eager)", "", table, ""] + [f"- {n}" for n in notes] + [
        "", "Commands (in the order they ran):", "", "```"] + r.commands + ["```", ""]
    if pi is not None or fi is not None:
        md += ["Inference per batch size (img/s):", "", "| batch | fml | PyTorch |", "|---|---|---|"]
        fb = {x["batch"]: x["img_s"] for x in (fi or {}).get("per_batch", [])}
        pb = {x["batch"]: x["img_s"] for x in (pi or {}).get("per_batch", [])}
        for b in sorted(set(fb) | set(pb)):
            md.append(f"| {b} | {fmt(fb.get(b))} | {fmt(pb.get(b))} |")
        md.append("")
    text = "\n".join(md)
    out = args.out or os.path.join(r.work, "benchmarks.md")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    print()
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
