"""Backward benchmark: FlashGDN vs FLA in the same run on FlashQLA's backward layouts (Hqk/Hv 16/32, 8/16,
4/8, 2/4, 16/16, 8/8, 4/4; 32768 tokens as 1, 2, 4 and 8 sequences; K = V = 128), backward alone and
forward + backward, with the floor and FlashQLA's published H200 backward time per row.

FLA refuses its Triton backward on Hopper with Triton < 3.7.1 (wrong dg/dβ, its issue #640); to time it
this script sets ``fla.ops.common.chunk_o.TRITON_ABOVE_3_7_1 = True`` and records that in the JSON —
FLA's gradients are then timed, not trusted. A row where FlashGDN fails records the error instead of a time.

  python benchmarks/bench_bwd.py --out DIR [--reps 10] [--rounds 1] [--rows substring[,substring...]] [--tag variant]
writes DIR/<gpu>-<date>-bwd[-tag].json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import flashgdn  # noqa: E402
import bwd_table  # noqa: E402
from bench_fwd import Timer, make_inputs, measure_ceilings  # noqa: E402

HEADS = [(16, 32), (8, 16), (4, 8), (2, 4), (16, 16), (8, 8), (4, 4)]
NSEQS = [1, 2, 4, 8]
TOKENS = 32768
D = 128


def make(hqk, hv, nseq, seed=0):
    q, k, v, g, beta, h0, cu = make_inputs(hqk, hv, [TOKENS // nseq] * nseq, seed)
    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    do = torch.randn(v.shape, device="cuda", generator=gen).to(v.dtype)
    dht = torch.randn(h0.shape, device="cuda", generator=gen) / 8
    ins = [q, k, v, g, beta, h0]
    for t in ins:
        t.requires_grad_(True)
    return ins, cu, do, dht


def floor_ms(hqk, hv, nseq, bw, rate):
    chunks = TOKENS // 64
    # backward ~2.5x the forward's products (recompute + gradients of each product)
    flops = 2.5 * 2 * chunks * hv * (2 * 64 * 64 * D + 3 * 64 * D * D + 2 * 64 * 64 * D)
    nbytes = TOKENS * (2 * hqk * D * 2 * 2 + 3 * hv * D * 2 * 2 + 4 * hv * 4) + 3 * nseq * hv * D * D * 4
    return max(flops / rate, nbytes / bw) * 1e3


def write_results(args, prop, meta, rows, final):
    """Writes the JSON and the Markdown table (after every row, so that a run cut short keeps its rows)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{prop.name.replace(' ', '_')}-{meta['date']}-bwd" + (f"-{args.tag}" if args.tag else "")
    md = [f"# Backward benchmark: {prop.name}, commit {meta['commit']}, {meta['date']}", "", meta["fla_note"] + ".",
          meta["fla_autotune"] + ".", meta["timing"] + ".", ""] + bwd_table.table(rows)
    summary = bwd_table.summary(rows)
    if summary:
        meta["summary"] = summary
        md += ["", summary]
        if final:
            print(summary)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    if final:
        print(f"wrote {out / stem}.json and .md")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rows", default="")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time FlashGDN and FLA alternately this many times per row; each time is the median "
                         "over the rounds (the JSON keeps every round's)")
    ap.add_argument("--tag", default=os.environ.get("FLASHGDN_BENCH_TAG", ""))
    args = ap.parse_args()
    prop = torch.cuda.get_device_properties(0)
    bw, rate = measure_ceilings()
    try:
        import fla  # noqa: F401
        import fla.ops.common.chunk_o as fla_chunk_o
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdr
        fla_chunk_o.TRITON_ABOVE_3_7_1 = True  # see the module docstring
        fla_ver = getattr(fla, "__version__", "unknown")
    except Exception as e:  # noqa: BLE001
        print(f"FLA unavailable: {e!r}")
        fla_gdr, fla_ver = None, None
    import triton
    published = {(r["hqk"], r["hv"], r["nseq"]): r
                 for r in json.load(open(ROOT / "benchmarks" / "published_h200_bwd.json"))["rows"]}
    meta = {"gpu": prop.name, "commit": os.environ.get("FLASHGDN_COMMIT", "unknown"),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "triton": triton.__version__,
            "fla": fla_ver, "flashgdn": flashgdn.__version__, "variant": args.tag or "default",
            "fla_autotune": os.environ.get("FLASHGDN_FLA_AUTOTUNE_NOTE", "FLA autotuned in this process"),
            "copy_bandwidth_GBps": bw / 1e9, "bf16_matmul_TFLOPs": rate / 1e12,
            "fla_note": "fla.ops.common.chunk_o.TRITON_ABOVE_3_7_1 forced True to time FLA's Triton backward on "
                        "Triton < 3.7.1 (its issue #640: wrong dg/dbeta there); FLA gradients are not checked",
            "timing": f"median of {args.reps} runs, L2 flushed before each" +
                      (f", then the median of {args.rounds} alternating rounds" if args.rounds > 1 else "") +
                      "; backward alone = autograd.grad on a retained graph; fwd+bwd = forward and backward of "
                      "the autograd op; queued = backward alone with its launches queued behind a ~1 ms GPU spin "
                      "and the flush (the CPU's work before the first kernel hidden, as in a training step whose CPU "
                      "runs ahead)"}
    timer = Timer(args.reps)
    rows = []
    print(f"GPU {prop.name}; FLA {fla_ver}; copy {bw / 1e9:.0f} GB/s, bf16 {rate / 1e12:.0f} TFLOP/s")
    for hqk, hv in HEADS:
        for nseq in NSEQS:
            name = f"{hqk}/{hv} 32k x{nseq}"
            if args.rows and not any(r in name for r in args.rows.split(",")):
                continue
            ins, cu, do, dht = make(hqk, hv, nseq)
            row = {"name": name, "hqk": hqk, "hv": hv, "seqlens": f"{nseq}x{TOKENS // nseq}",
                   "floor_ms": floor_ms(hqk, hv, nseq, bw, rate)}

            def run(fn):
                def fwdbwd():
                    o, ht = fn()
                    torch.autograd.backward([o, ht], [do, dht])
                o, ht = fn()

                def bwd():
                    torch.autograd.grad([o, ht], ins, [do, dht], retain_graph=True)
                return timer.eager(bwd), timer.eager(fwdbwd), timer.queued(bwd)

            def gdn():
                return flashgdn.chunk_gated_delta_rule(*ins[:5], initial_state=ins[5], output_final_state=True,
                                                       cu_seqlens=cu)
            cu64 = cu.long()

            def fla():
                return fla_gdr(*ins[:5], initial_state=ins[5], output_final_state=True, cu_seqlens=cu64)
            # Rounds alternate the two libraries so that drift within the process (clocks, the allocator)
            # does not favour either.
            rounds = {"flashgdn_bwd_ms": [], "flashgdn_fwdbwd_ms": [], "flashgdn_bwd_gpu_ms": [], "fla_bwd_ms": [],
                      "fla_fwdbwd_ms": [], "fla_bwd_gpu_ms": []}
            for _ in range(max(1, args.rounds)):
                try:
                    b, fb, bq = run(gdn)
                    rounds["flashgdn_bwd_ms"].append(b)
                    rounds["flashgdn_fwdbwd_ms"].append(fb)
                    rounds["flashgdn_bwd_gpu_ms"].append(bq)
                except flashgdn.FlashGDNError as e:
                    row["flashgdn_error"] = str(e)[:200]
                if fla_gdr is not None:
                    b, fb, bq = run(fla)
                    rounds["fla_bwd_ms"].append(b)
                    rounds["fla_fwdbwd_ms"].append(fb)
                    rounds["fla_bwd_gpu_ms"].append(bq)
            for key, xs in rounds.items():
                row[key] = statistics.median(xs) if xs else None
            if args.rounds > 1:
                row["rounds"] = rounds
            if fla_gdr is not None:
                if row.get("flashgdn_bwd_ms"):
                    row["speedup_bwd_vs_fla"] = row["fla_bwd_ms"] / row["flashgdn_bwd_ms"]
                    row["speedup_fwdbwd_vs_fla"] = row["fla_fwdbwd_ms"] / row["flashgdn_fwdbwd_ms"]
                    row["speedup_bwd_gpu_vs_fla"] = row["fla_bwd_gpu_ms"] / row["flashgdn_bwd_gpu_ms"]
            pub = published.get((hqk, hv, nseq))
            if pub:
                row["flashqla_h200_bwd_ms"] = pub["flashqla_ms"]
                row["fla_h200_bwd_ms_published"] = pub["fla_ms"]
            rows.append(row)
            fmt = lambda k: f"{row[k]:8.3f}" if isinstance(row.get(k), float) else f"{'n/a':>8}"  # noqa: E731
            print(f"{name:<16} floor {fmt('floor_ms')}  gdn bwd {fmt('flashgdn_bwd_ms')} fwd+bwd "
                  f"{fmt('flashgdn_fwdbwd_ms')}  fla bwd {fmt('fla_bwd_ms')} fwd+bwd {fmt('fla_fwdbwd_ms')}  "
                  f"QLA h200 bwd {fmt('flashqla_h200_bwd_ms')}  speedup bwd {fmt('speedup_bwd_vs_fla')} "
                  f"fwd+bwd {fmt('speedup_fwdbwd_vs_fla')}  queued bwd {fmt('flashgdn_bwd_gpu_ms')} vs "
                  f"{fmt('fla_bwd_gpu_ms')} ({fmt('speedup_bwd_gpu_vs_fla')})", flush=True)
            del ins, do, dht
            torch.cuda.empty_cache()
            write_results(args, prop, meta, rows, final=False)
    write_results(args, prop, meta, rows, final=True)


if __name__ == "__main__":
    main()
