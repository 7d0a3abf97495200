#!/usr/bin/python3
"""Reads the JSON results scripts/bench_compare.sh collected (ROUND-{mix,torch}-NAME.json),
takes per configuration the median over rounds, prints the speed ratios against their
targets, and writes everything to OUT (bench/results/compare.json) for the README table.

  /usr/bin/python3 bench/compare_report.py RESULTS_DIR OUT_JSON
"""
import glob
import json
import os
import statistics
import sys


def load(results_dir):
    runs = {}  # (impl, name) -> [result, ...]
    for path in sorted(glob.glob(os.path.join(results_dir, "*-*-*.json"))):
        base = os.path.basename(path)[:-5]
        _round, impl, name = base.split("-", 2)
        with open(path) as f:
            runs.setdefault((impl, name), []).append(json.load(f))
    return runs


def med(results, key):
    vals = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main():
    results_dir, out = sys.argv[1], sys.argv[2]
    runs = load(results_dir)
    machine = None
    if os.path.exists(os.path.join(results_dir, "machine.info")):
        with open(os.path.join(results_dir, "machine.info")) as f:
            machine = json.load(f)
    keys = ["ms_per_step", "throughput", "model_gflops_per_s", "mfu", "gemm_peak_gflops",
            "peak_rss_bytes", "optimizer_gbps", "memcpy_gbps", "optimizer_bandwidth_ratio",
            "forward_ms", "backward_ms", "optimizer_ms"]
    summary = {}
    for (impl, name), rs in sorted(runs.items()):
        s = {k: med(rs, k) for k in keys}
        s.update({k: rs[0][k] for k in ("model", "precision", "batch", "throughput_unit", "impl")})
        s["rounds"] = len(rs)
        summary[f"{impl}/{name}"] = s

    def get(impl, name, key):
        s = summary.get(f"{impl}/{name}")
        return None if s is None else s.get(key)

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    # fp16: no target (no fp16 arithmetic on these CPUs: its GEMMs widen to fp32), reported.
    checks = [
        ("mlp bf16 / fp32 speed (mixtrain)", ratio(get("mix", "mlp-bf16", "throughput"),
                                                   get("mix", "mlp-fp32", "throughput")), ">=", 1.8),
        ("gpt bf16 / fp32 speed (mixtrain)", ratio(get("mix", "gpt-bf16", "throughput"),
                                                   get("mix", "gpt-fp32", "throughput")), ">=", 1.8),
        ("gpt bf16 tokens/s mixtrain / torch", ratio(get("mix", "gpt-bf16", "throughput"),
                                                     get("torch", "gpt-bf16", "throughput")), ">=", 1.15),
        ("mlp bf16 samples/s mixtrain / torch", ratio(get("mix", "mlp-bf16", "throughput"),
                                                      get("torch", "mlp-bf16", "throughput")), ">=", 1.5),
        ("gpt bf16 mfu (mixtrain)", get("mix", "gpt-bf16", "mfu"), ">=", 0.85),
        ("gpt fp32 mfu (mixtrain)", get("mix", "gpt-fp32", "mfu"), ">=", 0.85),
        ("gpt b32 bf16 RSS / mixtrain fp32 RSS", ratio(get("mix", "gpt32-bf16", "peak_rss_bytes"),
                                                      get("mix", "gpt32-fp32", "peak_rss_bytes")), "<=", 0.55),
        ("gpt b32 bf16 RSS / torch bf16 RSS", ratio(get("mix", "gpt32-bf16", "peak_rss_bytes"),
                                                   get("torch", "gpt32-bf16", "peak_rss_bytes")), "<=", 0.6),
        ("AdamW step / memcpy bandwidth (gpt bf16)", get("mix", "gpt-bf16", "optimizer_bandwidth_ratio"), ">=", 0.8),
        ("AdamW step / memcpy bandwidth (mlp bf16)", get("mix", "mlp-bf16", "optimizer_bandwidth_ratio"), ">=", 0.8),
        ("mlp fp16 / fp32 speed (mixtrain)", ratio(get("mix", "mlp-fp16", "throughput"),
                                                   get("mix", "mlp-fp32", "throughput")), None, None),
        ("gpt fp16 / fp32 speed (mixtrain)", ratio(get("mix", "gpt-fp16", "throughput"),
                                                   get("mix", "gpt-fp32", "throughput")), None, None),
        ("gpt b32 fp16 RSS / mixtrain fp32 RSS", ratio(get("mix", "gpt32-fp16", "peak_rss_bytes"),
                                                      get("mix", "gpt32-fp32", "peak_rss_bytes")), None, None),
    ]
    rows = []
    print(f"{'configuration':<26} {'ms/step':>9} {'throughput':>12} {'unit':<10} {'GFLOP/s':>8} "
          f"{'mfu':>6} {'peak':>7} {'RSS MiB':>8}")
    for k, s in summary.items():
        mfu = f"{s['mfu']:.3f}" if s["mfu"] is not None else "-"
        peak = f"{s['gemm_peak_gflops']:.0f}" if s["gemm_peak_gflops"] is not None else "-"
        print(f"{k:<26} {s['ms_per_step']:9.1f} {s['throughput']:12.0f} {s['throughput_unit']:<10} "
              f"{s['model_gflops_per_s']:8.1f} {mfu:>6} {peak:>7} {s['peak_rss_bytes'] / 2**20:8.0f}")
    print()
    print(f"{'ratio':<42} {'value':>7}  target")
    for label, v, op, target in checks:
        if v is None and target is None:
            continue  # an informational ratio whose runs were not made
        ok = None if v is None or op is None else (v >= target if op == ">=" else v <= target)
        mark = "-" if ok is None else ("ok" if ok else "MISS")
        vs = "-" if v is None else f"{v:.3f}"
        print(f"{label:<42} {vs:>7}  {op or ''} {target if target is not None else ''}  {mark}")
        rows.append({"ratio": label, "value": v, "op": op, "target": target, "met": ok})
    with open(out, "w") as f:
        json.dump({"machine": machine, "configurations": summary, "ratios": rows,
                   "raw": {f"{i}/{n}": rs for (i, n), rs in runs.items()}}, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
