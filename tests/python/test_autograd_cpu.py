"""Autograd, the low-level chunk_fwd/chunk_bwd API, opcheck and torch.compile of a GDN layer, on CPU
tensors (the fp64 reference backs both directions). Skipped without torch."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flashgdn  # noqa: E402
from flashgdn import ops  # noqa: E402
from flashgdn.reference import reference_bwd  # noqa: E402


def inputs(lens=(5, 3), hqk=1, hv=2, d=4, dtype=torch.float64, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lens)
    q = torch.randn(1, T, hqk, d, generator=gen, dtype=dtype) * d ** -0.5
    k = torch.randn(1, T, hqk, d, generator=gen, dtype=dtype) * d ** -0.5
    v = torch.randn(1, T, hv, d, generator=gen, dtype=dtype)
    g = -torch.rand(1, T, hv, generator=gen, dtype=torch.float64) * 0.5
    beta = torch.rand(1, T, hv, generator=gen, dtype=dtype)
    h0 = torch.randn(len(lens), hv, d, d, generator=gen, dtype=torch.float64) * 0.5
    cu = torch.tensor([0] + list(np.cumsum(lens)), dtype=torch.int64)
    ts = [q, k, v, g, beta, h0]
    if requires_grad:
        for t in ts:
            t.requires_grad_(True)
    return ts, cu


@pytest.mark.parametrize("l2norm", [False, True])
def test_backward_matches_reference_and_gradcheck(l2norm):
    (q, k, v, g, beta, h0), cu = inputs(hqk=1, hv=3)
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            cu_seqlens=cu, use_qk_l2norm_in_kernel=l2norm)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    (o * do).sum().add((ht * dht).sum()).backward()
    ref = reference_bwd(*(t.detach().numpy() for t in (q, k, v, g, beta)), do.numpy(), dht.numpy(),
                        initial_state=h0.detach().numpy(), cu_seqlens=cu.numpy(), use_qk_l2norm_in_kernel=l2norm)
    for name, t in (("dq", q), ("dk", k), ("dv", v), ("dg", g), ("dbeta", beta), ("dh0", h0)):
        np.testing.assert_allclose(t.grad.numpy(), ref[name], rtol=1e-10, atol=1e-12, err_msg=name)

    def f(q, k, v, g, beta, h0):
        o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                cu_seqlens=cu, use_qk_l2norm_in_kernel=l2norm)
        return o, ht
    assert torch.autograd.gradcheck(f, (q, k, v, g, beta, h0), eps=1e-6, atol=1e-6)


def test_low_level_api_and_no_final_state_gradient():
    (q, k, v, g, beta, h0), cu = inputs(requires_grad=False)
    o, ht = ops.chunk_fwd(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    do = torch.randn_like(o)
    dq, dk, dv, dg, dbeta, dh0 = ops.chunk_bwd(q, k, v, g, beta, do, None, initial_state=h0, cu_seqlens=cu)
    ref = reference_bwd(q.numpy(), k.numpy(), v.numpy(), g.numpy(), beta.numpy(), do.numpy(), None,
                        initial_state=h0.numpy(), cu_seqlens=cu.numpy())
    np.testing.assert_allclose(dq.numpy(), ref["dq"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dh0.numpy(), ref["dh0"], rtol=1e-12, atol=1e-14)
    assert ops.chunk_bwd(q, k, v, g, beta, do, cu_seqlens=cu)[5] is None


def test_has_initial_state_mask_gives_zero_gradient_to_masked_rows():
    (q, k, v, g, beta, h0), cu = inputs()
    mask = torch.tensor([True, False])
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            cu_seqlens=cu, has_initial_state=mask)
    (o.sum() + ht.sum()).backward()
    assert torch.count_nonzero(h0.grad[1]) == 0 and torch.count_nonzero(h0.grad[0]) > 0


def test_opcheck():
    (q, k, v, g, beta, h0), cu = inputs(requires_grad=False)
    args = (q, k, v, g, beta, 0.5, h0, True, cu, None, False, False, 0)
    torch.library.opcheck(torch.ops.flashgdn.chunk_fwd.default, args)
    o, _ = ops.chunk_fwd(q, k, v, g, beta, initial_state=h0, cu_seqlens=cu)
    bargs = (q, k, v, g, beta, 0.5, h0, cu, torch.randn_like(o), None, False, False)
    torch.library.opcheck(torch.ops.flashgdn.chunk_bwd.default, bargs)


def test_compiled_gdn_layer_forward_and_backward():
    torch.manual_seed(0)
    T, hidden, hqk, hv, d = 12, 16, 1, 2, 4

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(hidden, (2 * hqk + hv) * d, dtype=torch.float64)
            self.a = torch.nn.Linear(hidden, hv, dtype=torch.float64)
            self.b = torch.nn.Linear(hidden, hv, dtype=torch.float64)
            self.A_log = torch.nn.Parameter(torch.zeros(hv, dtype=torch.float64))
            self.dt_bias = torch.nn.Parameter(torch.ones(hv, dtype=torch.float64))

        def forward(self, x):
            q, k, v = self.qkv(x).split([hqk * d, hqk * d, hv * d], -1)
            q, k, v = q.unflatten(-1, (hqk, d)), k.unflatten(-1, (hqk, d)), v.unflatten(-1, (hv, d))
            g = -self.A_log.exp() * torch.nn.functional.softplus(self.a(x) + self.dt_bias)
            beta = self.b(x).sigmoid()
            o, _ = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
            return o.square().mean()

    layer = Layer()
    x = torch.randn(1, T, hidden, dtype=torch.float64)
    eager = layer(x)
    eager.backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    compiled.backward()
    assert torch.allclose(eager, compiled)
    for a, b in zip(grads, [p.grad for p in layer.parameters()]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_eager_autograd_path_equals_the_custom_op_path():
    # Eager calls on plain tensors skip the custom op's dispatch (ops._ChunkFwdFunction); the op with its
    # registered autograd (what torch.compile records) must give bitwise the same outputs and gradients.
    (q, k, v, g, beta, h0), cu = inputs(hqk=1, hv=3)
    args = (0.5, h0, True, cu, None, True, False, 0, None)
    o1, ht1 = ops.chunk_fwd_autograd(q, k, v, g, beta, *args)
    assert type(o1.grad_fn).__name__ == "_ChunkFwdFunctionBackward"
    o2, ht2 = ops.chunk_fwd_op(q, k, v, g, beta, *args)
    assert type(o2.grad_fn).__name__ != "_ChunkFwdFunctionBackward"
    do, dht = torch.randn_like(o1), torch.randn_like(ht1)
    g1 = torch.autograd.grad([o1, ht1], [q, k, v, g, beta, h0], [do, dht])
    g2 = torch.autograd.grad([o2, ht2], [q, k, v, g, beta, h0], [do, dht])
    assert torch.equal(o1, o2) and torch.equal(ht1, ht2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    # No input requires grad (or grad mode off): the implementation alone, no autograd node.
    with torch.no_grad():
        o3, _ = ops.chunk_fwd_autograd(q, k, v, g, beta, *args)
    assert o3.grad_fn is None and torch.equal(o3, o1.detach())
