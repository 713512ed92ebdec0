"""Merges forward-benchmark parts (bench_fwd.py JSONs, or a partial-fwd.json of a run cut off by its time limit, from
separate device calls) into one table, rows in bench_fwd's order, each row keeping the part it came from.

  python3 benchmarks/merge_fwd.py PART.json [PART.json ...] --out STEM   -> STEM.json and STEM.md
Refuses parts from different GPUs, commits or library versions (FLA, Triton, torch), and duplicate rows. The first
part's first-call measurement is kept.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fwd_table  # noqa: E402
import parts as parts_mod  # noqa: E402

HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16)]  # bench_fwd.py's order
SEQLENS = ["1x32768", "1x8192", "28672+4096", "8192x4", "1024x8"]
ORDER = [f"{h}/{v} {s}" for h, v in HEADS for s in SEQLENS]
SAME = ("gpu", "commit", "torch", "triton", "fla", "flashgdn", "cuda")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("parts", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parts, ordered = parts_mod.load_parts(args.parts, SAME, ORDER)
    meta = dict(parts[0][1]["meta"])
    meta["parts"] = [{"file": name, "rows": len(d["rows"]), "date": d["meta"].get("date")} for name, d in parts]
    fwd_table.summarize(meta, ordered)
    out = Path(args.out)
    header = [f"Merged from {len(parts)} runs of `benchmarks/bench_fwd.py` (FLA in the same process in each): "
              + "; ".join(f"`{p['file']}` ({p['rows']} rows)" for p in meta["parts"]) + ".", ""]
    fwd_table.write(out.parent, out.name, meta, ordered, [x for x in meta.get("variants", "").split(",") if x], header)
    print(f"{len(ordered)} rows; geomean x FLA {meta.get('geomean_speedup_vs_fla', float('nan')):.2f}, "
          f"min {meta.get('min_speedup_vs_fla', float('nan')):.2f} -> {out}.json / .md")


if __name__ == "__main__":
    main()
