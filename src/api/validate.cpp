// Host-side validation of every shape, dtype, stride and alignment before anything is launched.
// Each failure names the argument; tests/cpp/test_validation.cpp asserts the message of each kind.
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "api/dispatch.hpp"
#include "api/error.hpp"
#include "api/problem.hpp"
#include "api/tensor.hpp"

namespace flashgdn {
namespace {

bool is_float(int32_t d) {
  return d == FLASHGDN_DTYPE_FLOAT32 || d == FLASHGDN_DTYPE_FLOAT16 || d == FLASHGDN_DTYPE_BFLOAT16 ||
         d == FLASHGDN_DTYPE_FLOAT64;
}

std::string dims_str(const flashgdn_tensor_t& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim && i < FLASHGDN_MAX_DIMS; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[i]);
  }
  return s + "]";
}

class Checker {
 public:
  Checker(const char* fn, Target target) : fn_(fn), target_(target) {}

  bool gpu() const { return target_ == Target::kGpu; }

  // Structural checks common to every tensor: rank, non-negative shape and strides, dtype known.
  flashgdn_status_t basic(const flashgdn_tensor_t& t, const char* name, int ndim, const char* layout) {
    if (t.data == nullptr && t.ndim != ndim) return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' is required (data is NULL)", fn_, name);
    if (t.ndim != ndim)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' must have %d dimensions %s, got %d", fn_, name,
                  ndim, layout, t.ndim);
    for (int i = 0; i < ndim; ++i) {
      if (t.shape[i] < 0)
        return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has negative size %lld in dimension %d", fn_,
                    name, (long long)t.shape[i], i);
      if (t.stride[i] < 0)
        return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                    "%s: argument '%s' has negative stride %lld in dimension %d (negative strides are not supported)",
                    fn_, name, (long long)t.stride[i], i);
    }
    if (t.data == nullptr) {  // allowed only for a tensor with no elements
      int64_t numel = 1;
      for (int i = 0; i < ndim; ++i) numel *= t.shape[i];
      if (numel != 0)
        return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' is required (data is NULL)", fn_, name);
    }
    if (dtype_size(t.dtype) == 0)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has unknown dtype code %d", fn_, name, t.dtype);
    return FLASHGDN_SUCCESS;
  }

  flashgdn_status_t dtype_in(const flashgdn_tensor_t& t, const char* name, std::initializer_list<int32_t> allowed) {
    for (int32_t d : allowed)
      if (t.dtype == d) return FLASHGDN_SUCCESS;
    std::string list;
    for (int32_t d : allowed) {
      if (!list.empty()) list += " or ";
      list += dtype_name(d);
    }
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has dtype %s, expected %s", fn_, name,
                dtype_name(t.dtype), list.c_str());
  }

  flashgdn_status_t float_dtype(const flashgdn_tensor_t& t, const char* name) {
    if (is_float(t.dtype)) return FLASHGDN_SUCCESS;
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has dtype %s, expected a floating dtype", fn_,
                name, dtype_name(t.dtype));
  }

  flashgdn_status_t same_dtype(const flashgdn_tensor_t& t, const char* name, int32_t dtype, const char* ref) {
    if (t.dtype == dtype) return FLASHGDN_SUCCESS;
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has dtype %s, expected %s (the dtype of '%s')", fn_,
                name, dtype_name(t.dtype), dtype_name(dtype), ref);
  }

  flashgdn_status_t shape_is(const flashgdn_tensor_t& t, const char* name, std::initializer_list<int64_t> want,
                             const char* layout) {
    int i = 0;
    bool ok = true;
    std::string w = "[";
    for (int64_t s : want) {
      if (i) w += ", ";
      w += std::to_string(s);
      if (t.shape[i] != s) ok = false;
      ++i;
    }
    w += "]";
    if (ok) return FLASHGDN_SUCCESS;
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has shape %s, expected %s = %s", fn_, name,
                dims_str(t).c_str(), layout, w.c_str());
  }

  // GPU kernels load rows with 16-byte vectors: the last dim must be contiguous, the base pointer and
  // every outer stride 16-byte aligned.
  flashgdn_status_t rows_vectorizable(const flashgdn_tensor_t& t, const char* name) {
    if (t.stride[t.ndim - 1] != 1 && t.shape[t.ndim - 1] > 1)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument '%s' must be contiguous in its last dimension (stride %lld, expected 1)", fn_, name,
                  (long long)t.stride[t.ndim - 1]);
    if (!gpu()) return FLASHGDN_SUCCESS;
    const int64_t es = dtype_size(t.dtype);
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' data pointer must be 16-byte aligned", fn_,
                  name);
    for (int i = 0; i < t.ndim - 1; ++i) {
      if (t.shape[i] > 1 && (t.stride[i] * es) % 16 != 0)
        return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                    "%s: argument '%s' stride %lld of dimension %d is not a multiple of 16 bytes", fn_, name,
                    (long long)t.stride[i], i);
    }
    return FLASHGDN_SUCCESS;
  }

  // Outputs must not alias themselves (a zero or overlapping stride would make writes race).
  flashgdn_status_t non_overlapping(const flashgdn_tensor_t& t, const char* name) {
    int idx[FLASHGDN_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < t.ndim; ++i)
      if (t.shape[i] > 1) idx[n++] = i;
    for (int a = 1; a < n; ++a)  // insertion sort by stride (n <= 4)
      for (int b = a; b > 0 && t.stride[idx[b]] < t.stride[idx[b - 1]]; --b) std::swap(idx[b], idx[b - 1]);
    int64_t need = 1;
    for (int j = 0; j < n; ++j) {
      if (t.stride[idx[j]] < need)
        return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                    "%s: output argument '%s' has overlapping strides (dimension %d stride %lld); outputs must not alias",
                    fn_, name, idx[j], (long long)t.stride[idx[j]]);
      need = t.stride[idx[j]] * t.shape[idx[j]];
    }
    return FLASHGDN_SUCCESS;
  }

  // States: the [H, K, V] block of each sequence must be contiguous; dim 0 (sequence/pool slot) may be strided.
  flashgdn_status_t state_layout(const flashgdn_tensor_t& t, const char* name) {
    const int64_t inner = t.shape[1] * t.shape[2] * t.shape[3];
    if (t.stride[3] != 1 || t.stride[2] != t.shape[3] || t.stride[1] != t.shape[2] * t.shape[3])
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument '%s' must be contiguous in its last three dimensions (strides %lld, %lld, %lld)", fn_,
                  name, (long long)t.stride[1], (long long)t.stride[2], (long long)t.stride[3]);
    if (t.shape[0] > 1 && t.stride[0] < inner)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has overlapping rows (stride %lld < %lld)", fn_,
                  name, (long long)t.stride[0], (long long)inner);
    if (gpu()) {
      const int64_t es = dtype_size(t.dtype);
      if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0 || (t.stride[0] * es) % 16 != 0)
        return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                    "%s: argument '%s' data pointer and row stride must be 16-byte aligned", fn_, name);
    }
    return FLASHGDN_SUCCESS;
  }

  flashgdn_status_t index_vector(const flashgdn_tensor_t& t, const char* name, int64_t n,
                                 std::initializer_list<int32_t> dtypes) {
    FLASHGDN_TRY(basic(t, name, 1, "[N]"));
    FLASHGDN_TRY(dtype_in(t, name, dtypes));
    FLASHGDN_TRY(shape_is(t, name, {n}, "[N]"));
    if (t.shape[0] > 1 && t.stride[0] != 1)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' must be contiguous (stride %lld)", fn_, name,
                  (long long)t.stride[0]);
    return FLASHGDN_SUCCESS;
  }

  const char* fn() const { return fn_; }

 private:
  const char* fn_;
  Target target_;
};

// Shared between forward and backward: q, k, v, g, beta, cu_seqlens, initial_state, scale.
template <class Params>
flashgdn_status_t validate_common(const Params* p, Checker& c, Problem* pr) {
  const char* fn = c.fn();
  FLASHGDN_TRY(c.basic(p->q, "q", 4, "[B, T, Hqk, K]"));
  if (c.gpu()) {
    FLASHGDN_TRY(c.dtype_in(p->q, "q", {FLASHGDN_DTYPE_FLOAT16, FLASHGDN_DTYPE_BFLOAT16}));
  } else {
    FLASHGDN_TRY(c.float_dtype(p->q, "q"));
  }
  pr->io_dtype = static_cast<flashgdn_dtype_t>(p->q.dtype);
  pr->B = p->q.shape[0];
  pr->T = p->q.shape[1];
  pr->Hqk = p->q.shape[2];
  pr->K = p->q.shape[3];
  FLASHGDN_TRY(c.basic(p->k, "k", 4, "[B, T, Hqk, K]"));
  FLASHGDN_TRY(c.shape_is(p->k, "k", {pr->B, pr->T, pr->Hqk, pr->K}, "[B, T, Hqk, K]"));
  FLASHGDN_TRY(c.basic(p->v, "v", 4, "[B, T, Hv, V]"));
  pr->Hv = p->v.shape[2];
  pr->V = p->v.shape[3];
  FLASHGDN_TRY(c.shape_is(p->v, "v", {pr->B, pr->T, pr->Hv, pr->V}, "[B, T, Hv, V]"));
  if (c.gpu()) {
    FLASHGDN_TRY(c.same_dtype(p->k, "k", pr->io_dtype, "q"));
    FLASHGDN_TRY(c.same_dtype(p->v, "v", pr->io_dtype, "q"));
  } else {
    FLASHGDN_TRY(c.float_dtype(p->k, "k"));
    FLASHGDN_TRY(c.float_dtype(p->v, "v"));
  }
  if (pr->Hqk < 1) return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'q' has Hqk = 0 heads", fn);
  if (pr->Hv < 1) return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'v' has Hv = 0 heads", fn);
  if (pr->Hv % pr->Hqk != 0)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                "%s: argument 'v' has Hv = %lld value heads, not a multiple of Hqk = %lld (heads of 'q')", fn,
                (long long)pr->Hv, (long long)pr->Hqk);
  pr->group = pr->Hv / pr->Hqk;
  if (c.gpu()) {
    if (pr->K != 64 && pr->K != 128)
      return fail(FLASHGDN_ERROR_UNSUPPORTED, "%s: argument 'q' has head dim K = %lld; supported: 64, 128", fn,
                  (long long)pr->K);
    if (pr->V != 64 && pr->V != 128)
      return fail(FLASHGDN_ERROR_UNSUPPORTED, "%s: argument 'v' has head dim V = %lld; supported: 64, 128", fn,
                  (long long)pr->V);
  } else if (pr->K < 1 || pr->V < 1) {
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: head dims must be positive (K = %lld, V = %lld)", fn,
                (long long)pr->K, (long long)pr->V);
  }
  FLASHGDN_TRY(c.rows_vectorizable(p->q, "q"));
  FLASHGDN_TRY(c.rows_vectorizable(p->k, "k"));
  FLASHGDN_TRY(c.rows_vectorizable(p->v, "v"));

  FLASHGDN_TRY(c.basic(p->g, "g", 3, "[B, T, Hv]"));
  if (c.gpu()) {
    FLASHGDN_TRY(c.dtype_in(p->g, "g", {FLASHGDN_DTYPE_FLOAT32}));
  } else {
    FLASHGDN_TRY(c.dtype_in(p->g, "g", {FLASHGDN_DTYPE_FLOAT32, FLASHGDN_DTYPE_FLOAT64}));
  }
  FLASHGDN_TRY(c.shape_is(p->g, "g", {pr->B, pr->T, pr->Hv}, "[B, T, Hv]"));
  FLASHGDN_TRY(c.basic(p->beta, "beta", 3, "[B, T, Hv]"));
  if (c.gpu()) {
    if (p->beta.dtype != FLASHGDN_DTYPE_FLOAT32) FLASHGDN_TRY(c.same_dtype(p->beta, "beta", pr->io_dtype, "q"));
  } else {
    FLASHGDN_TRY(c.float_dtype(p->beta, "beta"));
  }
  pr->beta_dtype = static_cast<flashgdn_dtype_t>(p->beta.dtype);
  FLASHGDN_TRY(c.shape_is(p->beta, "beta", {pr->B, pr->T, pr->Hv}, "[B, T, Hv]"));

  if (p->cu_seqlens.data != nullptr) {
    FLASHGDN_TRY(c.basic(p->cu_seqlens, "cu_seqlens", 1, "[N + 1]"));
    FLASHGDN_TRY(c.dtype_in(p->cu_seqlens, "cu_seqlens", {FLASHGDN_DTYPE_INT32, FLASHGDN_DTYPE_INT64}));
    if (p->cu_seqlens.shape[0] < 1)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cu_seqlens' must have at least one element", fn);
    if (p->cu_seqlens.shape[0] > 1 && p->cu_seqlens.stride[0] != 1)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cu_seqlens' must be contiguous (stride %lld)", fn,
                  (long long)p->cu_seqlens.stride[0]);
    if (pr->B != 1)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument 'cu_seqlens' requires batch size B = 1 (packed sequences), got B = %lld", fn,
                  (long long)pr->B);
    pr->varlen = true;
    pr->N = p->cu_seqlens.shape[0] - 1;
  } else {
    pr->N = pr->B;
  }

  if (!std::isfinite(p->scale))
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'scale' must be finite (0 selects K^-0.5)", fn);
  pr->scale64 = p->scale != 0.f ? static_cast<double>(p->scale) : 1.0 / std::sqrt(static_cast<double>(pr->K));
  pr->scale = static_cast<float>(pr->scale64);
  pr->l2norm = p->use_qk_l2norm != 0;
  pr->v_first = p->state_v_first != 0;
  pr->check = p->check_inputs != 0;
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t check_state(Checker& c, const flashgdn_tensor_t& t, const char* name, const Problem& pr,
                              int64_t rows, bool any_rows, std::initializer_list<int32_t> gpu_dtypes) {
  const char* layout = pr.v_first ? "[N, Hv, V, K] (state_v_first)" : "[N, Hv, K, V]";
  FLASHGDN_TRY(c.basic(t, name, 4, layout));
  if (c.gpu()) {
    FLASHGDN_TRY(c.dtype_in(t, name, gpu_dtypes));
  } else {
    FLASHGDN_TRY(c.float_dtype(t, name));
  }
  const int64_t d2 = pr.v_first ? pr.V : pr.K, d3 = pr.v_first ? pr.K : pr.V;
  const int64_t r = any_rows ? t.shape[0] : rows;
  FLASHGDN_TRY(c.shape_is(t, name, {r, pr.Hv, d2, d3}, layout));
  return c.state_layout(t, name);
}

// cu_seqlens_host: a host copy of cu_seqlens used only for planning; checked like any input.
flashgdn_status_t read_host_seqlens(const flashgdn_chunk_fwd_params_t* p, const char* fn, Problem* pr) {
  const flashgdn_tensor_t& t = p->cu_seqlens_host;
  if (p->cu_seqlens.data == nullptr)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cu_seqlens_host' requires 'cu_seqlens'", fn);
  if (t.ndim != 1 || t.shape[0] != pr->N + 1)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cu_seqlens_host' must have shape [N + 1] = [%lld]", fn,
                static_cast<long long>(pr->N + 1));
  if (t.dtype != FLASHGDN_DTYPE_INT32 && t.dtype != FLASHGDN_DTYPE_INT64)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cu_seqlens_host' must be int32 or int64", fn);
  if (is_device_only_pointer(t.data))
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cu_seqlens_host' is device memory; it must be a host copy",
                fn);
  auto at = [&](int64_t i) -> int64_t {
    return t.dtype == FLASHGDN_DTYPE_INT64 ? static_cast<const int64_t*>(t.data)[i * t.stride[0]]
                                           : static_cast<const int32_t*>(t.data)[i * t.stride[0]];
  };
  pr->seq_chunks.resize(static_cast<size_t>(pr->N));
  int64_t prev = at(0);
  if (prev != 0)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cu_seqlens_host'[0] = %lld, expected 0", fn,
                static_cast<long long>(prev));
  for (int64_t n = 0; n < pr->N; ++n) {
    const int64_t next = at(n + 1);
    if (next < prev || next > pr->T)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument 'cu_seqlens_host'[%lld] = %lld: offsets must be non-decreasing and <= T = %lld", fn,
                  static_cast<long long>(n + 1), static_cast<long long>(next), static_cast<long long>(pr->T));
    pr->seq_chunks[static_cast<size_t>(n)] = (next - prev + 63) / 64;
    prev = next;
  }
  return FLASHGDN_SUCCESS;
}

}  // namespace

flashgdn_status_t validate_fwd(const flashgdn_chunk_fwd_params_t* p, Target target, const char* fn, Problem* pr) {
  if (p == nullptr) return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'params' is NULL", fn);
  if (p->struct_size < sizeof(flashgdn_chunk_fwd_params_t))
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                "%s: argument 'params' has struct_size %zu, expected %zu (call flashgdn_chunk_fwd_params_init)", fn,
                p->struct_size, sizeof(flashgdn_chunk_fwd_params_t));
  if (pr == nullptr) return fail(FLASHGDN_ERROR_INTERNAL, "%s: no problem descriptor", fn);
  *pr = Problem{};
  Checker c(fn, target);
  FLASHGDN_TRY(validate_common(p, c, pr));

  FLASHGDN_TRY(c.basic(p->o, "o", 4, "[B, T, Hv, V]"));
  if (c.gpu()) {
    FLASHGDN_TRY(c.same_dtype(p->o, "o", pr->io_dtype, "q"));
  } else {
    FLASHGDN_TRY(c.float_dtype(p->o, "o"));
  }
  FLASHGDN_TRY(c.shape_is(p->o, "o", {pr->B, pr->T, pr->Hv, pr->V}, "[B, T, Hv, V]"));
  FLASHGDN_TRY(c.rows_vectorizable(p->o, "o"));
  FLASHGDN_TRY(c.non_overlapping(p->o, "o"));

  if (p->cp_mode < FLASHGDN_CP_AUTO || p->cp_mode > FLASHGDN_CP_OFF)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'cp_mode' = %d is not one of auto (0), on (1), off (2)",
                fn, p->cp_mode);
  pr->cp_mode = p->cp_mode;

  pr->pool = p->state_indices.data != nullptr;
  pr->has_mask = p->has_initial_state.data != nullptr;
  pr->has_h0 = p->initial_state.data != nullptr;
  pr->has_ht = p->final_state.data != nullptr;
  if ((pr->pool || pr->has_mask) && !pr->has_h0)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' requires 'initial_state'", fn,
                pr->pool ? "state_indices" : "has_initial_state");
  if (pr->has_h0) {
    FLASHGDN_TRY(check_state(c, p->initial_state, "initial_state", *pr, pr->N, pr->pool,
                             {FLASHGDN_DTYPE_FLOAT32, FLASHGDN_DTYPE_BFLOAT16}));
    pr->P = p->initial_state.shape[0];
    if (pr->pool) FLASHGDN_TRY(c.non_overlapping(p->initial_state, "initial_state"));
  }
  if (pr->pool) {
    if (pr->has_ht)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument 'final_state' must be absent with 'state_indices' (final states are written back into "
                  "the 'initial_state' pool in place)",
                  fn);
    FLASHGDN_TRY(c.index_vector(p->state_indices, "state_indices", pr->N, {FLASHGDN_DTYPE_INT32, FLASHGDN_DTYPE_INT64}));
  }
  if (pr->has_mask)
    FLASHGDN_TRY(c.index_vector(p->has_initial_state, "has_initial_state", pr->N, {FLASHGDN_DTYPE_BOOL}));
  if (pr->has_ht) {
    FLASHGDN_TRY(check_state(c, p->final_state, "final_state", *pr, pr->N, false,
                             {FLASHGDN_DTYPE_FLOAT32, FLASHGDN_DTYPE_BFLOAT16}));
    FLASHGDN_TRY(c.non_overlapping(p->final_state, "final_state"));
  }
  if (p->cu_seqlens_host.data != nullptr) FLASHGDN_TRY(read_host_seqlens(p, fn, pr));
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t validate_bwd(const flashgdn_chunk_bwd_params_t* p, Target target, const char* fn, Problem* pr) {
  if (p == nullptr) return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'params' is NULL", fn);
  if (p->struct_size < sizeof(flashgdn_chunk_bwd_params_t))
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                "%s: argument 'params' has struct_size %zu, expected %zu (call flashgdn_chunk_bwd_params_init)", fn,
                p->struct_size, sizeof(flashgdn_chunk_bwd_params_t));
  if (pr == nullptr) return fail(FLASHGDN_ERROR_INTERNAL, "%s: no problem descriptor", fn);
  *pr = Problem{};
  Checker c(fn, target);
  FLASHGDN_TRY(validate_common(p, c, pr));

  struct Out {
    const flashgdn_tensor_t* t;
    const char* name;
    int ndim;
    const char* layout;
    int64_t d2, d3;  // heads, dim (or -1 for 3-d tensors)
  };
  const Out outs[] = {
      {&p->d_o, "d_o", 4, "[B, T, Hv, V]", pr->Hv, pr->V},   {&p->dq, "dq", 4, "[B, T, Hqk, K]", pr->Hqk, pr->K},
      {&p->dk, "dk", 4, "[B, T, Hqk, K]", pr->Hqk, pr->K},   {&p->dv, "dv", 4, "[B, T, Hv, V]", pr->Hv, pr->V},
      {&p->dg, "dg", 3, "[B, T, Hv]", pr->Hv, -1},           {&p->dbeta, "dbeta", 3, "[B, T, Hv]", pr->Hv, -1},
  };
  for (const Out& o : outs) {
    FLASHGDN_TRY(c.basic(*o.t, o.name, o.ndim, o.layout));
    if (o.ndim == 4) {
      FLASHGDN_TRY(c.shape_is(*o.t, o.name, {pr->B, pr->T, o.d2, o.d3}, o.layout));
    } else {
      FLASHGDN_TRY(c.shape_is(*o.t, o.name, {pr->B, pr->T, o.d2}, o.layout));
    }
    const bool is_dg = o.t == &p->dg, is_db = o.t == &p->dbeta;
    if (c.gpu()) {
      if (is_dg) {
        FLASHGDN_TRY(c.dtype_in(*o.t, o.name, {FLASHGDN_DTYPE_FLOAT32}));
      } else if (is_db) {
        FLASHGDN_TRY(c.same_dtype(*o.t, o.name, pr->beta_dtype, "beta"));
      } else {
        FLASHGDN_TRY(c.same_dtype(*o.t, o.name, pr->io_dtype, "q"));
      }
    } else {
      FLASHGDN_TRY(c.float_dtype(*o.t, o.name));
    }
    if (o.ndim == 4) FLASHGDN_TRY(c.rows_vectorizable(*o.t, o.name));
    if (o.t != &p->d_o) FLASHGDN_TRY(c.non_overlapping(*o.t, o.name));
  }

  pr->has_h0 = p->initial_state.data != nullptr;
  pr->has_ht = p->d_final_state.data != nullptr;
  if (pr->has_h0) {
    FLASHGDN_TRY(check_state(c, p->initial_state, "initial_state", *pr, pr->N, false,
                             {FLASHGDN_DTYPE_FLOAT32, FLASHGDN_DTYPE_BFLOAT16}));
    pr->P = pr->N;
    if (p->d_initial_state.data == nullptr)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument 'd_initial_state' is required when 'initial_state' is given", fn);
  }
  if (p->d_initial_state.data != nullptr) {
    if (!pr->has_h0)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument 'd_initial_state' must be absent when 'initial_state' is not given", fn);
    FLASHGDN_TRY(check_state(c, p->d_initial_state, "d_initial_state", *pr, pr->N, false, {FLASHGDN_DTYPE_FLOAT32}));
    FLASHGDN_TRY(c.non_overlapping(p->d_initial_state, "d_initial_state"));
  }
  if (pr->has_ht) FLASHGDN_TRY(check_state(c, p->d_final_state, "d_final_state", *pr, pr->N, false, {FLASHGDN_DTYPE_FLOAT32}));
  return FLASHGDN_SUCCESS;
}

}  // namespace flashgdn
