"""Merges backward-benchmark parts (bench_bwd.py JSONs from separate device calls, e.g. a few head layouts
each) into one table, rows in bench_bwd's order, with every part's provenance kept.

  python3 benchmarks/merge_bwd.py PART.json [PART.json ...] --out STEM   -> STEM.json and STEM.md
Refuses parts from different GPUs or library versions (FLA, Triton, torch), and duplicate rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bwd_table  # noqa: E402
import parts as parts_mod  # noqa: E402

ORDER = [f"{h}/{v} 32k x{n}" for h, v in [(16, 32), (8, 16), (4, 8), (2, 4), (16, 16), (8, 8), (4, 4)]
         for n in (1, 2, 4, 8)]
SAME = ("gpu", "torch", "triton", "fla", "flashgdn")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("parts", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parts, ordered = parts_mod.load_parts(args.parts, SAME, ORDER, lambda m: {"commit": m["commit"]})
    first = parts[0][1]["meta"]
    meta = {k: first.get(k) for k in SAME}
    meta["parts"] = [{"file": name, **{k: d["meta"].get(k) for k in ("commit", "date", "fla_autotune", "timing")}}
                     for name, d in parts]
    meta["fla_note"] = first.get("fla_note")
    meta["summary"] = bwd_table.summary(ordered)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": ordered}, indent=1))
    md = [f"# Backward benchmark, all parts: {meta['gpu']}, {len(ordered)} rows", "",
          f"torch {meta['torch']}, Triton {meta['triton']}, FLA {meta['fla']}, FlashGDN {meta['flashgdn']}. "
          f"{meta['fla_note']}.", "", "Parts (each timed in one process, FLA in the same run):", ""]
    md += [f"- `{p['file']}`: commit {p['commit']}, {p['date']}; {p['fla_autotune']}" for p in meta["parts"]]
    md += ["", f"Timing: {parts[0][1]['meta']['timing']}.", ""] + bwd_table.table(ordered)
    md += ["", meta["summary"]]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(meta["summary"])


if __name__ == "__main__":
    main()
