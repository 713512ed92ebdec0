// Every kind of bad input gets a clear status and a message naming the argument. Validation never
// dereferences device pointers, so fake (aligned) pointers suffice here.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "flashgdn/flashgdn.hpp"

namespace {

alignas(256) unsigned char g_arena[1 << 12];
void* ptr(size_t off = 0) { return g_arena + off; }

// A host int32 copy of cu_seqlens (storage lives for the test binary: the cases are static).
flashgdn_tensor_t host_cu(std::initializer_list<int32_t> v) {
  static std::vector<std::vector<int32_t>> keep;
  keep.emplace_back(v);
  return flashgdn::tensor(keep.back().data(), FLASHGDN_DTYPE_INT32, {static_cast<int64_t>(v.size())});
}

// A valid Qwen-shaped GPU problem: B=1, T=100, Hqk=2, Hv=6 (GVA 3), K=V=128, varlen N=3, fp32 state.
flashgdn::ChunkFwdParams valid_fwd() {
  using flashgdn::tensor;
  flashgdn::ChunkFwdParams p;
  p.q = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 2, 128});
  p.k = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 2, 128});
  p.v = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 6, 128});
  p.g = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {1, 100, 6});
  p.beta = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {1, 100, 6});
  p.o = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 6, 128});
  p.cu_seqlens = tensor(ptr(), FLASHGDN_DTYPE_INT32, {4});
  p.initial_state = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {3, 6, 128, 128});
  p.final_state = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {3, 6, 128, 128});
  return p;
}

flashgdn::ChunkBwdParams valid_bwd() {
  using flashgdn::tensor;
  flashgdn::ChunkBwdParams p;
  p.q = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 2, 128});
  p.k = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 2, 128});
  p.v = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 6, 128});
  p.g = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {1, 100, 6});
  p.beta = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {1, 100, 6});
  p.cu_seqlens = tensor(ptr(), FLASHGDN_DTYPE_INT64, {4});
  p.d_o = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 6, 128});
  p.dq = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 2, 128});
  p.dk = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 2, 128});
  p.dv = tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {1, 100, 6, 128});
  p.dg = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {1, 100, 6});
  p.dbeta = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {1, 100, 6});
  p.initial_state = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {3, 6, 128, 128});
  p.d_initial_state = tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {3, 6, 128, 128});
  return p;
}

struct FwdCase {
  const char* name;
  std::function<void(flashgdn::ChunkFwdParams&)> mutate;
  flashgdn_status_t status;
  const char* message;  // substring of flashgdn_get_last_error()
};

void PrintTo(const FwdCase& c, std::ostream* os) { *os << c.name; }

class FwdValidation : public ::testing::TestWithParam<FwdCase> {};

TEST_P(FwdValidation, ReportsStatusAndNamesArgument) {
  const FwdCase& c = GetParam();
  flashgdn::ChunkFwdParams p = valid_fwd();
  c.mutate(p);
  size_t bytes = 0;
  const flashgdn_status_t s = flashgdn_chunk_fwd_workspace_size(&p, &bytes);
  EXPECT_EQ(s, c.status) << flashgdn_get_last_error();
  EXPECT_NE(std::string(flashgdn_get_last_error()).find(c.message), std::string::npos)
      << "message was: " << flashgdn_get_last_error();
  // The GPU entry point validates identically before touching anything.
  EXPECT_EQ(flashgdn_chunk_fwd(&p, nullptr, 0, nullptr), c.status);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find(c.message), std::string::npos);
}

using P = flashgdn::ChunkFwdParams;
const flashgdn_status_t kBad = FLASHGDN_ERROR_INVALID_ARGUMENT;
const flashgdn_status_t kUnsup = FLASHGDN_ERROR_UNSUPPORTED;

INSTANTIATE_TEST_SUITE_P(
    AllKinds, FwdValidation,
    ::testing::Values(
        FwdCase{"struct_size", [](P& p) { p.struct_size = 8; }, kBad, "'params' has struct_size 8"},
        FwdCase{"q_missing", [](P& p) { p.q.data = nullptr; }, kBad, "argument 'q' is required"},
        FwdCase{"q_rank", [](P& p) { p.q.ndim = 3; }, kBad, "argument 'q' must have 4 dimensions"},
        FwdCase{"q_dtype", [](P& p) { p.q.dtype = FLASHGDN_DTYPE_FLOAT32; }, kBad, "argument 'q' has dtype float32"},
        FwdCase{"q_unknown_dtype", [](P& p) { p.q.dtype = 42; }, kBad, "argument 'q' has unknown dtype code 42"},
        FwdCase{"q_negative_size", [](P& p) { p.q.shape[1] = -1; }, kBad, "argument 'q' has negative size"},
        FwdCase{"q_negative_stride", [](P& p) { p.q.stride[1] = -256; }, kBad, "argument 'q' has negative stride"},
        FwdCase{"k_shape", [](P& p) { p.k.shape[1] = 99; }, kBad, "argument 'k' has shape [1, 99, 2, 128]"},
        FwdCase{"k_dtype", [](P& p) { p.k.dtype = FLASHGDN_DTYPE_FLOAT16; }, kBad,
                "argument 'k' has dtype float16, expected bfloat16 (the dtype of 'q')"},
        FwdCase{"v_shape", [](P& p) { p.v.shape[0] = 2; }, kBad, "argument 'v' has shape"},
        FwdCase{"v_dtype", [](P& p) { p.v.dtype = FLASHGDN_DTYPE_FLOAT16; }, kBad, "argument 'v' has dtype float16"},
        FwdCase{"gva_ratio",
                [](P& p) {
                  for (auto* t : {&p.v, &p.o}) t->shape[2] = 5;
                  p.g.shape[2] = p.beta.shape[2] = 5;
                },
                kBad, "Hv = 5 value heads, not a multiple of Hqk = 2"},
        FwdCase{"head_dim_k", [](P& p) { p.q.shape[3] = p.k.shape[3] = 96; }, kUnsup, "head dim K = 96; supported: 64, 128"},
        FwdCase{"head_dim_v", [](P& p) { p.v.shape[3] = p.o.shape[3] = 32; }, kUnsup, "head dim V = 32"},
        FwdCase{"q_last_stride", [](P& p) { p.q.stride[3] = 2; }, kBad, "argument 'q' must be contiguous in its last dimension"},
        FwdCase{"q_misaligned", [](P& p) { p.q.data = ptr(2); }, kBad, "argument 'q' data pointer must be 16-byte aligned"},
        FwdCase{"v_outer_stride", [](P& p) { p.v.stride[2] = 130; }, kBad, "argument 'v' stride 130 of dimension 2 is not a multiple of 16 bytes"},
        FwdCase{"g_dtype", [](P& p) { p.g.dtype = FLASHGDN_DTYPE_BFLOAT16; }, kBad, "argument 'g' has dtype bfloat16, expected float32"},
        FwdCase{"g_rank", [](P& p) { p.g.ndim = 4; }, kBad, "argument 'g' must have 3 dimensions [B, T, Hv]"},
        FwdCase{"g_shape", [](P& p) { p.g.shape[2] = 2; }, kBad, "argument 'g' has shape [1, 100, 2]"},
        FwdCase{"beta_dtype", [](P& p) { p.beta.dtype = FLASHGDN_DTYPE_FLOAT16; }, kBad, "argument 'beta' has dtype float16"},
        FwdCase{"beta_shape", [](P& p) { p.beta.shape[1] = 7; }, kBad, "argument 'beta' has shape"},
        FwdCase{"o_missing", [](P& p) { p.o.data = nullptr; }, kBad, "argument 'o' is required"},
        FwdCase{"o_dtype", [](P& p) { p.o.dtype = FLASHGDN_DTYPE_FLOAT16; }, kBad, "argument 'o' has dtype float16"},
        FwdCase{"o_aliasing", [](P& p) { p.o.stride[2] = 0; }, kBad, "output argument 'o' has overlapping strides"},
        FwdCase{"cu_seqlens_dtype", [](P& p) { p.cu_seqlens.dtype = FLASHGDN_DTYPE_FLOAT32; }, kBad,
                "argument 'cu_seqlens' has dtype float32, expected int32 or int64"},
        FwdCase{"cu_seqlens_rank", [](P& p) { p.cu_seqlens.ndim = 2; }, kBad, "argument 'cu_seqlens' must have 1 dimensions"},
        FwdCase{"cu_seqlens_stride", [](P& p) { p.cu_seqlens.stride[0] = 2; }, kBad, "argument 'cu_seqlens' must be contiguous"},
        FwdCase{"cu_seqlens_batch",
                [](P& p) {
                  for (auto* t : {&p.q, &p.k, &p.v, &p.g, &p.beta, &p.o}) t->shape[0] = 2;
                },
                kBad, "argument 'cu_seqlens' requires batch size B = 1"},
        FwdCase{"h0_shape", [](P& p) { p.initial_state.shape[0] = 2; }, kBad, "argument 'initial_state' has shape [2, 6, 128, 128], expected [N, Hv, K, V]"},
        FwdCase{"h0_dtype", [](P& p) { p.initial_state.dtype = FLASHGDN_DTYPE_FLOAT16; }, kBad, "argument 'initial_state' has dtype float16"},
        FwdCase{"h0_layout", [](P& p) { p.initial_state.stride[3] = 128; p.initial_state.stride[2] = 1; }, kBad,
                "argument 'initial_state' must be contiguous in its last three dimensions"},
        FwdCase{"ht_shape_vfirst", [](P& p) { p.state_v_first = 1; p.initial_state.data = nullptr; p.final_state.shape[3] = 64; }, kBad,
                "argument 'final_state' has shape [3, 6, 128, 64], expected [N, Hv, V, K] (state_v_first)"},
        FwdCase{"indices_without_pool", [](P& p) { p.initial_state.data = nullptr; p.state_indices = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_INT32, {3}); }, kBad,
                "argument 'state_indices' requires 'initial_state'"},
        FwdCase{"pool_with_final_state", [](P& p) { p.state_indices = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_INT32, {3}); }, kBad,
                "argument 'final_state' must be absent with 'state_indices'"},
        FwdCase{"indices_dtype", [](P& p) { p.final_state.data = nullptr; p.state_indices = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_FLOAT32, {3}); }, kBad,
                "argument 'state_indices' has dtype float32"},
        FwdCase{"indices_shape", [](P& p) { p.final_state.data = nullptr; p.state_indices = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_INT64, {4}); }, kBad,
                "argument 'state_indices' has shape [4], expected [N] = [3]"},
        FwdCase{"mask_dtype", [](P& p) { p.has_initial_state = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_INT32, {3}); }, kBad,
                "argument 'has_initial_state' has dtype int32, expected bool"},
        FwdCase{"mask_without_state", [](P& p) { p.initial_state.data = nullptr; p.has_initial_state = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_BOOL, {3}); }, kBad,
                "argument 'has_initial_state' requires 'initial_state'"},
        FwdCase{"scale_nan", [](P& p) { p.scale = NAN; }, kBad, "argument 'scale' must be finite"},
        FwdCase{"cp_mode", [](P& p) { p.cp_mode = 7; }, kBad, "argument 'cp_mode' = 7"},
        FwdCase{"cu_seqlens_host_shape", [](P& p) { p.cu_seqlens_host = host_cu({0, 10, 100}); }, kBad,
                "argument 'cu_seqlens_host' must have shape [N + 1] = [4]"},
        FwdCase{"cu_seqlens_host_first", [](P& p) { p.cu_seqlens_host = host_cu({5, 10, 20, 100}); }, kBad,
                "argument 'cu_seqlens_host'[0] = 5, expected 0"},
        FwdCase{"cu_seqlens_host_order", [](P& p) { p.cu_seqlens_host = host_cu({0, 50, 20, 100}); }, kBad,
                "argument 'cu_seqlens_host'[2] = 20: offsets must be non-decreasing and <= T = 100"},
        FwdCase{"cu_seqlens_host_past_t", [](P& p) { p.cu_seqlens_host = host_cu({0, 10, 20, 101}); }, kBad,
                "argument 'cu_seqlens_host'[3] = 101"},
        FwdCase{"cu_seqlens_host_alone",
                [](P& p) {
                  p.cu_seqlens = flashgdn_tensor_t{};
                  p.initial_state.data = p.final_state.data = nullptr;
                  p.cu_seqlens_host = host_cu({0, 100});
                },
                kBad, "argument 'cu_seqlens_host' requires 'cu_seqlens'"}),
    [](const ::testing::TestParamInfo<FwdCase>& i) { return std::string(i.param.name); });

TEST(Validation, NullParamsAndBytes) {
  size_t bytes;
  EXPECT_EQ(flashgdn_chunk_fwd_workspace_size(nullptr, &bytes), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'params' is NULL"), std::string::npos);
  flashgdn::ChunkFwdParams p = valid_fwd();
  EXPECT_EQ(flashgdn_chunk_fwd_workspace_size(&p, nullptr), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'bytes' is NULL"), std::string::npos);
}

TEST(Validation, InitRejectsBadDevice) {
  EXPECT_EQ(flashgdn_init(-2), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'device' = -2"), std::string::npos);
}

TEST(Validation, ValidProblemsPass) {
  size_t bytes = 0;
  flashgdn::ChunkFwdParams p = valid_fwd();
  EXPECT_EQ(flashgdn_chunk_fwd_workspace_size(&p, &bytes), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  // Strided q/k/v: views into one fused projection buffer [T, 2*Hqk*K + Hv*V].
  const int64_t row = 2 * 2 * 128 + 6 * 128;
  for (auto* t : {&p.q, &p.k}) {
    t->stride[0] = 100 * row;
    t->stride[1] = row;
  }
  p.v.stride[0] = 100 * row;
  p.v.stride[1] = row;
  p.beta.dtype = FLASHGDN_DTYPE_BFLOAT16;
  p.state_v_first = 1;
  p.final_state.dtype = FLASHGDN_DTYPE_BFLOAT16;
  EXPECT_EQ(flashgdn_chunk_fwd_workspace_size(&p, &bytes), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  // State pool: 5 slots, written in place.
  p.final_state.data = nullptr;
  p.initial_state.shape[0] = 5;
  p.state_indices = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_INT64, {3});
  p.has_initial_state = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_BOOL, {3});
  EXPECT_EQ(flashgdn_chunk_fwd_workspace_size(&p, &bytes), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  // A host copy of cu_seqlens (planning only), int64 like FLA's cu_seqlens_cpu.
  static const int64_t cu_host[4] = {0, 30, 30, 100};
  p.cu_seqlens_host = flashgdn::tensor(const_cast<int64_t*>(cu_host), FLASHGDN_DTYPE_INT64, {4});
  EXPECT_EQ(flashgdn_chunk_fwd_workspace_size(&p, &bytes), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  flashgdn::ChunkBwdParams b = valid_bwd();
  EXPECT_EQ(flashgdn_chunk_bwd_workspace_size(&b, &bytes), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
}

TEST(Validation, Backward) {
  size_t bytes = 0;
  flashgdn::ChunkBwdParams b = valid_bwd();
  b.d_initial_state.data = nullptr;
  EXPECT_EQ(flashgdn_chunk_bwd_workspace_size(&b, &bytes), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'd_initial_state' is required"), std::string::npos);
  b = valid_bwd();
  b.dg.dtype = FLASHGDN_DTYPE_BFLOAT16;
  EXPECT_EQ(flashgdn_chunk_bwd_workspace_size(&b, &bytes), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'dg' has dtype bfloat16, expected float32"), std::string::npos);
  b = valid_bwd();
  b.dbeta.dtype = FLASHGDN_DTYPE_BFLOAT16;
  EXPECT_EQ(flashgdn_chunk_bwd_workspace_size(&b, &bytes), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'dbeta' has dtype bfloat16, expected float32 (the dtype of 'beta')"), std::string::npos);
  b = valid_bwd();
  b.dq.shape[2] = 6;
  EXPECT_EQ(flashgdn_chunk_bwd_workspace_size(&b, &bytes), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'dq' has shape [1, 100, 6, 128]"), std::string::npos);
  b = valid_bwd();
  b.d_final_state = flashgdn::tensor(ptr(), FLASHGDN_DTYPE_BFLOAT16, {3, 6, 128, 128});
  EXPECT_EQ(flashgdn_chunk_bwd_workspace_size(&b, &bytes), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'd_final_state' has dtype bfloat16"), std::string::npos);
  b = valid_bwd();
  b.initial_state.data = nullptr;
  EXPECT_EQ(flashgdn_chunk_bwd_workspace_size(&b, &bytes), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'd_initial_state' must be absent"), std::string::npos);
}

TEST(Validation, ReferenceAcceptsAnyHeadDimButChecksShapes) {
  // The CPU reference takes any float dtype and head dim, with the same shape checks.
  std::vector<double> buf(4096, 0.0);
  using flashgdn::tensor;
  flashgdn::ChunkFwdParams p;
  const auto F = FLASHGDN_DTYPE_FLOAT64;
  p.q = tensor(buf.data(), F, {1, 4, 1, 3});
  p.k = tensor(buf.data(), F, {1, 4, 1, 3});
  p.v = tensor(buf.data(), F, {1, 4, 2, 5});
  p.g = tensor(buf.data(), F, {1, 4, 2});
  p.beta = tensor(buf.data(), F, {1, 4, 2});
  std::vector<double> o(40);
  p.o = tensor(o.data(), F, {1, 4, 2, 5});
  EXPECT_EQ(flashgdn_reference_fwd(&p, FLASHGDN_REFERENCE_RECURRENT_FP64), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  p.o.shape[3] = 4;
  EXPECT_EQ(flashgdn_reference_fwd(&p, FLASHGDN_REFERENCE_RECURRENT_FP64), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("flashgdn_reference_fwd: argument 'o' has shape"), std::string::npos);
  p.o.shape[3] = 5;
  EXPECT_EQ(flashgdn_reference_fwd(&p, static_cast<flashgdn_reference_algo_t>(9)), kBad);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("argument 'algo' = 9"), std::string::npos);
}

TEST(Validation, CppHeaderThrowsWithMessage) {
  flashgdn::ChunkFwdParams p = valid_fwd();
  p.g.dtype = FLASHGDN_DTYPE_FLOAT16;
  try {
    flashgdn::chunk_fwd_workspace_size(p);
    FAIL() << "expected an exception";
  } catch (const flashgdn::Error& e) {
    EXPECT_EQ(e.status(), kBad);
    EXPECT_NE(std::string(e.what()).find("argument 'g' has dtype float16"), std::string::npos);
  }
}

TEST(Validation, AbiVersion) {
  EXPECT_EQ(flashgdn_abi_version(), FLASHGDN_ABI_VERSION);
  EXPECT_STREQ(flashgdn_status_string(FLASHGDN_ERROR_INVALID_DATA), "invalid data");
}

}  // namespace
