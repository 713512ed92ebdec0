// Host launchers of the portable backward's stand-alone kernels (bwd_portable.hpp).
#include "kernels/portable/bwd/bwd_portable.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "api/error.hpp"
#include "api/tensor.hpp"
#include "kernels/portable/bwd/qk_grads.cuh"
#include "kernels/portable/fwd/fwd_portable.hpp"
#include "kernels/portable/fwd/plan.hpp"

namespace flashgdn::portable {

flashgdn_status_t launch_qk_grads(const QkGradArgs& g, int K, flashgdn_dtype_t dtype, cudaStream_t stream) {
  const int64_t warps = 2 * static_cast<int64_t>(g.B) * g.T * g.Hqk;
  if (warps == 0) return FLASHGDN_SUCCESS;
  const int64_t blocks = (warps * 32 + kQkGradThreads - 1) / kQkGradThreads;
  if (blocks > 0x7fffffff) return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn backward: too many tokens for one grid");
  const dim3 grid(static_cast<unsigned>(blocks));
  const bool bf16 = dtype == FLASHGDN_DTYPE_BFLOAT16;
  if (K == 128) {
    if (bf16) qk_grads_kernel<__nv_bfloat16, 128><<<grid, kQkGradThreads, 0, stream>>>(g);
    else qk_grads_kernel<__half, 128><<<grid, kQkGradThreads, 0, stream>>>(g);
  } else if (K == 64) {
    if (bf16) qk_grads_kernel<__nv_bfloat16, 64><<<grid, kQkGradThreads, 0, stream>>>(g);
    else qk_grads_kernel<__half, 64><<<grid, kQkGradThreads, 0, stream>>>(g);
  } else {
    return fail(FLASHGDN_ERROR_INTERNAL, "flashgdn backward: no q/k gradient kernel for K = %d", K);
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? FLASHGDN_SUCCESS
                          : fail(FLASHGDN_ERROR_CUDA, "flashgdn backward: q/k gradient kernel launch: %s",
                                 cudaGetErrorString(e));
}

size_t bwd_workspace_bytes(const Problem& pr) { return bwd_layout(pr, 1).total; }  // CP off: SMs do not matter

flashgdn_status_t launch_bwd(const Problem& pr_in, const flashgdn_chunk_bwd_params_t& p, void* workspace,
                             cudaStream_t stream) {
  // The recompute is the forward without final state, pool or mask, context parallelism off.
  Problem pr = pr_in;
  pr.cp_mode = FLASHGDN_CP_OFF;
  pr.has_ht = false;
  pr.pool = false;
  pr.has_mask = false;
  if (pr.N == 0) return FLASHGDN_SUCCESS;
  const BwdLayout l = bwd_layout(pr, 1);
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  flashgdn_chunk_fwd_params_t fp;
  flashgdn_chunk_fwd_params_init(&fp);
  fp.q = p.q;
  fp.k = p.k;
  fp.v = p.v;
  fp.g = p.g;
  fp.beta = p.beta;
  fp.initial_state = p.initial_state;
  fp.cu_seqlens = p.cu_seqlens;
  fp.scale = p.scale;
  fp.use_qk_l2norm = p.use_qk_l2norm;
  fp.state_v_first = p.state_v_first;
  fp.cp_mode = FLASHGDN_CP_OFF;

  BwdArgs bw{};
  bw.d_o = p.d_o.data;
  strides3(p.d_o, bw.do_s);
  bw.dv = p.dv.data;
  strides3(p.dv, bw.dv_s);
  bw.dht = pr_in.has_ht ? static_cast<const float*>(p.d_final_state.data) : nullptr;
  bw.dht_row_stride = pr_in.has_ht ? p.d_final_state.stride[0] : 0;
  bw.dh0 = pr.has_h0 ? static_cast<float*>(p.d_initial_state.data) : nullptr;
  bw.dh0_row_stride = pr.has_h0 ? p.d_initial_state.stride[0] : 0;
  bw.ab = ws + l.ab;
  bw.dstates = ws + l.dstates;
  bw.at = ws + l.at;
  // Hqk = Hv without l2norm: dq̂, dk̂ are dq, dk (stage 3 writes them, stage 4 is skipped).
  const bool direct = pr.group == 1 && !pr.l2norm;
  if (direct) {
    bw.dqh = p.dq.data;
    bw.dkh = p.dk.data;
    strides3(p.dq, bw.dqh_s);
    strides3(p.dk, bw.dkh_s);
  } else {
    bw.dqh = ws + l.dqh;
    bw.dkh = ws + l.dkh;
    const int64_t ws_s[3] = {pr.T * pr.Hv * pr.K, pr.Hv * pr.K, pr.K};
    for (int i = 0; i < 3; ++i) bw.dqh_s[i] = bw.dkh_s[i] = ws_s[i];
  }
  bw.dg = static_cast<float*>(p.dg.data);
  strides3(p.dg, bw.dg_s);
  bw.dbeta = p.dbeta.data;
  strides3(p.dbeta, bw.dbeta_s);
  FLASHGDN_TRY(launch_bwd_stages123(pr, fp, ws, ws + l.h_states, bw, stream));
  if (direct) return FLASHGDN_SUCCESS;

  QkGradArgs g{};
  g.dqh = bw.dqh;
  g.dkh = bw.dkh;
  g.q = p.q.data;
  g.k = p.k.data;
  strides3(p.q, g.q_s);
  strides3(p.k, g.k_s);
  g.dq = p.dq.data;
  g.dk = p.dk.data;
  strides3(p.dq, g.dq_s);
  strides3(p.dk, g.dk_s);
  g.B = static_cast<int>(pr.B);
  g.T = static_cast<int>(pr.T);
  g.Hqk = static_cast<int>(pr.Hqk);
  g.Hv = static_cast<int>(pr.Hv);
  g.group = static_cast<int>(pr.group);
  g.l2norm = pr.l2norm;
  return launch_qk_grads(g, static_cast<int>(pr.K), pr.io_dtype, stream);
}

}  // namespace flashgdn::portable
