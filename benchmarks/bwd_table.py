"""The backward benchmark's Markdown table and summary, shared by bench_bwd.py (one run) and merge_bwd.py
(parts of several runs)."""
from __future__ import annotations

import math

HEADER = ["| row | floor ms | FlashGDN bwd ms | FLA bwd ms | bwd speedup | FlashGDN fwd+bwd ms | FLA fwd+bwd ms | "
          "fwd+bwd speedup | FlashGDN bwd queued ms | FLA bwd queued ms | queued speedup | FlashQLA H200 bwd ms |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
COLUMNS = ("floor_ms", "flashgdn_bwd_ms", "fla_bwd_ms", "speedup_bwd_vs_fla", "flashgdn_fwdbwd_ms", "fla_fwdbwd_ms",
           "speedup_fwdbwd_vs_fla", "flashgdn_bwd_gpu_ms", "fla_bwd_gpu_ms", "speedup_bwd_gpu_vs_fla",
           "flashqla_h200_bwd_ms")


def table(rows) -> list:
    """The header and one line per row (n/a where a value is missing)."""
    g = lambda r, k: f"{r[k]:.3f}" if isinstance(r.get(k), float) else "n/a"  # noqa: E731
    return HEADER + [f"| {r['name']} | " + " | ".join(g(r, k) for k in COLUMNS) + " |" for r in rows]


def summary(rows) -> str:
    """Geomean, min and rows slower than FLA for backward alone, forward + backward and the queued backward;
    empty when no row has FLA's times."""
    parts = []
    for key, what in (("speedup_bwd_vs_fla", "Backward alone"), ("speedup_fwdbwd_vs_fla", "forward + backward"),
                      ("speedup_bwd_gpu_vs_fla", "backward alone, launches queued")):
        xs = [r[key] for r in rows if r.get(key)]
        if xs:
            gm = math.exp(sum(math.log(x) for x in xs) / len(xs))
            parts.append(f"{what}: geomean {gm:.2f}x FLA, min {min(xs):.2f}x, {sum(x < 1 for x in xs)} of {len(xs)} "
                         "rows slower")
    return "; ".join(parts) + "." if parts else ""
