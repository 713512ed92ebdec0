"""Forward benchmark: FlashGDN vs FLA's chunk_gated_delta_rule in the same run, on FlashQLA's H200 table
layouts (heads Hqk/Hv x seqlens, K = V = 128), with the physical floor and FlashQLA's / FlashInfer's
published H200 numbers beside each row.

Inputs (as FlashQLA's benchmark): packed varlen with int32 cu_seqlens, q/k l2-normalised beforehand (bf16),
v bf16, g = logsigmoid(randn) / 16 (fp32), beta = sigmoid(randn) (fp32), fp32 initial state, final state on.
Timing: CUDA-graph replay of one call and eager calls, each the median of --reps runs with L2 flushed
(a 512 MiB write) before every run, CUDA events around the call only.

  python benchmarks/bench_fwd.py --out DIR [--reps 30] [--rows substring]
writes DIR/<gpu>-<date>-fwd.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import flashgdn  # noqa: E402
import fwd_table  # noqa: E402

HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16)]
SEQLENS = ["1x32768", "1x8192", "28672+4096", "8192x4", "1024x8"]
D = 128


def parse_seqlens(s: str):
    """'1x32768' is one sequence of 32768 tokens, '8192x4' four of 8192 (FlashQLA's naming: the larger
    number is the length), '28672+4096' two sequences."""
    if "x" in s:
        a, b = (int(x) for x in s.split("x"))
        return [max(a, b)] * min(a, b)
    return [int(x) for x in s.split("+")]


def measure_ceilings():
    """Copy bandwidth (bytes read + written) and bf16 matmul rate on random data."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    ts = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
        e0.record()
        b.copy_(a)
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    bw = 2 * n / (statistics.median(ts) * 1e-3)
    del a, b
    m = 8192
    x = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    y = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        x @ y
    ts = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
        e0.record()
        x @ y
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    rate = 2 * m ** 3 / (statistics.median(ts) * 1e-3)
    return bw, rate


def floor_ms(hqk, hv, lens, bw, rate):
    T, N = sum(lens), len(lens)
    chunks = sum(math.ceil(L / 64) for L in lens)
    # per chunk and value head: QK^T, KK^T (64x64xK), KS, QS (64xKxV), Ab W, Pm vn (64x64xV), K^T Vd (Kx64xV)
    flops = 2 * chunks * hv * (2 * 64 * 64 * D + 3 * 64 * D * D + 2 * 64 * 64 * D)
    nbytes = T * (2 * hqk * D * 2 + 2 * hv * D * 2 + 2 * hv * 4) + 2 * N * hv * D * D * 4
    return max(flops / rate, nbytes / bw) * 1e3, flops, nbytes


def make_inputs(hqk, hv, lens, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    T, N = sum(lens), len(lens)
    dev = "cuda"
    q = F.normalize(torch.randn(1, T, hqk, D, device=dev, generator=gen), dim=-1).to(torch.bfloat16)
    k = F.normalize(torch.randn(1, T, hqk, D, device=dev, generator=gen), dim=-1).to(torch.bfloat16)
    v = torch.randn(1, T, hv, D, device=dev, generator=gen).to(torch.bfloat16)
    g = F.logsigmoid(torch.randn(1, T, hv, device=dev, generator=gen)) / 16
    beta = torch.sigmoid(torch.randn(1, T, hv, device=dev, generator=gen))
    h0 = torch.randn(N, hv, D, D, device=dev, generator=gen)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32, device=dev)
    return q, k, v, g, beta, h0, cu


class Timer:
    def __init__(self, reps):
        self.reps = reps
        self.flush_buf = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")

    def _one(self, launch, spin_cycles=0):
        """One timed call: an optional GPU spin, the L2 flush, CUDA events around `launch`."""
        if spin_cycles:
            torch.cuda._sleep(spin_cycles)
        self.flush_buf.zero_()
        e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
        e0.record()
        launch()
        e1.record()
        torch.cuda.synchronize()
        return e0.elapsed_time(e1)

    def _time(self, launch, spin_cycles=0):
        return statistics.median(self._one(launch, spin_cycles) for _ in range(self.reps))

    @staticmethod
    def _warm(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()

    def eager(self, fn):
        self._warm(fn)
        return self._time(fn)

    def once(self, fn):
        """One call, nothing before it (e.g. the process's first): CUDA events around it, L2 flushed."""
        torch.cuda.synchronize()
        return self._one(fn)

    def queued(self, fn, spin_ms=1.0):
        """GPU time of an eager call whose launches are queued behind a GPU spin (``spin_ms``, then the L2
        flush), so the CPU's work before its first kernel is hidden, as in a training step whose CPU runs
        ahead of the GPU. Launch gaps the CPU cannot fill after the spin still count."""
        self._warm(fn)
        # ~spin_ms at Hopper's ~2 GHz SM clock (it only needs to outlast the CPU)
        return self._time(fn, spin_cycles=int(spin_ms * 2e6))

    def graph(self, fn):
        self._warm(fn)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(s):
            with torch.cuda.graph(g, stream=s):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        return self._time(g.replay)


def load_fla():
    try:
        import fla  # noqa: F401
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdr
        from fla.ops.utils.index import prepare_chunk_indices
        return fla_gdr, prepare_chunk_indices, getattr(fla, "__version__", "unknown")
    except Exception as e:  # noqa: BLE001
        print(f"FLA unavailable: {e!r}")
        return None, None, None


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


VARIANT_ENV = {"cp_on": ("on", {}), "cp_off": ("off", {}),
               "head": ("off", {"FLASHGDN_EXPERIMENTAL_SM90": "3"}),
               "head_plain": ("off", {"FLASHGDN_EXPERIMENTAL_SM90": "3", "FLASHGDN_SM90_PINGPONG": "0",
                                      "FLASHGDN_SOLVE_MMA": "0"}),
               "solve": ("off", {"FLASHGDN_EXPERIMENTAL_SM90": "4"}),
               "cp_portable": ("auto", {"FLASHGDN_SM90_CP": "0"}),
               "solve_fp32": ("auto", {"FLASHGDN_SOLVE_MMA": "0"}),
               "prepare_per_head": ("auto", {"FLASHGDN_PREPARE_GROUP": "0"}),
               "solve_diag8": ("auto", {"FLASHGDN_SOLVE_DIAG8": "1"}),
               "cp_copies": ("auto", {"FLASHGDN_CP_DIRECT": "0"}),
               "portable": ("auto", {"FLASHGDN_EXPERIMENTAL_SM90": "0"})}


def time_variant(timer, var, q, k, v, g, beta, h0, cu, cu_cpu):
    """Graph-replay median of one FlashGDN variant; the environment switches are set only meanwhile
    (the library reads them on every call, also while a graph is captured)."""
    cp, env = VARIANT_ENV[var]
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return timer.graph(lambda: flashgdn.chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu, cu_seqlens_cpu=cu_cpu,
            cp=cp))
    finally:
        for key, val in saved.items():
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rows", default="",
                    help="only rows whose name contains one of these comma-separated substrings (e.g. '2/8 ,4/16 ')")
    ap.add_argument("--cp", default="auto", choices=["auto", "on", "off"],
                    help="FlashGDN's cp argument")
    ap.add_argument("--variants", default="",
                    help="extra FlashGDN variants timed per row (graph replay) in the same run, comma-separated: "
                         "cp_on, cp_off, head (the sm_90a head form forced), head_plain (forced, without the ping-pong schedule and "
                         "the tensor-core solve levels), solve (its variant without prepare), cp_portable (CP on the "
                         "portable passes), solve_fp32 (prepare's solve levels in fp32), prepare_per_head (prepare per (chunk, "
                         "value head), not per head group), solve_diag8 (the solve's diagonal blocks from 8 x 8 ones), cp_copies "
                         "(the CP scan with the copies the warm-up makes unnecessary), portable (the portable path "
                         "where the head form would be taken); switches set only around each variant's calls")
    ap.add_argument("--tag", default=os.environ.get("FLASHGDN_BENCH_TAG", ""),
                    help="suffix of the output file names (e.g. the build variant)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    prop = torch.cuda.get_device_properties(0)
    gpu = prop.name
    bw, rate = measure_ceilings()
    fla_gdr, prep_ci, fla_ver = load_fla()
    published = {(r["hqk"], r["hv"], r["seqlens"]): r
                 for r in json.load(open(ROOT / "benchmarks" / "published_h200_fwd.json"))["rows"]}
    # FLASHGDN_COMMIT first: the GPU box gets a copy of the working tree whose .git may be stale.
    commit = os.environ.get("FLASHGDN_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                             text=True).strip()
        except Exception:  # noqa: BLE001
            commit = "unknown"
    import triton
    meta = {
        "gpu": gpu, "sm_count": prop.multi_processor_count, "commit": commit,
        "date": datetime.date.today().isoformat(), "torch": torch.__version__, "triton": triton.__version__,
        "fla": fla_ver, "flashgdn": flashgdn.__version__, "cuda": torch.version.cuda,
        "copy_bandwidth_GBps": bw / 1e9, "bf16_matmul_TFLOPs": rate / 1e12,
        "timing": f"median of {args.reps} runs, L2 flushed before each (512 MiB write); CUDA events; "
                  "'graph' = replay of a captured single call, 'eager' = direct call",
        "inputs": "packed varlen, int32 cu_seqlens (+ its int64 host copy as cu_seqlens_cpu for both libraries), "
                  "q/k l2-normalised bf16, v bf16, g = logsigmoid(randn)/16 fp32, "
                  "beta = sigmoid(randn) fp32, fp32 h0, output_final_state=True, K = V = 128",
        "published": "flashqla_h200_ms / flashinfer_h200_ms from FlashQLA's H200 table (fla 0.5.1 there); "
                     "their speedups are relative to the FLA time in that same table",
    }
    meta["flashgdn_cp"] = args.cp
    meta["variants"] = args.variants
    timer = Timer(args.reps)
    rows = []
    print(f"GPU {gpu} ({prop.multi_processor_count} SMs), commit {commit}; copy {bw / 1e9:.0f} GB/s, "
          f"bf16 matmul {rate / 1e12:.0f} TFLOP/s; FLA {fla_ver}")
    hdr = (f"{'row':<22} {'floor':>7} {'gdn(g)':>8} {'gdn(e)':>8} {'fla(g)':>8} {'fla(e)':>8} {'x FLA':>6} "
           f"{'QLA h200':>8} {'QLA xFLA':>8} {'FI h200':>8} {'FI xFLA':>7} {'err':>8}")
    print(hdr)
    for hqk, hv in HEADS:
        for sl in SEQLENS:
            name = f"{hqk}/{hv} {sl}"
            if args.rows and not any(x in name for x in args.rows.split(",") if x):
                continue
            lens = parse_seqlens(sl)
            q, k, v, g, beta, h0, cu = make_inputs(hqk, hv, lens)
            fl, flops, nbytes = floor_ms(hqk, hv, lens, bw, rate)
            row = {"name": name, "hqk": hqk, "hv": hv, "seqlens": sl, "floor_ms": fl, "flops": flops,
                   "bytes": nbytes}

            # Both libraries get the host copy of cu_seqlens, as engines pass it (FLA: cu_seqlens_cpu and
            # chunk_indices; FlashGDN plans its V slice and context parallelism from it).
            cu_cpu = cu.long().cpu()

            def gdn():
                return flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                       cu_seqlens=cu, cu_seqlens_cpu=cu_cpu, cp=args.cp)
            if "first_call_ms" not in meta:
                # Issue 5: the process's first FlashGDN call (module loading, attributes, tensor-map entry point)
                # against a warm eager call of the same row; CUDA events around each, L2 flushed before both.
                meta["first_call_ms"] = timer.once(gdn)
                meta["first_call_row"] = name
                meta["warm_call_ms"] = timer.eager(gdn)
                meta["first_over_warm"] = meta["first_call_ms"] / meta["warm_call_ms"]
                print(f"first call {meta['first_call_ms']:.3f} ms, warm {meta['warm_call_ms']:.3f} ms "
                      f"({meta['first_over_warm']:.2f}x) on {name}")
            row["flashgdn_graph_ms"] = timer.graph(gdn)
            row["flashgdn_eager_ms"] = timer.eager(gdn)
            row["flashgdn_ms"] = row["flashgdn_graph_ms"]
            o_gdn, ht_gdn = gdn()
            for var in [x for x in args.variants.split(",") if x]:
                row[f"flashgdn_{var}_graph_ms"] = time_variant(timer, var, q, k, v, g, beta, h0, cu, cu_cpu)
            if fla_gdr is not None:
                cu64 = cu.long()
                ci = prep_ci(cu64, 64)

                def fla():
                    return fla_gdr(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu64,
                                   cu_seqlens_cpu=cu_cpu, chunk_indices=ci)
                try:
                    row["fla_graph_ms"] = timer.graph(fla)
                    row["fla_ms"] = row["fla_graph_ms"]
                    row["fla_timing"] = "graph"
                except Exception as e:  # noqa: BLE001
                    row["fla_graph_error"] = repr(e)[:200]
                    row["fla_timing"] = "eager"
                row["fla_eager_ms"] = timer.eager(fla)
                row.setdefault("fla_ms", row["fla_eager_ms"])
                o_fla, ht_fla = fla()
                row["rel_l2_o_vs_fla"] = rel(o_gdn, o_fla)
                row["rel_l2_ht_vs_fla"] = rel(ht_gdn, ht_fla)
                row["speedup_vs_fla"] = row["fla_ms"] / row["flashgdn_ms"]
            pub = published.get((hqk, hv, sl))
            if pub:
                row["flashqla_h200_ms"] = pub["flashqla_ms"]
                row["flashinfer_h200_ms"] = pub["flashinfer_ms"]
                row["fla_h200_ms_published"] = pub["fla_ms"]
                row["flashqla_speedup_vs_fla_published"] = pub["fla_ms"] / pub["flashqla_ms"]
                row["flashinfer_speedup_vs_fla_published"] = pub["fla_ms"] / pub["flashinfer_ms"]
            rows.append(row)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "partial-fwd.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            f = lambda key, w=8, p=3: f"{row[key]:>{w}.{p}f}" if key in row else " " * (w - 3) + "n/a"  # noqa: E731
            print(f"{name:<22} {f('floor_ms', 7)} {f('flashgdn_graph_ms')} {f('flashgdn_eager_ms')} "
                  f"{f('fla_graph_ms')} {f('fla_eager_ms')} {f('speedup_vs_fla', 6, 2)} {f('flashqla_h200_ms')} "
                  f"{f('flashqla_speedup_vs_fla_published', 8, 2)} {f('flashinfer_h200_ms')} "
                  f"{f('flashinfer_speedup_vs_fla_published', 7, 2)} {row.get('rel_l2_o_vs_fla', float('nan')):>8.1e}"
                  + "".join(f" {var} {f(f'flashgdn_{var}_graph_ms')}" for var in args.variants.split(",") if var),
                  flush=True)
            del q, k, v, g, beta, h0, cu
            torch.cuda.empty_cache()
    fwd_table.summarize(meta, rows)
    if "geomean_speedup_vs_fla" in meta:
        print(f"geomean speedup vs FLA {meta['geomean_speedup_vs_fla']:.2f}x, min {meta['min_speedup_vs_fla']:.2f}x, "
              f"rows slower than FLA: {meta['rows_slower_than_fla']}")
    out = Path(args.out)
    stem = f"{gpu.replace(' ', '_')}-{meta['date']}-fwd" + (f"-{args.tag}" if args.tag else "")
    meta["variant"] = args.tag or "default"
    fwd_table.write(out, stem, meta, rows, [x for x in args.variants.split(",") if x])
    (out / "partial-fwd.json").unlink(missing_ok=True)
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
