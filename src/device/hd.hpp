// FLASHGDN_HD: __host__ __device__ under nvcc, nothing for the host compiler, so that small helpers
// (descriptor encoders, workspace image sizes, the blocked solve's phases) are shared by kernels and host
// tests.
#pragma once

#if defined(__CUDACC__)
#define FLASHGDN_HD __host__ __device__
#else
#define FLASHGDN_HD
#endif
