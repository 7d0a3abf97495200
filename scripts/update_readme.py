#!/usr/bin/env python3
"""Rewrites the generated sections (between <!-- X:begin --> and <!-- X:end -->) of the README
(the headline tables), docs/RESULTS.md (every table) and docs/CLI.md (every command's --help) from
the JSON files under results/ and the CLI's own --help. Never typed by hand."""
import json, os, re, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = os.path.join(ROOT, "results")


def load(name):
    p = os.path.join(RES, name)
    return json.load(open(p)) if os.path.exists(p) else None


def measured_at(rel):
    """Which code the results at results/<rel> measured: the commit and date results.sh wrote
    into results/provenance.json, else (results from before it did) the commit that last
    changed them."""
    e = (load("provenance.json") or {}).get("results/" + rel)
    if e:
        return "Measured at commit `%s` on %s." % (e["commit"], e["date"])
    try:
        log = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h %ad", "--date=short", "--",
                              os.path.join("results", rel)], capture_output=True, text=True).stdout.split()
    except OSError:
        return ""
    return "Results committed in `%s` on %s." % tuple(log) if len(log) == 2 else ""


def with_provenance(out, rel):
    line = measured_at(rel)
    return "\n".join(out + (["", line] if line else []))


def mib(b):
    return "%.0f MiB" % (b / 2**20)


def section(text, name, body, where="README"):
    pat = re.compile(r"(<!-- %s:begin -->\n).*?(<!-- %s:end -->)" % (name, name), re.S)
    if not pat.search(text):
        sys.exit("%s lacks the %s markers" % (where, name))
    return pat.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def gemm_table():
    g, c = load("gemm.json"), load("convert.json")
    if not g:
        return "(run `bash scripts/results.sh gemm`)"
    out = ["GEMM, C = A·B with n×n operands (`mixtrain bench gemm --json`; fp32 accumulation; fp16 is",
           "computed in fp32 on CPUs without fp16 arithmetic):", "",
           "| dtype | n | mixtrain GFLOP/s | oneDNN direct GFLOP/s | ratio |", "| --- | --- | --- | --- | --- |"]
    for r in g["gemm"]:
        od = r.get("onednn_gflops")
        ratio = "%.2f" % (r["gflops"] / od) if od and od > 0 else "n/a"
        out.append("| %s | %d | %.0f | %s | %s |" % (r["dtype"], r["n"], r["gflops"],
                   "%.0f" % od if od and od > 0 else "n/a", ratio))
    for label, c in (("2 threads", c), ("1 thread", load("convert_1thread.json"))):
        if not c:
            continue
        out += ["", "Bulk conversion of 64 MiB arrays, %s (`%smixtrain bench convert --json`; memcpy is "
                "one thread in both runs):" % (label, "OMP_NUM_THREADS=1 " if label == "1 thread" else ""), "",
                "| conversion | GB/s | memcpy GB/s | fraction of memcpy |", "| --- | --- | --- | --- |"]
        mem = c.get("memcpy")
        mem_gbps = mem.get("gbps") if isinstance(mem, dict) else mem
        for r in c.get("convert", []):
            out.append("| %s → %s | %.1f | %s | %.2f |" % (r["from"], r["to"], r["gbps"],
                       "%.1f" % mem_gbps if isinstance(mem_gbps, (int, float)) else "?", r["ratio_to_memcpy"]))
    return with_provenance(out, "gemm.json")


def compare_table(name, title, cmd):
    d = load(os.path.join(name, "compare.json"))
    if not d:
        return "(run `bash scripts/results.sh`)"
    runs = d["runs"]
    ref = runs[0]
    cls = "test_accuracy" in ref
    out = [title, "", "```sh", cmd, "```", ""]
    if cls:
        out += ["| precision | test accuracy | Δ vs fp32 (points) | val loss | samples/s | speed-up | peak tensor memory | peak RSS | skipped steps |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in runs:
            out.append("| %s | %.2f%% | %+.2f | %.4f | %.0f | %.2f× | %s | %s | %d |" % (
                r["label"], 100 * r["test_accuracy"], 100 * (r["test_accuracy"] - ref["test_accuracy"]),
                r["val_loss"], r["throughput"], r["throughput"] / ref["throughput"],
                mib(r["peak_tensor_bytes"]), mib(r["peak_rss_bytes"]), r["skipped_steps"]))
    else:
        out += ["| precision | val loss | Δ vs fp32 | final train loss | tokens/s | speed-up | peak tensor memory | peak RSS | skipped steps |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in runs:
            out.append("| %s | %.4f | %+.2f%% | %.4f | %.0f | %.2f× | %s | %s | %d |" % (
                r["label"], r["val_loss"], 100 * (r["val_loss"] - ref["val_loss"]) / ref["val_loss"],
                r["final_train_loss"], r["throughput"], r["throughput"] / ref["throughput"],
                mib(r["peak_tensor_bytes"]), mib(r["peak_rss_bytes"]), r["skipped_steps"]))
    return with_provenance(out, name)


def machine_str(m):
    if not m:
        return None
    return "%s, SIMD level %s, oneDNN %s ISA %s, %s threads" % (
        m.get("cpu", "?"), m.get("simd_level", "?"), m.get("gemm", {}).get("version", "?"),
        m.get("gemm", {}).get("isa", "?"), m.get("threads", "?"))


def step_table(name="step.json"):
    d = load(name)
    if not d:
        return ""
    cmd = "scripts/bench_compare.sh build results/%s" % name
    peer_gpt = any(k.startswith("torch/gpt") for k in d["configurations"])
    out = []
    m = machine_str(d.get("machine"))
    if m:
        out += ["Measured on: %s." % m, ""]
    out += ["`bash %s`%s (mixtrain `bench step` and `bench/peer_torch.py`, PyTorch 1.13 autocast bf16 + "
            "AdamW, 2 threads, alternating):" % (cmd, "" if peer_gpt else " with `PEER_GPT=0`"), "",
            "| configuration | ms/step | throughput | MFU | peak RSS |", "| --- | --- | --- | --- | --- |"]
    for k, c in d["configurations"].items():
        impl = "mixtrain" if k.startswith("mix/") else "PyTorch"
        mfu = "%.2f" % c["mfu"] if c.get("mfu") is not None else "-"
        out.append("| %s %s %s batch %s | %.1f | %.0f %s | %s | %s |" % (
            impl, c["model"], c["precision"], c["batch"], c["ms_per_step"], c["throughput"],
            c["throughput_unit"], mfu, mib(c["peak_rss_bytes"])))
    out += ["", "| ratio | value | target | met |", "| --- | --- | --- | --- |"]
    for r in d["ratios"]:
        v = "-" if r["value"] is None else "%.3f" % r["value"]
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        target = "-" if r["op"] is None else "%s %s" % (r["op"], r["target"])
        out.append("| %s | %s | %s | %s |" % (r["ratio"], v, target, met))
    return with_provenance(out, name)


def ckpt_table(name="checkpointing.json"):
    d = load(name)
    if not d:
        return ""
    out = []
    if isinstance(d, dict):  # {"machine", "runs"}; the first files were the runs alone
        m = machine_str(d.get("machine"))
        if m:
            out += ["Measured on: %s." % m, ""]
        d = d["runs"]
    out += ["`bash scripts/results.sh ckpt`: `mixtrain bench step --model gpt --batch 32 --precision P "
           "--checkpoint-activations C` (GPT 6 layers, width 384, 6 heads, context 256; each run "
           "the median of 2 timed steps; each configuration run %d times, round-robin: the median of "
           "the runs, and the 1-minute load average at the start of each). Activations kept = tensor bytes the tape "
           "holds at the end of the forward." % len(d[0].get("runs_ms_per_step", [0])), "",
           "| precision | checkpointing | ms/step | × none | activations kept | × fp32 none | peak tensor memory | peak RSS | load |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    def kept(r):
        return sum(r["activation_bytes"].values())
    def ms(r):
        return r.get("median_ms_per_step", r["ms_per_step"])
    base = {r["precision"]: r for r in d if r["checkpoint_activations"] == "none"}
    ref = base.get("fp32")
    for r in d:
        b = base.get(r["precision"])
        by = ", ".join("%s %s" % (k, mib(v)) for k, v in sorted(r["activation_bytes"].items()) if v >= 2**20)
        out.append("| %s | %s | %.0f | %s | %s (%s) | %s | %s | %s | %s |" % (
            r["precision"], r["checkpoint_activations"], ms(r),
            "%.2f×" % (ms(r) / ms(b)) if b else "-", mib(kept(r)), by,
            "%.3f" % (kept(r) / kept(ref)) if ref else "-", mib(r["peak_tensor_bytes"]),
            mib(r["peak_rss_bytes"]), ", ".join("%.1f" % x for x in r.get("runs_load_avg_1min", []))))
    return with_provenance(out, name)


def dist_table():
    d = load("dist.json")
    if not d:
        return ""
    by = {r["name"]: r for r in d}
    out = ["`bash scripts/results.sh dist`: Fashion-MNIST MLP, 200 steps of batch 128, `mpirun -np N -x "
           "OMP_NUM_THREADS=T mixtrain train --model mlp --steps 200 ...` on the 2-core machine (two ranks "
           "of one thread share the two cores). Throughput: median of %d runs (global samples/s; the "
           "1-minute load average at each start in the last column). Bytes sent and state are rank 0's; "
           "comm s/step (median) is the time in gradient reduction and the ZeRO-1 all-gather, waiting "
           "for the other rank included."
           % len(d[0]["runs_throughput"]), "",
           "| configuration | ranks × threads | samples/s | × 1 rank × 2 threads | bytes sent per step | "
           "comm s/step | fp32 master + moments per rank | final train loss | load |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d:
        prec = r["name"].split("-")[0]
        one = by.get(prec + "-1r2t")
        b = r.get("comm_bytes_per_step")
        st = r.get("optimizer_state_bytes_per_rank")
        out.append("| %s | %d × %d | %.0f | %s | %s | %s | %s | %.4f | %s |" % (
            r["name"], r["ranks"], r["threads_per_rank"], r["median_throughput"],
            "%.2f×" % (r["median_throughput"] / one["median_throughput"]) if one else "-",
            "%.2f MB" % (b / 1e6) if b is not None else "-",
            "%.1f ms" % (1e3 * statistics.median(r["runs_comm_seconds_per_step"]))
            if "runs_comm_seconds_per_step" in r else "-",
            "%.2f MB (%.1f B/param)" % (st / 1e6, st / r["parameters"]) if st else "-",
            r["final_train_loss"], ", ".join("%.1f" % x for x in r["runs_load_avg_1min"])))
    w32, w16 = by.get("bf16-2r-wire32"), by.get("bf16-2r")
    z, p = by.get("bf16-2r-zero"), by.get("bf16-2r")
    notes = []
    if w32 and w16:
        notes.append("bf16 on the wire sends %.3f× the bytes of fp32 (%d vs %d per step)." % (
            w16["comm_bytes_per_step"] / w32["comm_bytes_per_step"], w16["comm_bytes_per_step"],
            w32["comm_bytes_per_step"]))
    if z and p:
        notes.append("ZeRO-1 holds %.3f× the fp32 master + moment bytes per rank of the plain run "
                     "(%d vs %d)." % (z["optimizer_state_bytes_per_rank"] / p["optimizer_state_bytes_per_rank"],
                                      z["optimizer_state_bytes_per_rank"], p["optimizer_state_bytes_per_rank"]))
    if notes:
        out += [""] + notes
    return with_provenance(out, "dist.json")


def zero_table():
    d = load("zero.json")
    if not d:
        return ""
    out = ["`bash scripts/zero_bench.sh`: the GPT at two sizes on 1, 2 and 4 ranks (`mpirun -np N -x "
           "OMP_NUM_THREADS=1`, sharing the 2 cores), ZeRO stages 0-3, bf16 compute, bf16 gradients on "
           "the wire (`--allreduce compute`), fp32 master and Adam moments; context 64, batch 4, %d "
           "steps. Figures are rank 0's. Theory: P parameters; stage 0 holds 18P (2 bf16 weights + 4 "
           "fp32 gradients + 4 master + 8 moments), stage 1 6P + 12P/N, stage 2 2P + 16P/N, stage 3 "
           "18P/N plus the two largest units gathered at once (bf16) and the largest unit's fp32 "
           "gradients before its reduce-scatter; wire bytes sent per step (N-1)/N x 2P per "
           "reduce-scatter or all-gather: the all-reduce is two, stages 1-2 one of each, stage 3 "
           "three (its weights are gathered for forward and again for backward). Step time is the "
           "median over the steps after the first; the ranks share two cores, so compare stages at "
           "one rank count." % len(d[0]["step_ms"] + [0]),
           "", "Rows marked accum 2 take each step in 2 micro-batches: stages 0-1 accumulate each rank's "
           "gradients unsharded and reduce once; stages 2-3 accumulate sharded (every micro-batch "
           "reduce-scattered into the fp32 shard) and stage 3 gathers the weights for each.", "",
           "| model | ranks | ZeRO | model state / rank | ÷ theory | of it gathered | wire bytes / step | "
           "÷ theory | peak RSS | ms / step | × stage 0 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d:
        ts, tw = r["theory_model_state_bytes_per_rank"], r["theory_comm_bytes_per_step"]
        out.append("| %s (%.1fM)%s | %d | %d | %s | %.3f | %s | %s | %s | %s | %.0f | %s |" % (
            r["model"], r["parameters"] / 1e6, ", accum 2" if r.get("grad_accum", 1) > 1 else "",
            r["ranks"], r["zero"],
            mib(r["model_state_bytes_per_rank"]), r["model_state_bytes_per_rank"] / ts,
            mib(r["gathered_weight_bytes_per_rank"]) if r["gathered_weight_bytes_per_rank"] else "-",
            mib(r["comm_bytes_per_step"]) if r["comm_bytes_per_step"] else "0",
            "%.3f" % (r["comm_bytes_per_step"] / tw) if tw else "-",
            mib(r["peak_rss_bytes"]), r["median_step_ms"],
            "%.2f" % r["step_vs_stage0"] if "step_vs_stage0" in r else "-"))
    return with_provenance(out, "zero.json")


FP8_PRECISIONS = "fp32,bf16,fp8:delayed,fp8:current,fp8:mxfp8"
# (results folder, title, command with %(seed)s and %(steps)d): each seed's compare is in
# <folder>/seed<S>/; the table gives the mean over the seeds measured, and each seed's gap.
FP8_WORKLOADS = (
    ("compare-fp8-mlp", "Fashion-MNIST MLP 784-512-512-10",
     "mixtrain compare --model mlp --epochs 10 --precisions " + FP8_PRECISIONS + " --seed %(seed)s"),
    ("compare-fp8-mlp-edges", "The same MLP with its first layer fc0 in fp8 too (`--bf16-modules fc2`: "
     "the head alone kept in bf16)",
     "mixtrain compare --model mlp --epochs 10 --precisions bf16,fp8:delayed,fp8:mxfp8 --bf16-modules fc2 "
     "--seed %(seed)s"),
    ("compare-fp8-gpt", "GPT 6×384 (6 heads, context 256) on the Jargon File",
     "mixtrain compare --model gpt --steps %(steps)d --batch 8 --lr 6e-4 --schedule cosine --warmup 50 "
     "--eval-batches 16 --precisions " + FP8_PRECISIONS + " --seed %(seed)s"),
    ("compare-fp8-gpt-12x768", "GPT 12×768 (12 heads, context 64) on the Jargon File",
     "mixtrain compare --model gpt --layers 12 --width 768 --heads 12 --context 64 --steps %(steps)d "
     "--batch 8 --lr 6e-4 --schedule cosine --warmup 20 --eval-batches 16 --precisions "
     + FP8_PRECISIONS + " --seed %(seed)s"),
)


def fp8_table():
    """fp8 against bf16 and the fp32 control, per workload: the validation loss (the mean over
    the seeds measured) and its gap to bf16's (the recipes' target: within 1% for delayed and
    mxfp8), with each seed's gap where there are several."""
    out = []
    for name, title, cmd in FP8_WORKLOADS:
        seeds = sorted(int(d[4:]) for d in (os.listdir(os.path.join(RES, name)) if os.path.isdir(
            os.path.join(RES, name)) else []) if re.fullmatch(r"seed\d+", d) and
            load(os.path.join(name, d, "compare.json")))
        if not seeds:
            out += ["", "**%s**: not measured yet (`bash scripts/results.sh fp8`)." % title]
            continue
        comps = [load(os.path.join(name, "seed%d" % sd, "compare.json")) for sd in seeds]
        labels = [r["label"] for r in comps[0]["runs"]]
        by = [{r["label"]: r for r in d["runs"]} for d in comps]
        mean = lambda label, key: sum(b[label][key] for b in by) / len(by)
        gap = lambda a, b: 100 * (a - b) / b
        steps = comps[0]["runs"][0].get("steps", 0)
        cls = "test_accuracy" in comps[0]["runs"][0]
        multi = len(seeds) > 1
        seed_txt = ("seeds %s, the mean" % ", ".join(map(str, seeds))) if multi else "seed %d" % seeds[0]
        out += ["", "**%s**, %d steps, %s:" % (title, steps, seed_txt), "", "```sh",
                "\n".join(cmd % {"steps": steps, "seed": sd} for sd in seeds), "```", "",
                "| precision | val loss | vs bf16 |%s%s%s peak tensor memory |" % (
                    " each seed vs bf16 |" if multi else "", " vs fp32 |" if "fp32" in labels else "",
                    " test accuracy |" if cls else ""),
                "| --- | --- | --- |%s%s%s --- |" % (" --- |" if multi else "", " --- |" if "fp32" in labels else "",
                                                   " --- |" if cls else "")]
        for label in labels:
            v = mean(label, "val_loss")
            rel_bf = "%+.2f%%" % gap(v, mean("bf16", "val_loss")) if "bf16" in labels else "n/a"
            each = " / ".join("%+.2f%%" % gap(b[label]["val_loss"], b["bf16"]["val_loss"]) for b in by)
            out.append("| %s | %.4f | %s |%s%s%s %s |" % (
                label, v, rel_bf, (" %s |" % each) if multi else "",
                (" %+.2f%% |" % gap(v, mean("fp32", "val_loss"))) if "fp32" in labels else "",
                (" %.2f%% |" % (100 * mean(label, "test_accuracy"))) if cls else "",
                mib(max(b[label]["peak_tensor_bytes"] for b in by))))
        out.append("")
        out.append(measured_at(os.path.join(name, "seed%d" % seeds[0])))
    if not out:
        return ""
    head = ["On the CPU an fp8 GEMM is emulated exactly (fp8 values are exact in bf16; a bf16 GEMM with "
            "fp32 accumulation forms their products exactly; the per-tensor scales multiply the fp32 "
            "result), so fp8 runs the bf16 GEMMs plus a quantization pass over every GEMM input, a little "
            "slower than bf16 here: these tables are about numerics, not speed. The "
            "model's edges stay in bf16 (`--bf16-modules auto`: the MLP's fc0, which reads the pixels, and "
            "its classifier fc2; the GPT's head); everything but the other linears' GEMM "
            "inputs is bf16 mixed precision. The MLP's 10-epoch validation loss differs by up to 1% between "
            "fp32 and bf16 on one seed (each seed's gap below), as much as the 1% the recipes are held "
            "to, so its tables give the mean over three seeds."]
    return "\n".join(head + out).strip()


def cli_help():
    exe = os.environ.get("MIXTRAIN_BIN", os.path.join(ROOT, "build", "mixtrain"))
    if not os.path.exists(exe):
        return "(build first)"
    parts = []
    for args in ([], ["train"], ["compare"], ["doctor"], ["generate"], ["export"], ["info"],
                 ["bench"]):
        try:
            h = subprocess.run([exe] + args + ["--help"], capture_output=True, text=True).stdout
        except OSError:
            continue
        parts.append("$ mixtrain %s--help\n%s" % (" ".join(args) + (" " if args else ""), h.rstrip()))
    return "```text\n" + "\n\n".join(parts) + "\n```"


def main():
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    info = load("info.json")
    def gpt_steps():
        try:
            with open(os.path.join(ROOT, "results", "compare-gpt", "compare.json")) as f:
                return int(json.load(f)["runs"][0]["steps"])
        except (OSError, KeyError, ValueError, IndexError):
            return 300
    results = []
    if info:
        results.append("Measured on: %s (`results/info.json`; the AVX2 table below says its own)." %
                       machine_str(info))
        results.append("Each table comes from one run of its command; the machine (2 cores) may be shared, so "
                       "read ratios measured in the same run rather than absolute speeds.")
        results.append("")
    mlp_table = compare_table("compare-mlp", "### Fashion-MNIST MLP 784-512-512-10, same seed and data order",
                              "mixtrain compare --model mlp --epochs 10 --precisions fp32,bf16,fp16,fp16:none --fp32-modules fc2 --seed 1   # the 10-way head kept in fp32")
    results.append(mlp_table)
    mlp2 = load(os.path.join("compare-mlp-avx2", "compare.json"))
    if mlp2:
        results += ["", compare_table("compare-mlp-avx2", "### The same on an AVX2 CPU (no 16-bit arithmetic)",
                                      "bash scripts/results.sh mlp   # on a CPU without AVX512-BF16: results/compare-mlp-avx2"),
                    "", "Measured on: %s. The 16-bit GEMMs run in fp32 on widened operands here, so "
                    "16-bit steps are not faster than fp32's; accuracy and memory are what this table "
                    "compares." % machine_str(load(os.path.join("compare-mlp-avx2", "info.json")))]
    results.append("")
    gpt_table = compare_table("compare-gpt", "### Byte-level GPT (6 layers, width 384, 6 heads, context 256) on the Jargon File",
                              "mixtrain compare --model gpt --steps %d --batch 8 --lr 1e-3 --schedule cosine --warmup 20 --eval-batches 16 "
                              "--precisions fp32,bf16,fp16 --seed 1" % gpt_steps())
    results.append(gpt_table)
    st = step_table()
    if st:
        results += ["", "### Training-step speed against PyTorch", "", st]
    st = step_table("step-avx2.json")
    if st:
        results += ["", "### Training-step speed on an AVX2 CPU (no 16-bit arithmetic)", "",
                    "Without AVX512-BF16 or AVX512-FP16 the GEMMs of every precision run in fp32 "
                    "(16-bit operands widened by pieces), so a 16-bit step can at best match the fp32 "
                    "one in speed; what it keeps is the memory. The targets above are for "
                    "AVX512-BF16 CPUs and are shown here for comparison only. Debian's torch has "
                    "no bf16 kernels and no fp32 BLAS on this CPU (its MLP step takes seconds), so "
                    "its GPT runs are left out.", "", st]
    ck = ckpt_table()
    if ck:
        results += ["", "### Activation checkpointing", "", ck]
    ck = ckpt_table("checkpointing-avx2.json")
    if ck:
        results += ["", "### Activation checkpointing on an AVX2 CPU", "",
                    "`gelu` recomputes only each MLP's GELU in backward (its [B, T, 4C] output is "
                    "not kept); `blocks` recomputes whole blocks.", "", ck]
    dt = dist_table()
    if dt:
        results += ["", "### Data parallel (2 ranks on 2 cores)", "", dt]
    zt = zero_table()
    if zt:
        results += ["", "### Sharded data parallel (ZeRO 0-3)", "", zt]
        text = section(text, "zero", zt)
    ft = fp8_table()
    if ft:
        results += ["", "### FP8 training (emulated exactly on the CPU)", "", ft]
        text = section(text, "fp8", ft)
    results += ["", "### Kernels", "", gemm_table()]
    where = results[0].replace("; the AVX2 table below says its own", "") if info else ""
    headline = ([where, ""] if info else []) + [mlp_table, "", gpt_table]
    text = section(text, "headline", "\n".join(headline))
    open(path, "w").write(text)
    for name, marker, body in (("RESULTS.md", "results", "\n".join(results)),
                               ("CLI.md", "cli", cli_help())):
        doc = os.path.join(ROOT, "docs", name)
        with open(doc) as f:
            updated = section(f.read(), marker, body, "docs/" + name)
        with open(doc, "w") as f:
            f.write(updated)
    print("README.md, docs/RESULTS.md and docs/CLI.md updated")


if __name__ == "__main__":
    main()
