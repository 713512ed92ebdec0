"""The torch API on CPU tensors (runs the fp64 reference): FLA-compatible signature, pool semantics,
errors, and torch.compile tracing of the custom ops. Skipped without torch."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flashgdn  # noqa: E402
from naive import naive_fwd  # noqa: E402


def inputs(lens, hqk=2, hv=6, kd=16, vd=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lens)
    q = torch.randn(1, T, hqk, kd, generator=gen).to(dtype)
    k = torch.randn(1, T, hqk, kd, generator=gen).to(dtype)
    v = torch.randn(1, T, hv, vd, generator=gen).to(dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, hv, generator=gen)) / 16
    beta = torch.rand(1, T, hv, generator=gen)
    cu = torch.tensor([0] + list(np.cumsum(lens)), dtype=torch.int32)
    h0 = torch.randn(len(lens), hv, kd, vd, generator=gen)
    return q, k, v, g, beta, cu, h0


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_cpu_matches_naive_gva3_l2norm():
    q, k, v, g, beta, cu, h0 = inputs([1, 63, 65])
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    o2, ht2 = naive_fwd(q.numpy(), k.numpy(), v.numpy(), g.numpy(), beta.numpy(), 16 ** -0.5, h0.numpy(),
                        cu.numpy(), True)
    assert o.dtype == q.dtype and ht.dtype == torch.float32
    assert rel(o, o2) < 1e-6 and rel(ht, ht2) < 1e-6


def test_cpu_pool_in_place_and_returns_none():
    q, k, v, g, beta, cu, _ = inputs([5, 9])
    pool = torch.randn(3, 6, 16, 16)
    pool0 = pool.clone()
    o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=pool, cu_seqlens=cu,
                                            state_indices=torch.tensor([2, -1]))
    assert ht is None
    _, ht2 = naive_fwd(q.numpy(), k.numpy(), v.numpy(), g.numpy(), beta.numpy(), 0.25,
                       np.stack([pool0[2].numpy(), np.zeros((6, 16, 16))]), cu.numpy())
    assert rel(pool[2], ht2[0]) < 1e-6
    assert torch.equal(pool[0], pool0[0]) and torch.equal(pool[1], pool0[1])


def test_errors_are_exceptions_naming_the_argument():
    q, k, v, g, beta, cu, h0 = inputs([4, 4])
    with pytest.raises(flashgdn.FlashGDNError, match="argument 'beta' has shape"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta[:, :3], cu_seqlens=cu)
    with pytest.raises(ValueError, match="argument 'cp'"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, cp="sometimes")
    with pytest.raises(ValueError, match="'output_final_state' must be False with 'state_indices'"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                        cu_seqlens=cu, state_indices=torch.tensor([0, 1]))


def test_torch_compile_fullgraph_traces_the_op():
    q, k, v, g, beta, cu, h0 = inputs([8, 8])

    def f(q, k, v, g, beta, h0):
        o, ht = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                cu_seqlens=cu)
        return o * 2, ht

    eager = f(q, k, v, g, beta, h0)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, g, beta, h0)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])


def test_fla_compatibility_keywords():
    q, k, v, g, beta, cu, h0 = inputs([7, 9])
    logits = torch.randn_like(beta)
    o1, _ = flashgdn.chunk_gated_delta_rule(q, k, v, g, logits.sigmoid(), cu_seqlens=cu)
    o2, _ = flashgdn.chunk_gated_delta_rule(q, k, v, g, logits, cu_seqlens=cu, use_beta_sigmoid_in_kernel=True,
                                            cu_seqlens_cpu=cu.cpu(), chunk_indices=torch.zeros(3, 2))
    assert torch.allclose(o1, o2)
    o3, _ = flashgdn.chunk_gated_delta_rule(q, k, v, g, 2 * logits.sigmoid(), cu_seqlens=cu)
    o4, _ = flashgdn.chunk_gated_delta_rule(q, k, v, g, logits, cu_seqlens=cu, use_beta_sigmoid_in_kernel=True,
                                            allow_neg_eigval=True)
    assert torch.allclose(o3, o4)
    hv = h0.transpose(-1, -2).contiguous()
    _, ht_a = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=hv, output_final_state=True,
                                              cu_seqlens=cu, state_v_first=True)
    _, ht_b = flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=hv, output_final_state=True,
                                              cu_seqlens=cu, transpose_state_layout=True)
    assert torch.equal(ht_a, ht_b)
    with pytest.raises(ValueError, match="'head_first' is not supported"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, head_first=True)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, bogus=1)
    with pytest.raises(NotImplementedError, match="cp_context"):
        flashgdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, cp_context=object())


def test_tensors_on_another_device_are_rejected_before_any_access():
    # (through the launcher: torch's dispatcher sends mixed cpu/meta calls to the fake kernel)
    from flashgdn.ops import _launch_fwd
    q, k, v, g, beta, cu, h0 = inputs([4, 4])
    o = torch.empty_like(v)
    with pytest.raises(ValueError, match="argument 'g' is on meta, expected cpu"):
        _launch_fwd(q, k, v, g.to("meta"), beta, o, 0.25, None, None, cu, None, None, False, False, 0)
