"""Runs FlashGDN's forward a few times on one layout, for ncu / compute-sanitizer:
  ncu --clock-control none -k regex:recurrence python3 benchmarks/profile_fwd.py --hqk 16 --hv 64 --seqlens 1x8192
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import flashgdn  # noqa: E402
from bench_fwd import make_inputs, parse_seqlens  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--hqk", type=int, default=16)
ap.add_argument("--hv", type=int, default=64)
ap.add_argument("--seqlens", default="1x8192")
ap.add_argument("--iters", type=int, default=3)
args = ap.parse_args()
q, k, v, g, beta, h0, cu = make_inputs(args.hqk, args.hv, parse_seqlens(args.seqlens))
for _ in range(args.iters):
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
torch.cuda.synchronize()
start, end = torch.cuda.Event(True), torch.cuda.Event(True)
start.record()
for _ in range(5):
    flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
end.record()
torch.cuda.synchronize()
print(f"{args.hqk}/{args.hv} {args.seqlens}: {start.elapsed_time(end) / 5:.3f} ms per call")
