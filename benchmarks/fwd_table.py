"""The forward benchmark's summary and table (bench_fwd.py writes them; merge_fwd.py rebuilds them from parts)."""
from __future__ import annotations

import json
import math
from pathlib import Path


def summarize(meta: dict, rows: list) -> None:
    """Geometric-mean / minimum speedup over FLA and the rows slower than FLA, into meta."""
    sp = [r["speedup_vs_fla"] for r in rows if "speedup_vs_fla" in r]
    if sp:
        meta["geomean_speedup_vs_fla"] = math.exp(sum(math.log(x) for x in sp) / len(sp))
        meta["min_speedup_vs_fla"] = min(sp)
        meta["rows_slower_than_fla"] = [r["name"] for r in rows if r.get("speedup_vs_fla", 2) < 1]


def write(out: Path, stem: str, meta: dict, rows: list, variants: list, header: list | None = None) -> None:
    """STEM.json (meta + rows) and STEM.md (the table) under out; header: extra markdown lines after the title."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [f"# Forward benchmark: {meta['gpu']}, commit {meta['commit']}, {meta['date']}", ""]
    md += header or []
    md += [f"torch {meta['torch']}, triton {meta['triton']}, FLA {meta['fla']}, CUDA {meta['cuda']}. "
           f"Measured ceilings: copy {meta['copy_bandwidth_GBps']:.0f} GB/s, bf16 matmul {meta['bf16_matmul_TFLOPs']:.0f} "
           f"TFLOP/s. {meta['timing']}.",
           f"Inputs: {meta['inputs']}. FlashQLA/FlashInfer columns are their published H200 numbers; "
           "'xFLA' columns are speedups over FLA within the same table/run.", ""]
    if "first_call_ms" in meta:
        md += [f"First FlashGDN call of the process: {meta['first_call_ms']:.3f} ms against a warm call's "
               f"{meta['warm_call_ms']:.3f} ms ({meta['first_over_warm']:.2f}x) on {meta['first_call_row']}.", ""]
    md += ["| row | floor ms | FlashGDN ms (graph) | FlashGDN ms (eager) | FLA ms | FLA timing | x FLA | FlashQLA H200 ms | "
           "FlashQLA x FLA | FlashInfer H200 ms | FlashInfer x FLA | rel L2 o vs FLA |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    if variants:  # the variants' graph-replay medians as extra columns
        md[-2] += "".join(f" {x} ms |" for x in variants)
        md[-1] += "---:|" * len(variants)
    for r in rows:
        g = lambda k, p=3: (f"{r[k]:.{p}f}" if isinstance(r.get(k), float) else str(r.get(k, "n/a")))  # noqa: E731
        md.append(f"| {r['name']} | {g('floor_ms')} | {g('flashgdn_graph_ms')} | {g('flashgdn_eager_ms')} | "
                  f"{g('fla_ms')} | {r.get('fla_timing', 'n/a')} | {g('speedup_vs_fla', 2)} | {g('flashqla_h200_ms')} | "
                  f"{g('flashqla_speedup_vs_fla_published', 2)} | {g('flashinfer_h200_ms')} | "
                  f"{g('flashinfer_speedup_vs_fla_published', 2)} | {r.get('rel_l2_o_vs_fla', float('nan')):.1e} |"
                  + "".join(f" {g(f'flashgdn_{x}_graph_ms')} |" for x in variants))
    if "geomean_speedup_vs_fla" in meta:
        md += ["", f"Geometric-mean speedup over FLA: {meta['geomean_speedup_vs_fla']:.2f}x (min "
                   f"{meta['min_speedup_vs_fla']:.2f}x); rows slower than FLA: {meta['rows_slower_than_fla'] or 'none'}."]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
