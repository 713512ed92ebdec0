"""Where a GPU backward call's time goes, per layout: the sum of its kernels (torch.profiler, L2 flushed before
each call), the same call timed with CUDA events eagerly through ``ops.chunk_bwd`` and through autograd (as
``bench_bwd.py`` times it), and by CUDA-graph replay (no CPU in the way). The differences separate kernel
time, launch gaps and CPU overhead. Also the CPU cost of a tiny eager ``ops.chunk_bwd`` / ``ops.chunk_fwd``.

  python3 benchmarks/profile_bwd.py [--rows "16/16x2,4/8x1"] [--reps 5]
  ncu --kernel-name regex:chunk_grads python3 benchmarks/profile_bwd.py --once --rows 16/16x2
(rows: Hqk/Hv x number of sequences of 32768 tokens in all; default a few of bench_bwd's rows)
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import flashgdn  # noqa: E402
from bench_fwd import Timer, make_inputs  # noqa: E402

TOKENS = 32768


def parse(spec: str):
    heads, nseq = spec.split("x")
    hqk, hv = (int(x) for x in heads.split("/"))
    return hqk, hv, int(nseq)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="16/32x1,16/16x2,8/8x4,4/8x1")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--once", action="store_true", help="one chunk_bwd call per row and nothing else (for ncu)")
    args = ap.parse_args()
    if args.once:
        for spec in args.rows.split(","):
            hqk, hv, nseq = parse(spec)
            q, k, v, g, beta, h0, cu = make_inputs(hqk, hv, [TOKENS // nseq] * nseq, 0)
            do = torch.randn(v.shape, device="cuda").to(v.dtype)
            flashgdn.ops.chunk_bwd(q, k, v, g, beta, do, None, initial_state=h0, cu_seqlens=cu)
        torch.cuda.synchronize()
        return
    timer = Timer(args.reps)
    for spec in args.rows.split(","):
        hqk, hv, nseq = parse(spec)
        q, k, v, g, beta, h0, cu = make_inputs(hqk, hv, [TOKENS // nseq] * nseq, 0)
        do = torch.randn(v.shape, device="cuda").to(v.dtype)
        dht = torch.randn(h0.shape, device="cuda") / 8

        def direct():
            return flashgdn.ops.chunk_bwd(q, k, v, g, beta, do, dht, initial_state=h0, cu_seqlens=cu)
        for _ in range(2):
            direct()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                timer.flush_buf.zero_()
                direct()
            torch.cuda.synchronize()
        kernels = []
        for e in prof.key_averages():
            if e.device_time_total > 0 and "zero" not in e.key and "fill" not in e.key:
                kernels.append((e.device_time_total / 3 / 1000, e.count // 3, e.key))
        kernels.sort(reverse=True)
        ksum = sum(t for t, _, _ in kernels)
        ins = [x.detach().clone().requires_grad_(True) for x in (q, k, v, g, beta, h0)]
        o, ht = flashgdn.chunk_gated_delta_rule(*ins[:5], initial_state=ins[5], output_final_state=True,
                                                cu_seqlens=cu)

        def autograd():
            torch.autograd.grad([o, ht], ins, [do, dht], retain_graph=True)
        t_direct, t_auto, t_graph = timer.eager(direct), timer.eager(autograd), timer.graph(direct)
        print(f"== {hqk}/{hv} x{nseq}: kernels {ksum:.3f} ms | eager ops.chunk_bwd {t_direct:.3f} | autograd "
              f"{t_auto:.3f} | graph replay {t_graph:.3f}")
        for t, n, key in kernels:
            print(f"  {t:8.3f} ms {n:3d}x  {key[:100]}")
        del q, k, v, g, beta, h0, do, dht, ins, o, ht
        torch.cuda.empty_cache()

    # CPU cost per call: a tiny problem; each call timed alone (median; the GPU queue never fills), then the
    # same call with parts taken away: the C launch alone, the op with the launch stubbed out.
    q, k, v, g, beta, h0, cu = make_inputs(1, 2, [64], 0)
    do = torch.randn(v.shape, device="cuda").to(v.dtype)

    def cpu_us(f, n=60):
        for _ in range(10):
            f()
        torch.cuda.synchronize()
        ts = []
        for i in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
            if i % 10 == 9:
                torch.cuda.synchronize()
        return statistics.median(ts) * 1e6

    bwd = lambda: flashgdn.ops.chunk_bwd(q, k, v, g, beta, do, None, initial_state=h0, cu_seqlens=cu)  # noqa: E731
    print(f"tiny chunk_bwd: {cpu_us(bwd):.1f} us CPU per call")
    print(f"tiny chunk_fwd: {cpu_us(lambda: flashgdn.ops.chunk_fwd(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)):.1f} us")
    ops, lib = flashgdn.ops, flashgdn._lib
    captured = {}
    real = ops._launch_on_gpu
    ops._launch_on_gpu = lambda kind, p, device: captured.setdefault(kind, p)
    print(f"  op without the C launch: {cpu_us(bwd):.1f} us")
    ops._launch_on_gpu = real
    p = captured["bwd"]
    nbytes = ctypes.c_size_t(0)
    lib.check(lib.lib.flashgdn_chunk_bwd_workspace_size(ctypes.byref(p), ctypes.byref(nbytes)))
    ws = torch.empty(max(nbytes.value, 1), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    print(f"  workspace_size alone: {cpu_us(lambda: lib.lib.flashgdn_chunk_bwd_workspace_size(ctypes.byref(p), ctypes.byref(nbytes))):.1f} us")
    print(f"  flashgdn_chunk_bwd alone: {cpu_us(lambda: lib.lib.flashgdn_chunk_bwd(ctypes.byref(p), ws.data_ptr(), nbytes.value, stream)):.1f} us")
    print(f"  torch.cuda.current_stream: {cpu_us(lambda: torch.cuda.current_stream(q.device).cuda_stream):.1f} us")
    print(f"  6 x torch.empty_like: {cpu_us(lambda: [torch.empty_like(x) for x in (q, k, v, g, beta, h0)]):.1f} us")
    ins = [x.detach().clone().requires_grad_(True) for x in (q, k, v, g, beta, h0)]
    o, ht = flashgdn.chunk_gated_delta_rule(*ins[:5], initial_state=ins[5], output_final_state=True, cu_seqlens=cu)
    dht = torch.zeros_like(ht)
    print(f"  autograd.grad (tiny): {cpu_us(lambda: torch.autograd.grad([o, ht], ins, [do, dht], retain_graph=True)):.1f} us")

if __name__ == "__main__":
    main()
