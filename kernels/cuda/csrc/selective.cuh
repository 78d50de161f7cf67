// Shared pieces of the selective (S6) scan kernels: thread mapping, warp reductions, dispatch.
//
// Thread mapping (forward, backward and step): each channel d of a batch row is handled by NS
// consecutive lanes (NS a power of two, NS * NP >= N); lane j of a channel owns the states
// n = j*NP .. j*NP+NP-1 in registers.  A warp covers 32/NS consecutive channels, a block of
// kSelThreads threads covers kSelThreads/NS channels of one batch row: grid (Dm / that, Bt).
// The per-channel sums over n (y, du, ddt) are xor-shuffles over the NS lanes; the per-token
// sums over channels (dB, dC, dtimesteps) are xor-shuffles over the lanes of a warp that share
// j, then one atomic add per warp.
#pragma once

#include "common.cuh"
#include "kernels.h"

namespace lrnnx_cuda {

constexpr int kSelThreads = 128;
#ifndef LRNNX_SEL_NP
#define LRNNX_SEL_NP 4
#endif
constexpr int kSelNP = LRNNX_SEL_NP;  // states per thread (a build-time knob for experiments)
constexpr int kSelMaxN = 32 * kSelNP;

// Tokens per checkpoint chunk: 32 bytes of state type per thread-state, so the backward's
// shared-memory history (CK * kSelThreads * NP * sizeof(S)) is 16 KiB for every type and the
// per-token staging arrays fit beside it in the static 48 KiB.
template <typename S> constexpr int sel_ck() { return (int)(32 / sizeof(S)); }

// Launch a kernel template instantiated for the discretization method (0..3).
#define LRNNX_DISC_SWITCH(disc, ...)                 \
  switch (disc) {                                     \
    case MAMBA: { constexpr int D_ = MAMBA; __VA_ARGS__; } break;       \
    case ZOH: { constexpr int D_ = ZOH; __VA_ARGS__; } break;           \
    case BILINEAR: { constexpr int D_ = BILINEAR; __VA_ARGS__; } break; \
    default: { constexpr int D_ = DIRAC; __VA_ARGS__; } break;          \
  }

__device__ __forceinline__ float shfl_xor_(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ double shfl_xor_(double v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
template <typename R> __device__ __forceinline__ Cx<R> shfl_xor_(Cx<R> v, int m) {
  return {shfl_xor_(v.re, m), shfl_xor_(v.im, m)};
}
// Sum over the NS lanes of one channel (every one of them gets the total).
template <typename V> __device__ __forceinline__ V channel_sum(V v, int ns) {
  for (int o = 1; o < ns; o <<= 1) v = v + shfl_xor_(v, o);
  return v;
}
// Sum over the channels of a warp, per state slot j (every lane gets its slot's total).
template <typename V> __device__ __forceinline__ V warp_channels_sum(V v, int ns) {
  for (int o = ns; o < 32; o <<= 1) v = v + shfl_xor_(v, o);
  return v;
}

__device__ __forceinline__ void atomic_add_(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add_(double* p, double v) { atomicAdd(p, v); }
template <typename R> __device__ __forceinline__ void atomic_add_(R* base, int64_t i, R v) {
  atomic_add_(base + i, v);
}
template <typename R> __device__ __forceinline__ void atomic_add_(R* base, int64_t i, Cx<R> v) {
  atomic_add_(base + 2 * i, v.re);
  atomic_add_(base + 2 * i + 1, v.im);
}

struct SelMap {
  int lane, j, cw, warp;
  int64_t d, g;
  bool dok;
};

__device__ __forceinline__ SelMap sel_map(const SelParams& p, int ns) {
  SelMap m;
  m.lane = threadIdx.x & 31;
  m.warp = threadIdx.x >> 5;
  m.j = m.lane & (ns - 1);
  m.cw = m.lane / ns;
  const int cpw = 32 / ns, cpb = blockDim.x / ns;
  m.d = (int64_t)blockIdx.x * cpb + (int64_t)m.warp * cpw + m.cw;
  m.dok = m.d < p.Dm;
  const int64_t dpg = p.Dm / p.G;
  m.g = m.dok ? m.d / dpg : 0;
  return m;
}

// dt = softplus?(delta + bias) * ts, with the pieces the backward needs.
template <typename R> struct Dt {
  R v, sp, dt;
};
template <typename R> __device__ __forceinline__ Dt<R> make_dt(R delta, R bias, bool softplus,
                                                               bool has_ts, R ts) {
  Dt<R> r;
  r.v = delta + bias;
  r.sp = softplus ? softplus_(r.v) : r.v;
  r.dt = has_ts ? r.sp * ts : r.sp;
  return r;
}

// Channels per block and lanes per channel for a given N.
inline int sel_ns(int64_t N) {
  int ns = 1;
  while ((int64_t)ns * kSelNP < N) ns *= 2;
  return ns;
}

}  // namespace lrnnx_cuda
