// FlashGDN's thin PTX layer, sm_90a part: wgmma, warpgroup fences, setmaxnreg, async-proxy fence,
// bulk copies (plain and cluster multicast), cluster rank and barrier, stmatrix.
// TMA and mbarrier come from CCCL's cuda::ptx (shipped with the CUDA toolkit); thin typed helpers are
// below. Every wrapper cites the PTX ISA (9.0) section by chapter and instruction name. Only meaningful
// when compiled for sm_90a (the kernels that include it are built with -gencode arch=compute_90a).
#pragma once

#include <cuda/ptx>
#include <cuda_bf16.h>

#include <cstdint>

#include "device/ptx.cuh"
#include "device/smem_desc.hpp"

namespace flashgdn::device::sm90 {

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FLASHGDN_SM90A 1
#endif

// ---- warpgroup ordering (PTX ISA, "Asynchronous Warpgroup Level Matrix Instructions: wgmma.fence,
//      wgmma.commit_group, wgmma.wait_group") ----
__device__ __forceinline__ void wgmma_fence() {
#ifdef FLASHGDN_SM90A
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef FLASHGDN_SM90A
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef FLASHGDN_SM90A
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving accumulator reads/writes across an asynchronous wgmma.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// ---- D (64 x N, fp32) (+)= A (64 x 16, smem desc) * B (16 x N, smem desc), bf16 operands ----
// PTX ISA, "Asynchronous Warpgroup Level Matrix Instructions: wgmma.mma_async", shapes m64nNk16 with
// N = 32, 64, 128, .f32.bf16.bf16; imm-trans-a / imm-trans-b select MN-major (1) or K-major (0) smem
// operands; scale-d = 0 overwrites D. Accumulator fragment: thread t of the warpgroup holds
// d[4 * j + {0,1,2,3}] at rows 16 * (t / 32) + (t % 32) / 4 (+8 for {2,3}), cols 8 * j + 2 * (t % 4) (+1).
// (The operand lists are spelled out: inline asm needs one constraint per accumulator register.)
template <int TransA, int TransB>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#ifdef FLASHGDN_SM90A
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, p, 1, 1, %19, %20;\n}\n"
      :
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TransA), "n"(TransB));
#endif
}

template <int TransA, int TransB>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#ifdef FLASHGDN_SM90A
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      :
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TransA), "n"(TransB));
#endif
}

template <int TransA, int TransB>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#ifdef FLASHGDN_SM90A
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, %67, %68;\n}\n"
      :
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TransA), "n"(TransB));
#endif
}

// ---- D (64 x 64, fp32) (+)= A (64 x 16, registers) * B (16 x 64, smem desc), bf16 operands ----
// PTX ISA, "Asynchronous Warpgroup Level Matrix Instructions: wgmma.mma_async" with A in registers (the
// register-fragment form: no imm-trans-a; A is K-major). Register fragment of A ("Register Fragments and
// Shared Memory Matrix Layouts: Matrix fragments for wgmma .m64nNk16"): thread t holds a[0] = (row, 2c..2c+1),
// a[1] = (row + 8, 2c..), a[2] = (row, 2c+8..), a[3] = (row + 8, 2c+8..), row = 16 (t / 32) + (t % 32) / 4,
// c = t % 4 -- the accumulator layout of two adjacent n8 blocks, so an fp32 accumulator becomes the next
// product's A operand by packing pairs (pack_a_frag). The a registers must stay unchanged until wgmma.wait_group.
template <int TransB>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
#ifdef FLASHGDN_SM90A
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      :
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(TransB));
#endif
}

// The A fragment (bf16 pairs) of k-slice s, columns 16 s .. 16 s + 15, of a 64 x N fp32 accumulator.
__device__ __forceinline__ void pack_a_frag(uint32_t (&a)[4], const float* acc, int s) {
  const float* x = acc + 8 * s;  // n8 blocks 2 s, 2 s + 1: x[0..3], x[4..7]
  a[0] = pack2<__nv_bfloat16>(x[0], x[1]);
  a[1] = pack2<__nv_bfloat16>(x[2], x[3]);
  a[2] = pack2<__nv_bfloat16>(x[4], x[5]);
  a[3] = pack2<__nv_bfloat16>(x[6], x[7]);
}

// Keeps the compiler from reusing A-fragment registers while a register-A wgmma may still read them.
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int k = 0; k < 4; ++k) asm volatile("" : "+r"(r[i][k])::"memory");
}

// The m64n64 form under its earlier name (the primitive tests use it).
template <int TransA, int TransB>
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  wgmma_m64n64k16<TransA, TransB>(d, desc_a, desc_b, scale_d);
}

// ---- register budgets (PTX ISA, "Miscellaneous Instructions: setmaxnreg") ----
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#ifdef FLASHGDN_SM90A
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#ifdef FLASHGDN_SM90A
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// ---- generic-proxy smem writes -> async proxy (wgmma / TMA) readers
//      (PTX ISA, "Parallel Synchronization and Communication Instructions: membar / fence",
//      fence.proxy.async) ----
__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Global data this thread observed through the generic proxy (e.g. written by another CTA and acquired
// through a flag) before bulk copies (async proxy) read it. Same section, fence.proxy.async.global.
__device__ __forceinline__ void fence_proxy_async_global() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
#endif
}

// ---- mbarrier and TMA through CCCL cuda::ptx ----
// PTX ISA, "Parallel Synchronization and Communication Instructions: mbarrier" (init, arrive.expect_tx,
// try_wait.parity).
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) { cuda::ptx::mbarrier_init(bar, count); }
// Makes this thread's mbarrier.init visible to the other CTAs of the cluster (their remote arrivals and
// multicast complete_tx) once a cluster barrier follows. PTX ISA, "membar / fence" (fence.mbarrier_init
// .release.cluster).
__device__ __forceinline__ void fence_mbarrier_init_cluster() {
  cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
}

__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  cuda::ptx::mbarrier_arrive_expect_tx(cuda::ptx::sem_release, cuda::ptx::scope_cta, cuda::ptx::space_shared, bar,
                                       bytes);
}

__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t phase) {
  while (!cuda::ptx::mbarrier_try_wait_parity(bar, phase)) {
  }
}

// 2-D tile load: box at coordinates (c0 innermost, c1) of `map` into smem, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(void* smem, const void* map, int32_t c0, int32_t c1, uint64_t* bar) {
  const int32_t coords[2] = {c0, c1};
  // PTX ISA, "Data Movement and Conversion Instructions: cp.async.bulk.tensor" (.shared::cluster dst on sm_90).
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, smem, map, coords, bar);
}

// 3-D tile load (rank-3 map, e.g. (K, heads, tokens)): box at (c0 innermost, c1, c2), completing on `bar`.
__device__ __forceinline__ void tma_load_3d(void* smem, const void* map, int32_t c0, int32_t c1, int32_t c2,
                                            uint64_t* bar) {
  const int32_t coords[3] = {c0, c1, c2};
  // PTX ISA, "Data Movement and Conversion Instructions: cp.async.bulk.tensor" (.3d, .shared::cluster dst).
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, smem, map, coords, bar);
}

// 4-D tile load (rank-4 map, e.g. (K, heads, tokens, batch)), completing on `bar`; and the same tile into
// the same shared-memory offset of every CTA of the cluster in `cta_mask`, each completing on its own
// mbarrier at `bar`'s offset. PTX ISA, "cp.async.bulk.tensor" (.4d, .tile; .multicast::cluster, sm_90a).
__device__ __forceinline__ void tma_load_4d(void* smem, const void* map, int32_t c0, int32_t c1, int32_t c2,
                                            int32_t c3, uint64_t* bar) {
  const int32_t coords[4] = {c0, c1, c2, c3};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, smem, map, coords, bar);
}
__device__ __forceinline__ void tma_load_4d_multicast(void* smem, const void* map, int32_t c0, int32_t c1, int32_t c2,
                                                      int32_t c3, uint64_t* bar, uint16_t cta_mask) {
  const int32_t coords[4] = {c0, c1, c2, c3};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, smem, map, coords, bar, cta_mask);
}

// Contiguous bulk copy global -> shared (no tensor map), completing on `bar` (transaction bytes).
// PTX ISA, "Data Movement and Conversion Instructions: cp.async.bulk" (.shared::cluster.global,
// .mbarrier::complete_tx::bytes). `bytes` and both addresses are multiples of 16.
__device__ __forceinline__ void bulk_load(void* smem, const void* gmem, uint32_t bytes, uint64_t* bar) {
  cuda::ptx::cp_async_bulk(cuda::ptx::space_cluster, cuda::ptx::space_global, smem, gmem, bytes, bar);
}

// The same bytes into the same shared-memory offset of every CTA of the cluster in `cta_mask`, each
// completing on its own mbarrier at `bar`'s offset. PTX ISA, "cp.async.bulk" (.multicast::cluster).
__device__ __forceinline__ void bulk_load_multicast(void* smem, const void* gmem, uint32_t bytes, uint64_t* bar,
                                                    uint16_t cta_mask) {
  cuda::ptx::cp_async_bulk(cuda::ptx::space_cluster, cuda::ptx::space_global, smem, gmem, bytes, bar, cta_mask);
}

// ---- clusters (PTX ISA, "Special Registers: %cluster_ctarank"; "Parallel Synchronization and
//      Communication Instructions: barrier.cluster") ----
__device__ __forceinline__ uint32_t cluster_ctarank() { return cuda::ptx::get_sreg_cluster_ctarank(); }
// All threads of all CTAs of the cluster (release / acquire by default).
__device__ __forceinline__ void cluster_sync() {
  cuda::ptx::barrier_cluster_arrive();
  cuda::ptx::barrier_cluster_wait();
}

// Arrive (release, CTA scope) on a local mbarrier: a consumer releasing a stage of its own CTA.
// PTX ISA, "mbarrier.arrive" (.shared::cta).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) { (void)cuda::ptx::mbarrier_arrive(bar); }

// The consumer side of a multicast pipeline: a thread arrives (release, cluster scope) on the mbarrier at
// `bar`'s offset in CTA `rank` of the cluster (the CTA whose producer refills everyone's stage), and
// that producer waits with acquire at cluster scope. PTX ISA, "mbarrier.arrive" (.release.cluster
// .shared::cluster) on an address from "mapa" (__cluster_map_shared_rank); "mbarrier.try_wait.parity"
// (.acquire.cluster).
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t* bar, uint32_t rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // __cluster_map_shared_rank exists from sm_90 on
  auto* remote = static_cast<uint64_t*>(__cluster_map_shared_rank(bar, rank));
  cuda::ptx::mbarrier_arrive(cuda::ptx::sem_release, cuda::ptx::scope_cluster, cuda::ptx::space_cluster, remote);
#endif
}
__device__ __forceinline__ void mbar_wait_cluster(uint64_t* bar, uint32_t phase) {
  while (!cuda::ptx::mbarrier_try_wait_parity(cuda::ptx::sem_acquire, cuda::ptx::scope_cluster, bar, phase)) {
  }
}

// ---- stmatrix (PTX ISA, "Warp Level Matrix Multiply-Accumulate Instructions: stmatrix"), sm_90 ----
// Four 8x8 b16 matrices from registers to shared memory: lane i supplies the row address of matrix
// i / 8, row i % 8; register r[j] of lane l holds row l / 4, columns 2 (l % 4) .. +1 of matrix j (the
// mma accumulator layout), so a warp writes a 16 x 16 bf16 tile of packed accumulators in one instruction.
__device__ __forceinline__ void stmatrix_x4(void* smem_row, const uint32_t (&r)[4]) {
#ifdef FLASHGDN_SM90A
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_u32(smem_row)),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
#endif
}

// Same, each 8x8 matrix transposed on the way out (.trans): register r[j] of lane l lands at column l / 4, rows
// 2 (l % 4) .. +1 of matrix j, so an accumulator tile (rows m, columns n) is stored as its transpose.
__device__ __forceinline__ void stmatrix_x4_trans(void* smem_row, const uint32_t (&r)[4]) {
#ifdef FLASHGDN_SM90A
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_u32(smem_row)),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
#endif
}

}  // namespace flashgdn::device::sm90
