"""Where the first FlashGDN call of a process spends its time (issue 5: first call <= 1.1x a warm call).

  python3 benchmarks/first_call.py [--hqk 2 --hv 8 --seqlens 1x32768]
Runs itself in fresh subprocesses, with the driver's default lazy module loading and with CUDA_MODULE_LOADING=EAGER,
and after flashgdn.init() (with its phases, FLASHGDN_TRACE_INIT=1), and prints per mode: the CPU time of the first
call (from its start to its return, launches only) and its CUDA-event time (L2 flushed), then the median of five warm
calls. Each child touches torch's CUDA context and its own kernels first,
so only FlashGDN's first-use work remains in the first call.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args):
    import torch
    sys.path.insert(0, str(ROOT / "python"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import flashgdn  # noqa: E402
    from bench_fwd import make_inputs, parse_seqlens  # noqa: E402

    q, k, v, g, beta, h0, cu = make_inputs(args.hqk, args.hv, parse_seqlens(args.seqlens))
    cu_cpu = cu.long().cpu()
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    res = {}
    if args.init:  # flashgdn.init() at startup (its phases on stderr with FLASHGDN_TRACE_INIT=1)
        t0 = time.perf_counter()
        flashgdn.init()
        res["init"] = {"cpu_ms": (time.perf_counter() - t0) * 1e3, "event_ms": float("nan")}
    if args.prealloc:
        # torch's caching allocator given blocks of the call's sizes first (as an engine's memory pool has them), so
        # that the first call's allocations (output, final state, workspace) do not reach cudaMalloc either.
        blocks = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in (v.numel() * v.element_size(),
                                                                              h0.numel() * 4, 1 << 30)]
        del blocks
    if args.profile:  # where the first call's CPU time goes (cProfile; ctypes calls count as their caller's own time)
        import cProfile
        import io
        import pstats
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                        cu_seqlens_cpu=cu_cpu)
        prof.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        print(buf.getvalue())
        return
    for name in ["first"] + [f"warm{i}" for i in range(1, 6)]:
        flush.zero_()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
        e0.record()
        t0 = time.perf_counter()
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                        cu_seqlens_cpu=cu_cpu)
        cpu = time.perf_counter() - t0
        e1.record()
        torch.cuda.synchronize()
        res[name] = {"cpu_ms": cpu * 1e3, "event_ms": e0.elapsed_time(e1)}
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hqk", type=int, default=2)
    ap.add_argument("--hv", type=int, default=8)
    ap.add_argument("--seqlens", default="1x32768")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--init", action="store_true", help="(child) flashgdn.init() before the first call")
    ap.add_argument("--prealloc", action="store_true", help="(child) torch's allocator primed with the call's sizes")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the first call (after init and the allocator primed)")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    for mode in ("default", "EAGER", "init", "init+prealloc"):
        env = dict(os.environ)
        if mode == "EAGER":
            env["CUDA_MODULE_LOADING"] = "EAGER"
        if mode.startswith("init"):
            env["FLASHGDN_TRACE_INIT"] = "1"
        out = subprocess.run([sys.executable, __file__, "--child", "--hqk", str(args.hqk), "--hv", str(args.hv),
                              "--seqlens", args.seqlens] + (["--init"] if mode.startswith("init") else [])
                             + (["--prealloc"] if mode.endswith("prealloc") else []), env=env,
                             capture_output=True, text=True, timeout=300)
        if mode.startswith("init"):
            print("  " + "".join(l for l in out.stderr.splitlines(True) if "flashgdn_init" in l).strip())
        if out.returncode != 0:
            print(f"{mode}: failed: {out.stderr[-500:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        warm = sorted(r[f"warm{i}"]["event_ms"] for i in range(1, 6))[2]
        warm_cpu = sorted(r[f"warm{i}"]["cpu_ms"] for i in range(1, 6))[2]
        label = {"init": "flashgdn.init() first", "init+prealloc": "flashgdn.init() and torch's allocator primed first"
                 }.get(mode, "module loading " + mode)
        init = f"init {r['init']['cpu_ms']:.3f} ms (CPU), " if "init" in r else ""
        print(f"{args.hqk}/{args.hv} {args.seqlens}, {label}: {init}first call {r['first']['event_ms']:.3f} ms "
              f"(CPU {r['first']['cpu_ms']:.3f} ms), warm calls median {warm:.3f} ms (CPU {warm_cpu:.3f} ms); "
              f"first / warm {r['first']['event_ms'] / warm:.2f}x")
    if args.profile:
        out = subprocess.run([sys.executable, __file__, "--child", "--profile", "--init", "--prealloc", "--hqk", str(args.hqk), "--hv",
                              str(args.hv), "--seqlens", args.seqlens], capture_output=True, text=True, timeout=300)
        print(out.stdout[-12000:], out.stderr[-2000:])


if __name__ == "__main__":
    main()
