/*
 * FlashGDN: Gated DeltaNet (gated delta rule) chunked kernels.
 *
 * Public C ABI. Host-only header: it needs no CUDA header. `flashgdn_stream_t` is the same type as
 * `cudaStream_t` (`struct CUstream_st*`), so a CUDA stream can be passed directly; NULL is the legacy
 * default stream.
 *
 * Conventions
 *   - Every tensor is a `flashgdn_tensor_t`: pointer, dtype, rank, shape and strides in ELEMENTS.
 *     A tensor whose `data` is NULL is absent (only allowed for optional tensors).
 *   - Parameter structs are versioned by `struct_size`; initialise them with the `*_params_init`
 *     functions, then fill the fields you need. New fields are only ever appended.
 *   - Calls never allocate device memory and never synchronise (except in checking mode, see
 *     `check_inputs`). The caller passes a workspace of at least `*_workspace_size` bytes.
 *   - Every call returns a `flashgdn_status_t`. On failure, `flashgdn_get_last_error()` returns a
 *     thread-local message naming the offending argument.
 *
 * Semantics (per sequence n, value head h, reading q/k head h / (Hv / Hqk)), state S is K x V:
 *   S <- exp(g_t) * S                         (decay first)
 *   u <- beta_t * (v_t - S^T k_t)
 *   S <- S + k_t u^T                          (delta update)
 *   o_t <- scale * S^T q_t
 * with q_t, k_t optionally L2-normalised in the kernel: x * rsqrt(sum(x^2) + 1e-6).
 */
#ifndef FLASHGDN_FLASHGDN_H_
#define FLASHGDN_FLASHGDN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FLASHGDN_API __declspec(dllexport)
#else
#define FLASHGDN_API __attribute__((visibility("default")))
#endif

/* Bumped on any incompatible change of a struct layout or function signature. */
#define FLASHGDN_ABI_VERSION 1
#define FLASHGDN_VERSION_MAJOR 0
#define FLASHGDN_VERSION_MINOR 1
#define FLASHGDN_VERSION_PATCH 0

/* Same type as cudaStream_t. */
typedef struct CUstream_st* flashgdn_stream_t;

typedef enum flashgdn_status {
  FLASHGDN_SUCCESS = 0,
  FLASHGDN_ERROR_INVALID_ARGUMENT = 1, /* a shape, dtype, stride, alignment or value is wrong */
  FLASHGDN_ERROR_UNSUPPORTED = 2,      /* valid, but not supported (e.g. head dim 96, no GPU build) */
  FLASHGDN_ERROR_WORKSPACE = 3,        /* workspace missing, too small or misaligned */
  FLASHGDN_ERROR_INVALID_DATA = 4,     /* checking mode: device contents (cu_seqlens, indices) invalid */
  FLASHGDN_ERROR_CUDA = 5,             /* a CUDA runtime call or a kernel launch failed */
  FLASHGDN_ERROR_NO_DEVICE = 6,        /* no usable CUDA device or driver */
  FLASHGDN_ERROR_INTERNAL = 7
} flashgdn_status_t;

typedef enum flashgdn_dtype {
  FLASHGDN_DTYPE_FLOAT32 = 0,
  FLASHGDN_DTYPE_FLOAT16 = 1,
  FLASHGDN_DTYPE_BFLOAT16 = 2,
  FLASHGDN_DTYPE_FLOAT64 = 3, /* CPU reference only */
  FLASHGDN_DTYPE_INT32 = 4,
  FLASHGDN_DTYPE_INT64 = 5,
  FLASHGDN_DTYPE_BOOL = 6 /* one byte, 0 = false */
} flashgdn_dtype_t;

#define FLASHGDN_MAX_DIMS 4

typedef struct flashgdn_tensor {
  void* data;                        /* NULL: absent */
  int32_t dtype;                     /* flashgdn_dtype_t */
  int32_t ndim;                      /* 1..4 */
  int64_t shape[FLASHGDN_MAX_DIMS];  /* entries past ndim are ignored */
  int64_t stride[FLASHGDN_MAX_DIMS]; /* in elements, >= 0 */
} flashgdn_tensor_t;

/* Intra-card context parallelism of the forward (docs/design.md §5.1, §6.1): auto (a cost model from the SM count,
 * heads and lengths), on, off. Sequences are cut into segments whose transitions are combined by an fp32 scan; on
 * Hopper (bf16, K = V = 128) a transition drops the part of a segment before a window whose decay bound is <= e^-20
 * (the dropped term is below e^-20 of the state there), and heads without such decay keep the exact transition. */
typedef enum flashgdn_cp_mode {
  FLASHGDN_CP_AUTO = 0,
  FLASHGDN_CP_ON = 1,
  FLASHGDN_CP_OFF = 2
} flashgdn_cp_mode_t;

/*
 * Chunked forward.
 *   q, k            [B, T, Hqk, K]   fp16 | bf16, last dim contiguous
 *   v               [B, T, Hv,  V]   same dtype as q, last dim contiguous; Hv % Hqk == 0
 *   g               [B, T, Hv]       fp32, per-token log decay (<= 0)
 *   beta            [B, T, Hv]       fp32 | q's dtype
 *   o               [B, T, Hv,  V]   q's dtype (output, caller-allocated)
 *   cu_seqlens      [N + 1]          int32 | int64, device memory, optional (then B == 1)
 *   initial_state   [N, Hv, K, V]    fp32 | bf16, optional; [N, Hv, V, K] if state_v_first.
 *                   With state_indices: a pool [P, Hv, K, V] read and written in place.
 *   final_state     [N, Hv, K, V]    fp32 | bf16, optional output (same layout rule); must be
 *                   absent when state_indices is given (the pool receives the final states).
 *   state_indices   [N]              int32 | int64, optional: slot of each sequence in the pool;
 *                   -1 (or any value outside [0, P)) = start from zeros and write nothing back.
 *   has_initial_state [N]            bool, optional: false = start from zeros (still written back).
 *   cu_seqlens_host [N + 1]          int32 | int64, host memory, optional: a host copy of cu_seqlens
 *                   (as FLA's cu_seqlens_cpu). Used only to plan (V slice, context parallelism) from the
 *                   real lengths; never read by a kernel, so it does not affect results, only speed.
 *                   Checked (starts at 0, non-decreasing, ends <= T) and read during the call only.
 * N is the number of sequences: len(cu_seqlens) - 1, or B.
 */
typedef struct flashgdn_chunk_fwd_params {
  size_t struct_size; /* = sizeof(flashgdn_chunk_fwd_params_t); set by flashgdn_chunk_fwd_params_init */
  flashgdn_tensor_t q, k, v, g, beta;
  flashgdn_tensor_t o;
  flashgdn_tensor_t initial_state;
  flashgdn_tensor_t final_state;
  flashgdn_tensor_t cu_seqlens;
  flashgdn_tensor_t state_indices;
  flashgdn_tensor_t has_initial_state;
  float scale;            /* 0: default K^-0.5; otherwise any finite value */
  int32_t use_qk_l2norm;  /* nonzero: L2-normalise q and k per head inside the kernel */
  int32_t state_v_first;  /* nonzero: states are [.., V, K] instead of [.., K, V] */
  int32_t check_inputs;   /* nonzero: validate device contents (synchronises; not graph-capturable) */
  int32_t cp_mode;        /* flashgdn_cp_mode_t: auto (cost model), on, off */
  int32_t reserved0;
  flashgdn_tensor_t cu_seqlens_host; /* optional host copy of cu_seqlens (planning only; see above) */
} flashgdn_chunk_fwd_params_t;

/*
 * Chunked backward (training). Same inputs as the forward (no state pool), plus:
 *   d_o             [B, T, Hv, V]    q's dtype
 *   d_final_state   [N, Hv, K, V]    fp32, optional (gradient of the final state)
 *   dq, dk          [B, T, Hqk, K]   q's dtype (outputs; summed over the value heads of a group)
 *   dv              [B, T, Hv, V]    q's dtype
 *   dg              [B, T, Hv]       fp32, gradient w.r.t. the raw per-token g
 *   dbeta           [B, T, Hv]       beta's dtype
 *   d_initial_state [N, Hv, K, V]    fp32, required iff initial_state is given
 * The GPU backward recomputes the per-chunk states (docs/design.md §4.2); its workspace is about 2.7 KB per
 * token and value head at K = V = 128 (flashgdn_chunk_bwd_workspace_size). Its per-chunk kernel needs ~210 KB
 * of shared memory per block at K = V = 128 (sm_90: H100/H200); devices with less get
 * FLASHGDN_ERROR_UNSUPPORTED naming the sizes. Deterministic (no atomics), graph-capturable.
 */
typedef struct flashgdn_chunk_bwd_params {
  size_t struct_size;
  flashgdn_tensor_t q, k, v, g, beta;
  flashgdn_tensor_t initial_state;
  flashgdn_tensor_t cu_seqlens;
  flashgdn_tensor_t d_o;
  flashgdn_tensor_t d_final_state;
  flashgdn_tensor_t dq, dk, dv, dg, dbeta;
  flashgdn_tensor_t d_initial_state;
  float scale;
  int32_t use_qk_l2norm;
  int32_t state_v_first;
  int32_t check_inputs;
} flashgdn_chunk_bwd_params_t;

/* ---- library info and errors ---- */
FLASHGDN_API int32_t flashgdn_abi_version(void);
FLASHGDN_API const char* flashgdn_version_string(void);
/* Nonzero if this build contains GPU kernels. */
FLASHGDN_API int32_t flashgdn_built_with_gpu(void);
/* Thread-local message of the last failed call on this thread ("" if none). */
FLASHGDN_API const char* flashgdn_get_last_error(void);
FLASHGDN_API const char* flashgdn_status_string(flashgdn_status_t status);

/* ---- parameter and tensor helpers ---- */
FLASHGDN_API void flashgdn_chunk_fwd_params_init(flashgdn_chunk_fwd_params_t* params);
FLASHGDN_API void flashgdn_chunk_bwd_params_init(flashgdn_chunk_bwd_params_t* params);
/* Fills a contiguous (row-major) tensor description. */
FLASHGDN_API flashgdn_tensor_t flashgdn_make_tensor(void* data, flashgdn_dtype_t dtype, int32_t ndim,
                                                    const int64_t* shape);

/* ---- GPU entry points ---- */
/* Validates the parameters (shapes, dtypes, strides) and returns the workspace the call needs. Query it
 * with the device the call will run on current: with context parallelism (cp_mode) the size depends on
 * that device's SM count. */
FLASHGDN_API flashgdn_status_t flashgdn_chunk_fwd_workspace_size(const flashgdn_chunk_fwd_params_t* params,
                                                                 size_t* bytes);
FLASHGDN_API flashgdn_status_t flashgdn_chunk_fwd(const flashgdn_chunk_fwd_params_t* params, void* workspace,
                                                  size_t workspace_bytes, flashgdn_stream_t stream);
FLASHGDN_API flashgdn_status_t flashgdn_chunk_bwd_workspace_size(const flashgdn_chunk_bwd_params_t* params,
                                                                 size_t* bytes);
FLASHGDN_API flashgdn_status_t flashgdn_chunk_bwd(const flashgdn_chunk_bwd_params_t* params, void* workspace,
                                                  size_t workspace_bytes, flashgdn_stream_t stream);

/* ---- one-time setup (optional) ----
 * Does the process's one-time work for `device` (-1: the current device) that the first GPU call would otherwise do
 * itself (about 0.1 s on H100; README "First call"): the CUDA runtime of this library, the device's
 * attributes, the driver's tensor-map entry point, and the loading of the kernels of the sm_90a forward (bf16, K = V
 * = 128, default switches) and of the scheduler and CP kernels it uses. Other paths (fp16, other head dims, the
 * portable recurrence, the backward) load their kernels at their first call. Call it once per device at startup (for
 * example while loading a model), outside stream capture. It launches no kernel, allocates no memory, does not
 * synchronise, and leaves the current device as it found it. FLASHGDN_TRACE_INIT=1 prints its phases to stderr. */
FLASHGDN_API flashgdn_status_t flashgdn_init(int32_t device);

/* ---- CPU reference (host memory; any floating dtype incl. float64 for inputs and outputs) ----
 * In GPU builds every pointer is first checked with cudaPointerGetAttributes (device memory is an
 * FLASHGDN_ERROR_INVALID_ARGUMENT naming the argument); that call initialises the CUDA runtime if a driver
 * is present. */
typedef enum flashgdn_reference_algo {
  FLASHGDN_REFERENCE_RECURRENT_FP64 = 0, /* token-by-token recurrence in fp64 */
  FLASHGDN_REFERENCE_CHUNKED_FP32 = 1    /* chunked (64) fp32, mirrors the GPU decomposition */
} flashgdn_reference_algo_t;

FLASHGDN_API flashgdn_status_t flashgdn_reference_fwd(const flashgdn_chunk_fwd_params_t* params,
                                                      flashgdn_reference_algo_t algo);
/* Reverse mode of the fp64 recurrence. */
FLASHGDN_API flashgdn_status_t flashgdn_reference_bwd(const flashgdn_chunk_bwd_params_t* params);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASHGDN_FLASHGDN_H_ */
