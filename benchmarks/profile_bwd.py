"""Per-kernel times of one GPU backward call (torch.profiler, mean of 3 calls after 2 warm-ups, L2 warm) on a few
backward layouts, and the CPU cost of a tiny eager ``ops.chunk_bwd`` / ``ops.chunk_fwd`` call.

  PYTHONPATH=... FLASHGDN_LIBRARY=build-gpu/libflashgdn.so python3 benchmarks/profile_bwd.py
"""
import sys, torch
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python")); sys.path.insert(0, str(ROOT / "benchmarks"))
import flashgdn
from bench_fwd import make_inputs
from torch.profiler import profile, ProfilerActivity
for hqk, hv, lens in [(16, 32, [32768]), (4, 8, [32768]), (4, 8, [8192] * 4), (16, 16, [4096] * 8)]:
    q, k, v, g, beta, h0, cu = make_inputs(hqk, hv, lens, 0)
    do = torch.randn(v.shape, device="cuda").to(v.dtype)
    dht = torch.randn(h0.shape, device="cuda") / 8
    f = lambda: flashgdn.ops.chunk_bwd(q, k, v, g, beta, do, dht, initial_state=h0, cu_seqlens=cu)
    for _ in range(2): f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3): f()
        torch.cuda.synchronize()
    print(f"== {hqk}/{hv} {len(lens)}x{lens[0]}")
    tot = 0
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
        if e.device_time_total <= 0: continue
        tot += e.device_time_total / 3
        print(f"  {e.device_time_total / 3 / 1000:8.3f} ms  {e.count // 3:3d}x  {e.key[:110]}")
    print(f"  total {tot / 1000:.3f} ms")
# CPU overhead per call: a tiny problem, eager calls back to back
import time
q, k, v, g, beta, h0, cu = make_inputs(1, 2, [64], 0)
do = torch.randn(v.shape, device="cuda").to(v.dtype)
f = lambda: flashgdn.ops.chunk_bwd(q, k, v, g, beta, do, None, initial_state=h0, cu_seqlens=cu)
for _ in range(20): f()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(200): f()
cpu = (time.perf_counter() - t) / 200
torch.cuda.synchronize()
tot = (time.perf_counter() - t) / 200
print(f"tiny chunk_bwd: {cpu * 1e6:.1f} us CPU per call, {tot * 1e6:.1f} us wall per call")
ff = lambda: flashgdn.ops.chunk_fwd(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
for _ in range(20): ff()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(200): ff()
cpu = (time.perf_counter() - t) / 200
print(f"tiny chunk_fwd: {cpu * 1e6:.1f} us CPU per call")
