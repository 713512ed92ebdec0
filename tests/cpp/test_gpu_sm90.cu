// GPU unit tests of the sm_90a PTX layer, primitive by primitive (label `gpu`; skipped on machines
// without an sm_90 device). Built for sm_90a only.
//   - wgmma m64n64k16 bf16 with both operands in shared memory, no swizzle, K-major core matrices,
//     against a CPU product;
//   - TMA-loaded 128-byte-swizzled tiles as wgmma operands, K-major and MN-major (A and B), against a CPU
//     product;
//   - a TMA 2-D tile load completing on an mbarrier, against the source tile, and a 3-D one (one head's
//     rows of a strided [T, H, K] tensor);
//   - a plain bulk copy (a W image, 17 KB) and a cluster-multicast bulk copy (2 CTAs, each issuing half of
//     the bytes to both) completing on mbarriers, against the source;
//   - remote mbarrier arrivals across a 2-CTA cluster completing phases, with DSMEM writes visible;
//   - stmatrix x4 against the documented fragment layout;
//   - setmaxnreg moving registers from a producer to a consumer warpgroup;
//   - one chunk of the state update and the output on wgmma with the layouts the sm_90a recurrence will
//     use (K-major W, Q over two swizzle atoms and Pm, MN-major S, Kᵀ and epilogue-written swizzled Vd,
//     vn), against the CPU.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "api/tensor_map.hpp"
#include "device/sm90.cuh"
#include "kernels/portable/fwd/blocked_solve_mma.cuh"

namespace {

using namespace flashgdn::device;

bool have_sm90() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return false;
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  return p.major == 9;
}
#define REQUIRE_SM90() \
  if (!have_sm90()) GTEST_SKIP() << "no sm_90 device: Hopper primitive test skipped"

// A 2-D bf16 tensor map over a row-major (rows, inner) array, box (box_inner, box_rows).
flashgdn_status_t encode_bf16_map(CUtensorMap* map, const void* base, int inner, int rows, int box_inner,
                                  int box_rows, Swizzle swizzle) {
  flashgdn::TmaTile t;
  t.base = base;
  t.dtype = FLASHGDN_DTYPE_BFLOAT16;
  t.dim0 = inner;
  t.dim1 = rows;
  t.row_stride_bytes = static_cast<uint64_t>(inner) * 2;
  t.box0 = box_inner;
  t.box1 = box_rows;
  t.swizzle = swizzle;
  return flashgdn::encode_tma_tile(map, t, "test", "tile");
}

// Element (r, k) of a (rows, 16) K-major operand in the no-swizzle layout: 8 x 8 core matrices of
// 128 contiguous bytes, the two K halves of a row block adjacent (LBO = 128 B), row blocks 256 B apart
// (SBO = 256 B).
__host__ __device__ int core_offset(int r, int k) { return ((r / 8) * 2 + k / 8) * 64 + (r % 8) * 8 + (k % 8); }

// The m64nN accumulator of thread t of the warpgroup into a row-major (64, N) fp32 matrix.
template <int N>
__device__ void store_acc(const float (&d)[N / 2], float* D, int t) {
  const int row = 16 * (t / 32) + (t % 32) / 4, col = 2 * (t % 4);
  for (int j = 0; j < N / 8; ++j) {
    D[row * N + 8 * j + col] = d[4 * j];
    D[row * N + 8 * j + col + 1] = d[4 * j + 1];
    D[(row + 8) * N + 8 * j + col] = d[4 * j + 2];
    D[(row + 8) * N + 8 * j + col + 1] = d[4 * j + 3];
  }
}

__global__ void wgmma_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D) {
  __shared__ alignas(128) __nv_bfloat16 sA[64 * 16];
  __shared__ alignas(128) __nv_bfloat16 sB[64 * 16];
  const int t = threadIdx.x;
  for (int e = t; e < 64 * 16; e += 128) {
    sA[core_offset(e / 16, e % 16)] = A[e];
    sB[core_offset(e / 16, e % 16)] = B[e];
  }
  sm90::fence_proxy_async_smem();
  __syncthreads();
  const uint64_t da = make_smem_desc(smem_u32(sA), 128, 256, Swizzle::kNone);
  const uint64_t db = make_smem_desc(smem_u32(sB), 128, 256, Swizzle::kNone);
  float d[32];
  for (int i = 0; i < 32; ++i) d[i] = 0.f;
  sm90::wgmma_fence();
  sm90::wgmma_m64n64k16_bf16<0, 0>(d, da, db, 0);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(d);
  store_acc<64>(d, D, t);
}

// The same product with A from registers (register-A wgmma): the fragment built from the row-major A directly.
__global__ void wgmma_rs_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D) {
  __shared__ alignas(128) __nv_bfloat16 sB[64 * 16];
  const int t = threadIdx.x;
  for (int e = t; e < 64 * 16; e += 128) sB[core_offset(e / 16, e % 16)] = B[e];
  sm90::fence_proxy_async_smem();
  __syncthreads();
  const int row = 16 * (t / 32) + (t % 32) / 4, c = 2 * (t % 4);
  auto pk = [&](int r, int k) {
    const __nv_bfloat162 v = __halves2bfloat162(A[r * 16 + k], A[r * 16 + k + 1]);
    return *reinterpret_cast<const uint32_t*>(&v);
  };
  const uint32_t a[4] = {pk(row, c), pk(row + 8, c), pk(row, c + 8), pk(row + 8, c + 8)};
  const uint64_t db = make_smem_desc(smem_u32(sB), 128, 256, Swizzle::kNone);
  float d[32];
  for (int i = 0; i < 32; ++i) d[i] = 0.f;
  sm90::fence_regs(d);
  sm90::wgmma_fence();
  sm90::wgmma_m64n64k16_rs<0>(d, a, db, 0);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(d);
  store_acc<64>(d, D, t);
}

// Thread 0 initialises an mbarrier (one arrival) and makes the init visible to the async proxy and the
// cluster; the caller's barrier (__syncthreads / cluster_sync) then publishes it to the other threads.
__device__ void init_bar(uint64_t* bar, uint32_t count = 1) {
  if (threadIdx.x == 0) {
    sm90::mbar_init(bar, count);
    cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
  }
}

// A (64, 32) box (rank 2), or a (64, 1, 32) box at (c0, c1, c2) when c2 >= 0 (rank 3).
__global__ void tma_kernel(const __grid_constant__ CUtensorMap map, int c0, int c1, int c2, __nv_bfloat16* out) {
  __shared__ alignas(128) __nv_bfloat16 tile[32 * 64];  // box (64 inner, 32 rows)
  __shared__ alignas(8) uint64_t bar;
  init_bar(&bar);
  __syncthreads();
  if (threadIdx.x == 0) {
    sm90::mbar_expect_tx(&bar, sizeof(tile));
    if (c2 < 0) sm90::tma_load_2d(tile, &map, c0, c1, &bar);
    else sm90::tma_load_3d(tile, &map, c0, c1, c2, &bar);
  }
  sm90::mbar_wait(&bar, 0);
  for (int e = threadIdx.x; e < 32 * 64; e += blockDim.x) out[e] = tile[e];
}

// The layout the Hopper kernels use: TMA loads tiles of rows of 64 bf16 (128 B) with the 128-byte swizzle
// into 1024-byte-aligned shared memory. K-major descriptors: SBO = 1024 B (8 rows of 128 B), the k-th
// 16-wide slice 32 * k bytes further (the hardware applies the swizzle to the address); B has N rows.
// TRANS_A / TRANS_B = 1: that operand is MN-major, stored [k][m] / [k][n] (64 k-rows of 128 B, the layout
// of the recurrence's Kᵀ and S operands; N = 64). MN-major 128-byte-swizzled descriptors (PTX ISA, "Matrix
// Descriptor Format" / "Strides"): SBO = 1024 B between groups of 8 k-rows, LBO = the next 64-wide MN
// block (unused: one block), and the k-th 16-deep slice starts 16 rows = 2048 bytes further.
template <int N, int TRANS_A, int TRANS_B>
__global__ void tma_wgmma_sw128_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                                       float* D) {
  static_assert(TRANS_B == 0 || N == 64, "MN-major B is tested as one 64-wide block");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // The 128-byte swizzle pattern repeats every 1024 bytes: align the tiles to it explicitly.
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  __nv_bfloat16* sA = reinterpret_cast<__nv_bfloat16*>(smem);         // (64, 64)
  __nv_bfloat16* sB = reinterpret_cast<__nv_bfloat16*>(smem + 8192);  // (N, 64) or (64 k, 64 n)
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + 8192 + N * 128);
  const int t = threadIdx.x;
  init_bar(bar);
  __syncthreads();
  if (t == 0) {
    sm90::mbar_expect_tx(bar, 8192 + N * 128);
    sm90::tma_load_2d(sA, &map_a, 0, 0, bar);
    sm90::tma_load_2d(sB, &map_b, 0, 0, bar);
  }
  sm90::mbar_wait(bar, 0);
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  sm90::wgmma_fence();
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint64_t da = TRANS_A ? make_smem_desc(smem_u32(sA) + 2048 * k, 8192, 1024, Swizzle::k128B)
                                : make_smem_desc(smem_u32(sA) + 32 * k, 16, 1024, Swizzle::k128B);
    const uint64_t db = TRANS_B ? make_smem_desc(smem_u32(sB) + 2048 * k, 8192, 1024, Swizzle::k128B)
                                : make_smem_desc(smem_u32(sB) + 32 * k, 16, 1024, Swizzle::k128B);
    if constexpr (N == 32) sm90::wgmma_m64n32k16<TRANS_A, TRANS_B>(d, da, db, 1);
    else if constexpr (N == 64) sm90::wgmma_m64n64k16<TRANS_A, TRANS_B>(d, da, db, 1);
    else sm90::wgmma_m64n128k16<TRANS_A, TRANS_B>(d, da, db, 1);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(d);
  store_acc<N>(d, D, t);
}

// Relative L2 error of the device product dD (64 x n, fp32) against A (64 x kd) Bᵀ (B: n x kd) on the CPU;
// with a_mn / b_mn the host arrays hold A / B MN-major instead ([k][m] / [k][n], 64 wide).
double rel_err_vs_cpu(const std::vector<__nv_bfloat16>& a, const std::vector<__nv_bfloat16>& b, int kd,
                      const float* dD, bool a_mn = false, bool b_mn = false, int n_cols = 64) {
  std::vector<float> d(64 * n_cols);
  cudaMemcpy(d.data(), dD, d.size() * 4, cudaMemcpyDeviceToHost);
  double err = 0, ref_norm = 0;
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < n_cols; ++n) {
      double r = 0;
      for (int k = 0; k < kd; ++k)
        r += double(__bfloat162float(a_mn ? a[k * 64 + m] : a[m * kd + k])) *
             __bfloat162float(b_mn ? b[k * 64 + n] : b[n * kd + k]);
      err += (d[m * n_cols + n] - r) * (d[m * n_cols + n] - r);
      ref_norm += r * r;
    }
  return std::sqrt(err / ref_norm);
}

}  // namespace

template <int N, int TRANS_A, int TRANS_B>
void run_tma_wgmma_sw128() {
  std::mt19937 rng(2 + 2 * TRANS_A + TRANS_B + N);
  std::normal_distribution<float> nd;
  std::vector<__nv_bfloat16> a(64 * 64), b(N * 64);
  for (auto& x : a) x = __float2bfloat16(nd(rng));
  for (auto& x : b) x = __float2bfloat16(nd(rng));
  __nv_bfloat16 *dA, *dB;
  float* dD;
  ASSERT_EQ(cudaMalloc(&dA, a.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dB, b.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dD, 64 * N * 4), cudaSuccess);
  cudaMemcpy(dA, a.data(), a.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, b.data(), b.size() * 2, cudaMemcpyHostToDevice);
  cudaMemset(dD, 0xff, 64 * N * 4);
  alignas(64) CUtensorMap map_a, map_b;
  for (auto [map, ptr, rows] : {std::tuple<CUtensorMap*, void*, int>{&map_a, dA, 64}, {&map_b, dB, N}})
    ASSERT_EQ(encode_bf16_map(map, ptr, 64, rows, 64, rows, Swizzle::k128B), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  const int smem = 8192 + N * 128 + 64 + 1024;
  auto kernel = tma_wgmma_sw128_kernel<N, TRANS_A, TRANS_B>;
  ASSERT_EQ(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), cudaSuccess);
  kernel<<<1, 128, smem>>>(map_a, map_b, dD);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // NOTE: if an MN-major case fails with a permuted result, LBO/SBO of the MN-major swizzled layout are
  // the first suspects (PTX ISA "Strides" tables).
  const double rel = rel_err_vs_cpu(a, b, 64, dD, TRANS_A, TRANS_B, N);
  EXPECT_LT(rel, 1e-5) << "N " << N << " trans-a " << TRANS_A << " trans-b " << TRANS_B;
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dD);
}

TEST(GpuSm90, TmaSwizzle128WgmmaK64MatchesCpu) {
  REQUIRE_SM90();
  run_tma_wgmma_sw128<64, 0, 0>();
}

// S as the B operand ([K][BV], BV contiguous) and Kᵀ as the A operand (K stored [chunk][K]) of the Hopper
// recurrence: MN-major operands with the 128-byte swizzle.
TEST(GpuSm90, TmaSwizzle128WgmmaMnMajorBMatchesCpu) {
  REQUIRE_SM90();
  run_tma_wgmma_sw128<64, 0, 1>();
}
TEST(GpuSm90, TmaSwizzle128WgmmaMnMajorAMatchesCpu) {
  REQUIRE_SM90();
  run_tma_wgmma_sw128<64, 1, 0>();
}

// One (64 x 16) x (16 x 64) product by `kernel` (A, B row-major, D fp32) on random bf16 operands: its relative error
// against the CPU.
static double one_k16_product_error(void (*kernel)(const __nv_bfloat16*, const __nv_bfloat16*, float*), unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<__nv_bfloat16> a(64 * 16), b(64 * 16);
  for (auto& x : a) x = __float2bfloat16(nd(rng));
  for (auto& x : b) x = __float2bfloat16(nd(rng));
  __nv_bfloat16 *dA, *dB;
  float* dD;
  if (cudaMalloc(&dA, a.size() * 2) != cudaSuccess || cudaMalloc(&dB, b.size() * 2) != cudaSuccess ||
      cudaMalloc(&dD, 64 * 64 * 4) != cudaSuccess)
    return INFINITY;
  cudaMemcpy(dA, a.data(), a.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, b.data(), b.size() * 2, cudaMemcpyHostToDevice);
  cudaMemset(dD, 0xff, 64 * 64 * 4);
  kernel<<<1, 128>>>(dA, dB, dD);
  const double rel = cudaDeviceSynchronize() == cudaSuccess ? rel_err_vs_cpu(a, b, 16, dD) : INFINITY;
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dD);
  return rel;
}

TEST(GpuSm90, WgmmaM64N64K16NoSwizzleMatchesCpu) {
  REQUIRE_SM90();
  // NOTE: if this fails with a permuted result, LBO and SBO of the no-swizzle K-major layout are the
  // first suspects (the encoder's field positions are checked on the host).
  EXPECT_LT(one_k16_product_error(wgmma_kernel, 1), 1e-5);
}

TEST(GpuSm90, WgmmaRegisterAMatchesCpu) {
  REQUIRE_SM90();
  EXPECT_LT(one_k16_product_error(wgmma_rs_kernel, 2), 1e-5);  // a permuted result: the A fragment layout is wrong
}

TEST(GpuSm90, TmaTileLoadCompletesOnMbarrier) {
  REQUIRE_SM90();
  const int rows = 128, cols = 256;
  std::vector<__nv_bfloat16> src(rows * cols);
  for (int i = 0; i < rows * cols; ++i) src[i] = __float2bfloat16(static_cast<float>(i % 977));
  __nv_bfloat16 *dsrc, *dout;
  ASSERT_EQ(cudaMalloc(&dsrc, src.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, 32 * 64 * 2), cudaSuccess);
  cudaMemcpy(dsrc, src.data(), src.size() * 2, cudaMemcpyHostToDevice);
  alignas(64) CUtensorMap map;
  ASSERT_EQ(encode_bf16_map(&map, dsrc, cols, rows, 64, 32, Swizzle::kNone), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  const int c0 = 128, c1 = 64;
  tma_kernel<<<1, 128>>>(map, c0, c1, -1, dout);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<__nv_bfloat16> out(32 * 64);
  cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost);
  for (int r = 0; r < 32; ++r)
    for (int c = 0; c < 64; ++c)
      ASSERT_EQ(__bfloat162float(out[r * 64 + c]), __bfloat162float(src[(c1 + r) * cols + c0 + c])) << r << "," << c;
  cudaFree(dsrc);
  cudaFree(dout);
}

namespace {

// One thread copies `bytes` (<= 32 KB) into shared memory with one bulk copy; all threads copy it out.
__global__ void bulk_kernel(const unsigned char* src, unsigned char* out, uint32_t bytes) {
  extern __shared__ __align__(128) unsigned char buf[];
  __shared__ alignas(8) uint64_t bar;
  init_bar(&bar);
  __syncthreads();
  if (threadIdx.x == 0) {
    sm90::mbar_expect_tx(&bar, bytes);
    sm90::bulk_load(buf, src, bytes, &bar);
  }
  sm90::mbar_wait(&bar, 0);
  for (uint32_t i = threadIdx.x; i < bytes; i += blockDim.x) out[i] = buf[i];
}

// Cluster of 2: CTA r multicasts half r of `src` to both CTAs; each CTA expects all the bytes on its own
// mbarrier and writes what it received to out + rank * bytes.
__global__ void multicast_kernel(const unsigned char* src, unsigned char* out, uint32_t bytes) {
  extern __shared__ __align__(128) unsigned char buf[];
  __shared__ alignas(8) uint64_t bar;
  const uint32_t rank = sm90::cluster_ctarank();
  init_bar(&bar);
  // Both CTAs' barriers are initialised (and their buffers free) before anyone's copy can land.
  sm90::cluster_sync();
  if (threadIdx.x == 0) {
    sm90::mbar_expect_tx(&bar, bytes);
    const uint32_t half = bytes / 2;
    sm90::bulk_load_multicast(buf + rank * half, src + rank * half, half, &bar, 0x3);
  }
  sm90::mbar_wait(&bar, 0);
  for (uint32_t i = threadIdx.x; i < bytes; i += blockDim.x) out[rank * bytes + i] = buf[i];
  sm90::cluster_sync();  // no CTA exits while its peer's multicast may still target it
}

// Cluster of 2 CTAs of 64 threads: for `rounds` phases, every thread of both CTAs writes its slot of
// CTA 0's buffer through distributed shared memory and arrives on CTA 0's mbarrier (count 128); CTA 0
// waits for the phase (acquire, cluster scope) and checks every slot, then both CTAs meet at a cluster
// barrier before the next round. `bad` counts wrong slots.
__global__ void cluster_arrive_kernel(int rounds, int* bad) {
  __shared__ alignas(8) uint64_t bar;
  __shared__ int slots[128];
  const uint32_t rank = sm90::cluster_ctarank();
  init_bar(&bar, 128);
  sm90::cluster_sync();
  int* remote_slots = static_cast<int*>(__cluster_map_shared_rank(slots, 0));
  for (int r = 0; r < rounds; ++r) {
    remote_slots[rank * 64 + threadIdx.x] = 1000 * r + static_cast<int>(rank * 64 + threadIdx.x);
    sm90::mbar_arrive_cluster(&bar, 0);
    if (rank == 0) {
      sm90::mbar_wait_cluster(&bar, r & 1);
      for (int i = threadIdx.x; i < 128; i += 64)
        if (slots[i] != 1000 * r + i) atomicAdd(bad, 1);
    }
    sm90::cluster_sync();  // CTA 0 is done reading before anyone writes the next round
  }
}

// Two warpgroups: WG0 gives registers back (setmaxnreg.dec 40), WG1 takes them (setmaxnreg.inc 232) and
// runs a 120-float register accumulation; out[t] must equal the closed form for every thread.
// NOTE: with setmaxnreg ptxas compiles at the launch bound's cap (168 for 384 threads; ptxas -v), so the
// 128 x 128 registers WG0 releases cover WG1's 128 x 64 more (no wait for registers).
__global__ void __launch_bounds__(384, 1) setmaxnreg_kernel(float* out) {
  const int t = threadIdx.x;
  if (t < 128) {
    sm90::setmaxnreg_dec<40>();
    out[t] = static_cast<float>(t);
    return;
  }
  sm90::setmaxnreg_inc<232>();
  float acc[120];
#pragma unroll
  for (int i = 0; i < 120; ++i) acc[i] = static_cast<float>(i);
#pragma unroll 1
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int i = 0; i < 120; ++i) acc[i] += static_cast<float>(t);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 120; ++i) sum += acc[i];
  out[t] = sum;  // sum_i (i + 4 t) = 7140 + 480 t
}

// Lane l stores registers {4l, 4l + 1, 4l + 2, 4l + 3} (as bf16 pairs: value = 64 j + 2 l + half, exact in bf16) via
// stmatrix x4 into a 16 x 16 tile: matrix j at rows 8 (j % 2), columns 8 (j / 2).
__global__ void stmatrix_kernel(__nv_bfloat16* out) {
  __shared__ alignas(128) __nv_bfloat16 tile[16 * 16];
  const int l = threadIdx.x;
  uint32_t r[4];
  for (int j = 0; j < 4; ++j) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(64.f * j + 2 * l, 64.f * j + 2 * l + 1);
    r[j] = *reinterpret_cast<const uint32_t*>(&v);
  }
  const int m = l / 8, row = l % 8;
  sm90::stmatrix_x4(&tile[(8 * (m % 2) + row) * 16 + 8 * (m / 2)], r);
  __syncwarp();
  for (int i = l; i < 256; i += 32) out[i] = tile[i];
}


__global__ void stmatrix_trans_kernel(__nv_bfloat16* out) {
  __shared__ alignas(128) __nv_bfloat16 tile[16 * 16];
  const int l = threadIdx.x;
  uint32_t r[4];
  for (int j = 0; j < 4; ++j) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(64.f * j + 2 * l, 64.f * j + 2 * l + 1);
    r[j] = *reinterpret_cast<const uint32_t*>(&v);
  }
  const int m = l / 8, row = l % 8;
  sm90::stmatrix_x4_trans(&tile[(8 * (m % 2) + row) * 16 + 8 * (m / 2)], r);
  __syncwarp();
  for (int i = l; i < 256; i += 32) out[i] = tile[i];
}

}  // namespace

// Launches `kernel` as one cluster of 2 CTAs.
template <class... Params, class... Args>
cudaError_t launch_cluster2(void (*kernel)(Params...), int threads, size_t smem, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(2);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 2;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

TEST(GpuSm90, BulkCopyCompletesOnMbarrier) {
  REQUIRE_SM90();
  const uint32_t bytes = 64 * 136 * 2;  // a W image (K = 128)
  std::vector<unsigned char> src(bytes);
  for (uint32_t i = 0; i < bytes; ++i) src[i] = static_cast<unsigned char>((i * 131u + 7u) & 0xff);
  unsigned char *dsrc, *dout;
  ASSERT_EQ(cudaMalloc(&dsrc, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, bytes), cudaSuccess);
  cudaMemcpy(dsrc, src.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemset(dout, 0, bytes);
  bulk_kernel<<<1, 128, bytes>>>(dsrc, dout, bytes);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<unsigned char> out(bytes);
  cudaMemcpy(out.data(), dout, bytes, cudaMemcpyDeviceToHost);
  EXPECT_EQ(out, src);
  cudaFree(dsrc);
  cudaFree(dout);
}

TEST(GpuSm90, ClusterMulticastBulkCopyReachesEveryCta) {
  REQUIRE_SM90();
  const uint32_t bytes = 16384;
  std::vector<unsigned char> src(bytes);
  for (uint32_t i = 0; i < bytes; ++i) src[i] = static_cast<unsigned char>((i * 77u + 3u) & 0xff);
  unsigned char *dsrc, *dout;
  ASSERT_EQ(cudaMalloc(&dsrc, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, 2 * bytes), cudaSuccess);
  cudaMemcpy(dsrc, src.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemset(dout, 0, 2 * bytes);
  ASSERT_EQ(launch_cluster2(multicast_kernel, 128, bytes, dsrc, dout, bytes), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<unsigned char> out(2 * bytes);
  cudaMemcpy(out.data(), dout, 2 * bytes, cudaMemcpyDeviceToHost);
  for (int r = 0; r < 2; ++r)
    EXPECT_TRUE(std::equal(src.begin(), src.end(), out.begin() + r * bytes)) << "CTA " << r;
  cudaFree(dsrc);
  cudaFree(dout);
}

// The 16 x 16 tile a 32-thread `kernel` stores with stmatrix (four 8x8 matrices; register j of lane l holds
// 64 j + 2 l, 64 j + 2 l + 1).
static std::vector<__nv_bfloat16> stmatrix_tile(void (*kernel)(__nv_bfloat16*)) {
  std::vector<__nv_bfloat16> out(256);
  __nv_bfloat16* dout;
  if (cudaMalloc(&dout, 256 * 2) != cudaSuccess) return {};
  kernel<<<1, 32>>>(dout);
  if (cudaDeviceSynchronize() != cudaSuccess) out.clear();
  else cudaMemcpy(out.data(), dout, 256 * 2, cudaMemcpyDeviceToHost);
  cudaFree(dout);
  return out;
}

TEST(GpuSm90, StmatrixX4MatchesFragmentLayout) {
  REQUIRE_SM90();
  const std::vector<__nv_bfloat16> out = stmatrix_tile(stmatrix_kernel);
  ASSERT_EQ(out.size(), 256u);
  // Matrix j, row i, column c holds the value lane 4 i + c / 2 gave for register j, half c % 2.
  for (int j = 0; j < 4; ++j)
    for (int i = 0; i < 8; ++i)
      for (int c = 0; c < 8; ++c) {
        const int lane = 4 * i + c / 2;
        const float want = 64.f * j + 2 * lane + (c % 2);
        const float got = __bfloat162float(out[(8 * (j % 2) + i) * 16 + 8 * (j / 2) + c]);
        ASSERT_EQ(got, __bfloat162float(__float2bfloat16(want))) << "matrix " << j << " row " << i << " col " << c;
      }
}

TEST(GpuSm90, StmatrixX4TransStoresTheTranspose) {
  REQUIRE_SM90();
  const std::vector<__nv_bfloat16> out = stmatrix_tile(stmatrix_trans_kernel);
  ASSERT_EQ(out.size(), 256u);
  // Matrix j, memory row i, column c holds register-side element (row c, column i): lane 4 c + i / 2, half i % 2.
  for (int j = 0; j < 4; ++j)
    for (int i = 0; i < 8; ++i)
      for (int c = 0; c < 8; ++c) {
        const int lane = 4 * c + i / 2;
        const float want = 64.f * j + 2 * lane + (i % 2);
        const float got = __bfloat162float(out[(8 * (j % 2) + i) * 16 + 8 * (j / 2) + c]);
        ASSERT_EQ(got, __bfloat162float(__float2bfloat16(want))) << "matrix " << j << " row " << i << " col " << c;
      }
}

TEST(GpuSm90, TmaSwizzle128WgmmaN32AndN128MatchCpu) {
  REQUIRE_SM90();
  run_tma_wgmma_sw128<32, 0, 0>();
  run_tma_wgmma_sw128<128, 0, 0>();
}

TEST(GpuSm90, ClusterRemoteArrivalsCompleteMbarrierPhases) {
  REQUIRE_SM90();
  int* dbad;
  ASSERT_EQ(cudaMalloc(&dbad, sizeof(int)), cudaSuccess);
  cudaMemset(dbad, 0, sizeof(int));
  ASSERT_EQ(launch_cluster2(cluster_arrive_kernel, 64, 0, 5, dbad), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  int bad = -1;
  cudaMemcpy(&bad, dbad, sizeof(int), cudaMemcpyDeviceToHost);
  EXPECT_EQ(bad, 0);
  cudaFree(dbad);
}

TEST(GpuSm90, SetmaxnregMovesRegistersBetweenWarpgroups) {
  REQUIRE_SM90();
  float* dout;
  ASSERT_EQ(cudaMalloc(&dout, 256 * sizeof(float)), cudaSuccess);
  setmaxnreg_kernel<<<1, 256>>>(dout);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out(256);
  cudaMemcpy(out.data(), dout, out.size() * sizeof(float), cudaMemcpyDeviceToHost);
  for (int t = 0; t < 256; ++t) ASSERT_EQ(out[t], t < 128 ? float(t) : 7140.f + 480.f * t) << t;
  cudaFree(dout);
}

namespace {

// Byte offset of bf16 element (row, col) in a 128-byte-swizzled tile of 128-byte rows (64 bf16): the
// 16-byte chunk index is XORed with row % 8 (the TMA / wgmma SWIZZLE_128B pattern, 1024-byte aligned).
__device__ __forceinline__ uint32_t sw128_offset(int row, int col) {
  return static_cast<uint32_t>(row * 128 + ((((col * 2) >> 4) ^ (row & 7)) << 4) + ((col * 2) & 15));
}

// acc (64 x 64) = A S: A a (64, 128) K-major tile stored as two 64-wide 128-byte-swizzled atoms (8 KB
// apart), S a (128, 64) MN-major swizzled tile; the recurrence's W S and Q S.
__device__ void tile_times_s(float (&acc)[32], const unsigned char* sA, const unsigned char* sS) {
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;
  sm90::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) {
    const uint64_t da = make_smem_desc(smem_u32(sA) + 8192 * (ks / 4) + 32 * (ks % 4), 16, 1024, Swizzle::k128B);
    const uint64_t db = make_smem_desc(smem_u32(sS) + 2048 * ks, 8192, 1024, Swizzle::k128B);
    sm90::wgmma_m64n64k16<0, 1>(acc, da, db, 1);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(acc);
}

// One chunk of the sm_90a recurrence on one warpgroup, with the layouts it will use (K = 128, BV = 64):
//   vn = U - W S  (W: (64, 128) K-major as two 64-wide swizzle atoms; S: (128, 64) bf16 as the MN-major B)
//   Vd = e^{gl - gamma} o vn -> bf16, written by the epilogue into a swizzled MN-major B tile
//   S' = e^{gl} S + Kᵀ Vd  (Kᵀ: the (64, 128) K tile read as two MN-major A blocks; S in fp32 registers)
// Writes S' (128 x 64, fp32).
// The output side on the same chunk: O = scale e^{gamma} o (Q S) + Pm vn (Q K-major over two atoms, Pm
// K-major, vn written by the epilogue as a swizzled MN-major B). Writes S' (128 x 64) then O (64 x 64).
__global__ void chunk_step_kernel(const __grid_constant__ CUtensorMap map_w, const __grid_constant__ CUtensorMap map_k,
                                  const __grid_constant__ CUtensorMap map_s, const __grid_constant__ CUtensorMap map_q,
                                  const __grid_constant__ CUtensorMap map_pm, const float* S32, const float* U,
                                  const float* gam, float scale, float* out) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  unsigned char* sW = smem;            // 2 x (64, 64): K columns 0-63, 64-127
  unsigned char* sK = smem + 16384;    // 2 x (64, 64)
  unsigned char* sS = smem + 32768;    // (128, 64)
  unsigned char* sVd = smem + 49152;   // (64, 64)
  unsigned char* sQ = smem + 57344;    // 2 x (64, 64)
  unsigned char* sPm = smem + 73728;   // (64, 64)
  unsigned char* sVn = smem + 81920;   // (64, 64)
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + 90112);
  const int t = threadIdx.x;
  init_bar(bar);
  __syncthreads();
  if (t == 0) {
    sm90::mbar_expect_tx(bar, 49152 + 16384 + 8192);
    sm90::tma_load_2d(sW, &map_w, 0, 0, bar);
    sm90::tma_load_2d(sW + 8192, &map_w, 64, 0, bar);
    sm90::tma_load_2d(sK, &map_k, 0, 0, bar);
    sm90::tma_load_2d(sK + 8192, &map_k, 64, 0, bar);
    sm90::tma_load_2d(sS, &map_s, 0, 0, bar);
    sm90::tma_load_2d(sQ, &map_q, 0, 0, bar);
    sm90::tma_load_2d(sQ + 8192, &map_q, 64, 0, bar);
    sm90::tma_load_2d(sPm, &map_pm, 0, 0, bar);
  }
  sm90::mbar_wait(bar, 0);
  const int row = 16 * (t / 32) + (t % 32) / 4, col = 2 * (t % 4);  // accumulator coordinates (+8, +1, +8j)
  // ---- vn = U - W S ----
  float acc[32];
  tile_times_s(acc, sW, sS);
  const float gl = gam[63];
  for (int j = 0; j < 8; ++j)
    for (int h = 0; h < 2; ++h) {
      const int r = row + 8 * h, c = 8 * j + col;
      const float f = __expf(gl - gam[r]);
      const float n0 = U[r * 64 + c] - acc[4 * j + 2 * h], n1 = U[r * 64 + c + 1] - acc[4 * j + 2 * h + 1];
      *reinterpret_cast<__nv_bfloat162*>(sVn + sw128_offset(r, c)) = __floats2bfloat162_rn(n0, n1);
      *reinterpret_cast<__nv_bfloat162*>(sVd + sw128_offset(r, c)) = __floats2bfloat162_rn(f * n0, f * n1);
    }
  sm90::fence_proxy_async_smem();  // generic-proxy writes of Vd -> the async proxy (wgmma) reads them
  __syncthreads();
  // ---- S' = e^{gl} S + Kᵀ Vd, two m-blocks of 64 state rows ----
  float st[2][32];
  const float egl = __expf(gl);
  for (int mt = 0; mt < 2; ++mt)
    for (int j = 0; j < 8; ++j)
      for (int e = 0; e < 4; ++e) {
        const int r = 64 * mt + row + 8 * (e / 2), c = 8 * j + col + (e % 2);
        st[mt][4 * j + e] = egl * S32[r * 64 + c];
      }
  sm90::wgmma_fence();
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      const uint64_t da = make_smem_desc(smem_u32(sK) + 8192 * mt + 2048 * ks, 8192, 1024, Swizzle::k128B);
      const uint64_t db = make_smem_desc(smem_u32(sVd) + 2048 * ks, 8192, 1024, Swizzle::k128B);
      sm90::wgmma_m64n64k16<1, 1>(st[mt], da, db, 1);
    }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(st[0]);
  sm90::fence_regs(st[1]);
  for (int mt = 0; mt < 2; ++mt) store_acc<64>(st[mt], out + 64 * 64 * mt, t);
  // ---- O = scale e^{gamma} o (Q S) + Pm vn ----
  float o[32];
  tile_times_s(o, sQ, sS);
  for (int j = 0; j < 8; ++j)
    for (int e = 0; e < 4; ++e) o[4 * j + e] *= scale * __expf(gam[row + 8 * (e / 2)]);
  sm90::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    const uint64_t da = make_smem_desc(smem_u32(sPm) + 32 * ks, 16, 1024, Swizzle::k128B);
    const uint64_t db = make_smem_desc(smem_u32(sVn) + 2048 * ks, 8192, 1024, Swizzle::k128B);
    sm90::wgmma_m64n64k16<0, 1>(o, da, db, 1);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(o);
  store_acc<64>(o, out + 2 * 64 * 64, t);
}

}  // namespace

TEST(GpuSm90, WgmmaOneChunkStateAndOutputMatchCpu) {
  REQUIRE_SM90();
  std::mt19937 rng(77);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ug(-0.05f, 0.f);
  std::vector<__nv_bfloat16> w(64 * 128), k(64 * 128), s16(128 * 64), q(64 * 128), pm(64 * 64);
  std::vector<float> s32(128 * 64), u(64 * 64), gam(64);
  for (auto& x : w) x = __float2bfloat16(0.1f * nd(rng));
  for (auto& x : k) x = __float2bfloat16(0.1f * nd(rng));
  for (auto& x : q) x = __float2bfloat16(0.1f * nd(rng));
  for (int i = 0; i < 64 * 64; ++i) pm[i] = __float2bfloat16(i % 64 <= i / 64 ? 0.1f * nd(rng) : 0.f);
  for (int i = 0; i < 128 * 64; ++i) {
    s32[i] = nd(rng);
    s16[i] = __float2bfloat16(s32[i]);
  }
  for (auto& x : u) x = nd(rng);
  float acc = 0.f;
  for (auto& x : gam) x = (acc += ug(rng));
  auto up = [](const void* h, size_t bytes) {
    void* d = nullptr;
    cudaMalloc(&d, bytes);
    cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
  };
  void* dW = up(w.data(), w.size() * 2);
  void* dK = up(k.data(), k.size() * 2);
  void* dS16 = up(s16.data(), s16.size() * 2);
  void* dQ = up(q.data(), q.size() * 2);
  void* dPm = up(pm.data(), pm.size() * 2);
  float* dS32 = static_cast<float*>(up(s32.data(), s32.size() * 4));
  float* dU = static_cast<float*>(up(u.data(), u.size() * 4));
  float* dG = static_cast<float*>(up(gam.data(), gam.size() * 4));
  float* dOut;
  ASSERT_EQ(cudaMalloc(&dOut, 192 * 64 * 4), cudaSuccess);
  cudaMemset(dOut, 0xff, 192 * 64 * 4);
  alignas(64) CUtensorMap map_w, map_k, map_s, map_q, map_pm;
  for (auto [map, ptr, inner, rows, box_rows] :
       {std::tuple<CUtensorMap*, void*, int, int, int>{&map_w, dW, 128, 64, 64}, {&map_k, dK, 128, 64, 64},
        {&map_s, dS16, 64, 128, 128}, {&map_q, dQ, 128, 64, 64}, {&map_pm, dPm, 64, 64, 64}})
    ASSERT_EQ(encode_bf16_map(map, ptr, inner, rows, 64, box_rows, Swizzle::k128B), FLASHGDN_SUCCESS)
        << flashgdn_get_last_error();
  const int smem = 90112 + 64 + 1024;
  const float scale = 0.0883883f;
  ASSERT_EQ(cudaFuncSetAttribute(chunk_step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), cudaSuccess);
  chunk_step_kernel<<<1, 128, smem>>>(map_w, map_k, map_s, map_q, map_pm, dS32, dU, dG, scale, dOut);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out(192 * 64);
  cudaMemcpy(out.data(), dOut, out.size() * 4, cudaMemcpyDeviceToHost);
  // CPU: the same math with the same roundings (bf16 S operand, bf16 Vd).
  auto bf = [](float x) { return __bfloat162float(__float2bfloat16(x)); };
  std::vector<float> vd(64 * 64), vn(64 * 64);
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 64; ++j) {
      double a = 0;
      for (int e = 0; e < 128; ++e) a += double(__bfloat162float(w[i * 128 + e])) * __bfloat162float(s16[e * 64 + j]);
      const float n = static_cast<float>(u[i * 64 + j] - a);
      vn[i * 64 + j] = bf(n);
      vd[i * 64 + j] = bf(std::exp(gam[63] - gam[i]) * n);
    }
  double err = 0, ref = 0;
  for (int e = 0; e < 128; ++e)
    for (int j = 0; j < 64; ++j) {
      double a = std::exp(double(gam[63])) * s32[e * 64 + j];
      for (int i = 0; i < 64; ++i) a += double(__bfloat162float(k[i * 128 + e])) * vd[i * 64 + j];
      err += (out[e * 64 + j] - a) * (out[e * 64 + j] - a);
      ref += a * a;
    }
  // NOTE: a permuted result (error ~1) points at the layouts (swizzled Vd writes, MN-major descriptors);
  // the bound leaves room for Vd elements that round to a neighbouring bf16 (__expf vs exp, sum order).
  EXPECT_LT(std::sqrt(err / ref), 2e-3) << "S'";
  err = ref = 0;
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 64; ++j) {
      double qs = 0, pv = 0;
      for (int e = 0; e < 128; ++e) qs += double(__bfloat162float(q[i * 128 + e])) * __bfloat162float(s16[e * 64 + j]);
      for (int m = 0; m < 64; ++m) pv += double(__bfloat162float(pm[i * 64 + m])) * vn[m * 64 + j];
      const double a = scale * std::exp(double(gam[i])) * qs + pv, g = out[128 * 64 + i * 64 + j];
      err += (g - a) * (g - a);
      ref += a * a;
    }
  EXPECT_LT(std::sqrt(err / ref), 2e-3) << "O";
  for (void* p : {dW, dK, dS16, dQ, dPm}) cudaFree(p);
  for (float* p : {dS32, dU, dG, dOut}) cudaFree(p);
}

TEST(GpuSm90, Tma3dBoxLoadsOneHeadsRows) {
  REQUIRE_SM90();
  // q-like [T = 96, H = 3, K = 128] with a token stride of 3 * 136 elements and a head stride of 136.
  const int T = 96, H = 3, K = 128, hs = 136, ts = H * hs;
  std::vector<__nv_bfloat16> src(T * ts);
  for (int i = 0; i < T * ts; ++i) src[i] = __float2bfloat16(static_cast<float>(i % 251));
  __nv_bfloat16 *dsrc, *dout;
  ASSERT_EQ(cudaMalloc(&dsrc, src.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, 32 * 64 * 2), cudaSuccess);
  cudaMemcpy(dsrc, src.data(), src.size() * 2, cudaMemcpyHostToDevice);
  flashgdn::TmaTile t;
  t.base = dsrc;
  t.dtype = FLASHGDN_DTYPE_BFLOAT16;
  t.dim0 = K;
  t.dim1 = H;
  t.row_stride_bytes = hs * 2;
  t.dim2 = T;
  t.stride2_bytes = ts * 2;
  t.box0 = 64;
  t.box1 = 1;
  t.box2 = 32;
  alignas(64) CUtensorMap map;
  ASSERT_EQ(flashgdn::encode_tma_tile(&map, t, "test", "q"), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  const int c0 = 64, head = 2, tok = 40;
  tma_kernel<<<1, 128>>>(map, c0, head, tok, dout);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<__nv_bfloat16> out(32 * 64);
  cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost);
  for (int r = 0; r < 32; ++r)
    for (int c = 0; c < 64; ++c)
      ASSERT_EQ(__bfloat162float(out[r * 64 + c]), __bfloat162float(src[(tok + r) * ts + head * hs + c0 + c])) << r << "," << c;
  cudaFree(dsrc);
  cudaFree(dout);
}


// The solve's off-diagonal levels on tf32 tensor cores (blocked_solve_mma.cuh) against the CUDA-core fp32 levels,
// both run on the GPU from the same diagonal blocks.
namespace {

namespace bs = flashgdn::portable::blocked_solve;

__global__ void solve_levels_kernel(const float* Tg, float* Xmma, float* Xfma) {
  __shared__ alignas(16) float T[64 * bs::kLd], X[64 * bs::kLd], Y[bs::kScratch];
  const int t = threadIdx.x;
  for (int e = t; e < 64 * bs::kLd; e += 128) T[e] = Tg[e];
  __syncthreads();
  for (int pass = 0; pass < 2; ++pass) {
    if (t < 64) bs::diag(t, T, X);
    __syncthreads();
    if (pass == 0) {
      bs::levels_mma(t / 32, t % 32, T, X, bs::kLd, Y, [] { __syncthreads(); });
    } else {
      for (int d = 1; d < bs::kNB; ++d) {
        bs::level_y(t, 128, d, T, X, Y);
        __syncthreads();
        bs::level_x(t, 128, d, X, Y);
        __syncthreads();
      }
    }
    float* out = pass == 0 ? Xmma : Xfma;
    for (int e = t; e < 64 * bs::kLd; e += 128) out[e] = X[e];
    __syncthreads();
  }
}

}  // namespace

TEST(GpuSolve, TensorCoreLevelsMatchFp32Levels) {
  REQUIRE_SM90();
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int Kd = 128;
  std::vector<float> k(64 * Kd), beta(64), T(64 * bs::kLd, 0.f);
  for (int i = 0; i < 64; ++i) {
    float nrm = 0.f;
    for (int e = 0; e < Kd; ++e) nrm += (k[i * Kd + e] = nd(rng)) * k[i * Kd + e];
    for (int e = 0; e < Kd; ++e) k[i * Kd + e] /= std::sqrt(nrm);  // l2-normalised rows, as in the model
    beta[i] = 2.f * std::abs(nd(rng)) / 3.f;
  }
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < i; ++j) {
      float d = 0.f;
      for (int e = 0; e < Kd; ++e) d += k[i * Kd + e] * k[j * Kd + e];
      T[i * bs::kLd + j] = beta[i] * d;
    }
  float *dT, *dM, *dF;
  ASSERT_EQ(cudaMalloc(&dT, T.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dM, T.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dF, T.size() * 4), cudaSuccess);
  cudaMemcpy(dT, T.data(), T.size() * 4, cudaMemcpyHostToDevice);
  solve_levels_kernel<<<1, 128>>>(dT, dM, dF);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> xm(T.size()), xf(T.size());
  cudaMemcpy(xm.data(), dM, T.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(xf.data(), dF, T.size() * 4, cudaMemcpyDeviceToHost);
  double num = 0, den = 0;
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j <= i; ++j) {
      const double a = xf[i * bs::kLd + j], b = xm[i * bs::kLd + j];
      ASSERT_TRUE(std::isfinite(b)) << i << ", " << j;
      num += (a - b) * (a - b);
      den += a * a;
    }
  const double rel = std::sqrt(num / den);
  std::printf("  [solve levels, tf32 mma vs fp32 FMA] rel L2 %.2e\n", rel);
  EXPECT_LT(rel, 2e-3);  // tf32 operands (2^-11); the A images these feed are bf16 (2^-9)
  cudaFree(dT);
  cudaFree(dM);
  cudaFree(dF);
}
