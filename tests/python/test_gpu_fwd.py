"""The Python API on CUDA tensors: against the CPU (fp64 reference) path of the same API (forward and
autograd backward), CUDA-graph capture (also of a training step), torch.compile(fullgraph=True) of a GDN
layer, opcheck, strided views, state pool. Skipped without torch or a GPU."""
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: GPU tests skipped", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

import flashgdn  # noqa: E402

pytestmark = pytest.mark.gpu


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def inputs(lens, hqk=2, hv=6, d=128, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    T = sum(lens)
    # NOTE: keys of norm ~1 (as after l2norm): with |k|^2 ~ d the delta rule's (I - beta k k^T) has
    # eigenvalues ~ 1 - beta d and the recurrence itself overflows, GPU and reference alike.
    q = (torch.randn(1, T, hqk, d, device="cuda", generator=gen) * d ** -0.5).to(dtype)
    k = (torch.randn(1, T, hqk, d, device="cuda", generator=gen) * d ** -0.5).to(dtype)
    v = torch.randn(1, T, hv, d, device="cuda", generator=gen).to(dtype)
    g = F.logsigmoid(torch.randn(1, T, hv, device="cuda", generator=gen)) / 16
    beta = torch.sigmoid(torch.randn(1, T, hv, device="cuda", generator=gen))
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    h0 = torch.randn(len(lens), hv, d, d, device="cuda", generator=gen) * 0.2
    return q, k, v, g, beta, cu, h0


def cpu(*xs):
    return [x.cpu() if x is not None else None for x in xs]


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 5e-3)])
def test_matches_cpu_reference(dtype, tol):
    q, k, v, g, beta, cu, h0 = inputs([1, 63, 65, 200], dtype=dtype)
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    o_ref, ht_ref = flashgdn.chunk_gated_delta_rule(*cpu(q, k, v, g, beta), initial_state=h0.cpu(),
                                                    output_final_state=True, cu_seqlens=cu.cpu(),
                                                    use_qk_l2norm_in_kernel=True)
    assert o.dtype == dtype and ht.dtype == torch.float32
    assert rel(o, o_ref) <= tol and rel(ht, ht_ref) <= tol


def test_strided_views_of_fused_projection():
    T, hqk, hv, d = 150, 2, 4, 128
    qkv = (torch.randn(1, T, (2 * hqk + hv) * d + 64, device="cuda") * d ** -0.5).to(torch.bfloat16)
    q = qkv[..., : hqk * d].unflatten(-1, (hqk, d))
    k = qkv[..., hqk * d: 2 * hqk * d].unflatten(-1, (hqk, d))
    v = qkv[..., 2 * hqk * d: (2 * hqk + hv) * d].unflatten(-1, (hv, d))
    g = F.logsigmoid(torch.randn(1, T, hv, device="cuda")) / 16
    beta = torch.rand(1, T, hv, device="cuda")
    o, _ = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    o2, _ = flashgdn.chunk_gated_delta_rule(q.contiguous(), k.contiguous(), v.contiguous(), g, beta,
                                            use_qk_l2norm_in_kernel=True)
    assert torch.equal(o, o2)


def test_state_pool_in_place():
    q, k, v, g, beta, cu, _ = inputs([30, 70, 5])
    pool = torch.randn(5, 6, 128, 128, device="cuda") * 0.2
    pool0 = pool.clone()
    idx = torch.tensor([3, -1, 0], device="cuda", dtype=torch.int64)
    mask = torch.tensor([True, True, False], device="cuda")
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=pool, cu_seqlens=cu,
                                            state_indices=idx, has_initial_state=mask)
    assert ht is None
    pool_ref = pool0.cpu()
    o_ref, _ = flashgdn.chunk_gated_delta_rule(*cpu(q, k, v, g, beta), initial_state=pool_ref, cu_seqlens=cu.cpu(),
                                               state_indices=idx.cpu(), has_initial_state=mask.cpu())
    assert rel(o, o_ref) <= 1e-2
    assert rel(pool[3], pool_ref[3]) <= 1e-2 and rel(pool[0], pool_ref[0]) <= 1e-2
    for s in (1, 2, 4):
        assert torch.equal(pool[s], pool0[s])


def test_cuda_graph_capture_and_determinism():
    q, k, v, g, beta, cu, h0 = inputs([100, 3])

    def f():
        return flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                               cu_seqlens=cu)
    o1, ht1 = f()
    junk = torch.full((64 << 20,), 7, dtype=torch.uint8, device="cuda")  # dirty the caching allocator
    del junk
    o2, ht2 = f()
    assert torch.equal(o1, o2), f"o differs in {(o1 != o2).sum().item()} of {o1.numel()} elements"
    assert torch.equal(ht1, ht2), f"ht differs in {(ht1 != ht2).sum().item()} of {ht1.numel()} elements"
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(graph, stream=s):
        og, htg = f()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(og, o1) and torch.equal(htg, ht1)


def test_torch_compile_fullgraph_on_cuda():
    q, k, v, g, beta, cu, h0 = inputs([64, 10])

    def f(q, k, v, g, beta, h0):
        o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
        return o.float().sum(-1), ht

    ref = f(q, k, v, g, beta, h0)
    out = torch.compile(f, fullgraph=True)(q, k, v, g, beta, h0)
    assert torch.allclose(out[0], ref[0], rtol=1e-3, atol=1e-3) and torch.equal(out[1], ref[1])


def test_device_mismatch_is_a_clear_error():
    q, k, v, g, beta, cu, h0 = inputs([8])
    with pytest.raises(ValueError, match="argument 'cu_seqlens' is on cpu"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu.cpu())


def test_check_mode_reports_bad_cu_seqlens(monkeypatch):
    q, k, v, g, beta, cu, h0 = inputs([8, 8])
    bad = torch.tensor([0, 9, 4], dtype=torch.int32, device="cuda")
    monkeypatch.setenv("FLASHGDN_CHECK", "1")
    with pytest.raises(flashgdn.FlashGDNError, match="cu_seqlens is not non-decreasing"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=bad)


@pytest.mark.parametrize("lens,hqk,hv", [([100, 3], 2, 6), ([1, 63, 65, 200], 2, 6), ([103], 2, 6)])
def test_every_output_element_is_written(lens, hqk, hv):
    """Poisoned (NaN) output and final state through the raw launcher: nothing may stay NaN."""
    from flashgdn.ops import _launch_fwd
    q, k, v, g, beta, cu, h0 = inputs(lens, hqk, hv)
    for fill in (float("nan"), 3.0):
        o = torch.full(v.shape, fill, dtype=q.dtype, device="cuda")
        ht = torch.full(h0.shape, fill, dtype=torch.float32, device="cuda")
        _launch_fwd(q, k, v, g, beta, o, 128 ** -0.5, h0, ht, cu, None, None, False, False, 0)
        torch.cuda.synchronize()
        assert not torch.isnan(o).any(), f"{torch.isnan(o).sum().item()} output elements not written"
        assert not torch.isnan(ht).any()
        if fill == 3.0:
            assert torch.equal(o, o_nan) and torch.equal(ht, ht_nan), "result depends on output contents"
        o_nan, ht_nan = o.clone(), ht.clone()


def _grads(dtype, device, q, k, v, g, beta, h0, cu, do, dht, l2norm):
    leaves = [x.detach().to(device).requires_grad_(True) for x in (q, k, v, g, beta, h0)]
    o, ht = flashgdn.chunk_gated_delta_rule(*leaves[:5], initial_state=leaves[5], output_final_state=True,
                                            cu_seqlens=cu.to(device), use_qk_l2norm_in_kernel=l2norm)
    (o.double() * do.to(device).double()).sum().add((ht.double() * dht.to(device).double()).sum()).backward()
    return [x.grad for x in leaves]


@pytest.mark.parametrize("dtype,tol,tol_gb", [(torch.bfloat16, 1.5e-2, 2e-2), (torch.float16, 7.5e-3, 1e-2)])
@pytest.mark.parametrize("l2norm", [False, True])
def test_backward_matches_cpu_reference(dtype, tol, tol_gb, l2norm):
    """Autograd on CUDA (flashgdn_chunk_bwd) against autograd on the CPU (fp64 reverse mode), GVA 3."""
    q, k, v, g, beta, cu, h0 = inputs([1, 63, 65, 200], hqk=2, hv=6, dtype=dtype, seed=3)
    gen = torch.Generator(device="cuda").manual_seed(9)
    do = torch.randn(v.shape, device="cuda", generator=gen).to(dtype)
    dht = torch.randn(h0.shape, device="cuda", generator=gen) * 0.1
    gpu = _grads(dtype, "cuda", q, k, v, g, beta, h0, cu, do, dht, l2norm)
    ref = _grads(dtype, "cpu", q, k, v, g, beta, h0, cu, do, dht, l2norm)
    for name, a, b, t in zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), gpu, ref, (tol,) * 3 + (tol_gb,) * 2 + (tol,)):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert rel(a, b) <= t, f"{name}: rel L2 {rel(a, b):.2e} > {t}"


def test_backward_deterministic_and_graph_capturable():
    q, k, v, g, beta, cu, h0 = inputs([100, 3, 130])
    gen = torch.Generator(device="cuda").manual_seed(5)
    do = torch.randn(v.shape, device="cuda", generator=gen).to(q.dtype)

    def f():
        return flashgdn.ops.chunk_bwd(q, k, v, g, beta, do, initial_state=h0, cu_seqlens=cu)
    a = f()
    junk = torch.full((64 << 20,), 7, dtype=torch.uint8, device="cuda")  # dirty the caching allocator
    del junk
    b = f()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(graph, stream=s):
        c = f()
    graph.replay()
    torch.cuda.synchronize()
    for x, y in zip(a, c):
        assert torch.equal(x, y)


def test_opcheck_on_cuda():
    q, k, v, g, beta, cu, h0 = inputs([70, 5], hqk=1, hv=2, d=64)
    args = (q, k, v, g, beta, 0.125, h0, True, cu, None, False, False, 0, None)
    torch.library.opcheck(torch.ops.flashgdn.chunk_fwd.default, args)
    do = torch.randn(v.shape, device="cuda").to(q.dtype)
    bargs = (q, k, v, g, beta, 0.125, h0, cu, do, None, False, False)
    torch.library.opcheck(torch.ops.flashgdn.chunk_bwd.default, bargs)


class _Layer(torch.nn.Module):
    """A tiny GDN layer: projections, g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b), the op."""

    def __init__(self, hidden=64, hqk=1, hv=2, d=64):
        super().__init__()
        self.hqk, self.hv, self.d = hqk, hv, d
        self.qkv = torch.nn.Linear(hidden, (2 * hqk + hv) * d, bias=False)
        self.a = torch.nn.Linear(hidden, hv)
        self.b = torch.nn.Linear(hidden, hv)
        self.A_log = torch.nn.Parameter(torch.zeros(hv))
        self.dt_bias = torch.nn.Parameter(torch.ones(hv))

    def forward(self, x):
        hqk, hv, d = self.hqk, self.hv, self.d
        q, k, v = self.qkv(x).split([hqk * d, hqk * d, hv * d], -1)
        q, k, v = (t.unflatten(-1, (-1, d)).to(torch.bfloat16) for t in (q, k, v))
        g = -self.A_log.exp() * torch.nn.functional.softplus(self.a(x).float() + self.dt_bias)
        beta = self.b(x).float().sigmoid()
        o, _ = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
        return o.float().square().mean()


def test_torch_compile_fullgraph_layer_forward_and_backward_on_cuda():
    torch.manual_seed(0)
    layer = _Layer().cuda()
    x = torch.randn(2, 100, 64, device="cuda")
    eager = layer(x)
    eager.backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    compiled = torch.compile(layer, fullgraph=True)(x)
    compiled.backward()
    assert torch.allclose(eager, compiled, rtol=1e-3, atol=1e-5)
    for a, b in zip(grads, [p.grad for p in layer.parameters()]):
        assert rel(b, a) <= 2e-2


def test_training_step_in_a_cuda_graph():
    torch.manual_seed(1)
    layer = _Layer().cuda()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, 100, 64, device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        loss = layer(x)
        loss.backward()
        opt.step()
        return loss
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up (allocator, lazy init) outside the graph
            step()
    torch.cuda.current_stream().wait_stream(s)
    before = [p.detach().clone() for p in layer.parameters()]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
    for p, b in zip(layer.parameters(), before):  # capture does not run the step: restore, then replay
        p.data.copy_(b)
    graph.replay()
    torch.cuda.synchronize()
    after_graph = [p.detach().clone() for p in layer.parameters()]
    for p, b in zip(layer.parameters(), before):
        p.data.copy_(b)
    step()
    torch.cuda.synchronize()
    for p, a in zip(layer.parameters(), after_graph):  # cuBLAS may pick other kernels under capture
        assert torch.allclose(p.detach(), a, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(loss).item()


def test_check_mode_reports_positive_g(monkeypatch):
    q, k, v, g, beta, cu, h0 = inputs([8, 8])
    g = g.clone()
    g[0, 5, 1] = 0.25
    monkeypatch.setenv("FLASHGDN_CHECK", "1")
    with pytest.raises(flashgdn.FlashGDNError, match=r"g\[0, 5, 1\] = 0.25; the log decay must be finite and <= 0"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu)


def test_cu_seqlens_cpu_plans_only():
    """The host copy of cu_seqlens steers only the plan (V slice, context parallelism), never the results;
    a wrong copy is refused."""
    q, k, v, g, beta, cu, h0 = inputs([1000, 64, 1, 0, 200])
    cu_cpu = cu.long().cpu()
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            cu_seqlens=cu, cu_seqlens_cpu=cu_cpu)
    o_ref, ht_ref = flashgdn.chunk_gated_delta_rule(*cpu(q, k, v, g, beta), initial_state=h0.cpu(),
                                                    output_final_state=True, cu_seqlens=cu.cpu())
    assert rel(o, o_ref) <= 1e-2 and rel(ht, ht_ref) <= 1e-2
    bad = cu_cpu.clone()
    bad[2] = bad[1] - 1
    with pytest.raises(flashgdn.FlashGDNError, match=r"argument 'cu_seqlens_cpu'\[2\]"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, cu_seqlens_cpu=bad)


def test_cp_bad_value_is_refused():
    q, k, v, g, beta, cu, h0 = inputs([300])
    with pytest.raises(ValueError, match="cp"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, cp="sometimes")


def test_cp_on_matches_reference():
    """The context-parallel passes (segments of one or two chunks at this size)."""
    q, k, v, g, beta, cu, h0 = inputs([300, 0, 1, 129])
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            cu_seqlens=cu, use_qk_l2norm_in_kernel=True, cp="on")
    o_ref, ht_ref = flashgdn.chunk_gated_delta_rule(*cpu(q, k, v, g, beta), initial_state=h0.cpu(),
                                                    output_final_state=True, cu_seqlens=cu.cpu(),
                                                    use_qk_l2norm_in_kernel=True)
    assert rel(o, o_ref) <= 1e-2 and rel(ht, ht_ref) <= 1e-2


def test_init_then_call():
    flashgdn.init()
    flashgdn.init(torch.cuda.current_device())
    with pytest.raises(flashgdn.FlashGDNError, match="argument 'device'"):
        flashgdn.init(torch.cuda.device_count())
    test_matches_cpu_reference(torch.bfloat16, 1e-2)
