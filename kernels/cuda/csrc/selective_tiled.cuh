// Pieces shared by the token-tiled (selective_tiled.cu) and state-parallel (selective_states.cu)
// selective-scan kernels: warp sums, the exp-only discretizations, the launcher.  Two
// translation units so that a first-use build compiles them in parallel.
#pragma once

#include "selective.cuh"

namespace lrnnx_cuda {

constexpr int kTileI = 8;  // tokens per warp piece / checkpoint chunk (== sel_ck<float>())
static_assert(kTileI == sel_ck<float>(), "warp pieces must be the fp32 checkpoint chunks");

// Sum of NV values (a power of two <= 32) over the 32 lanes of a warp.  On return v[0] of lane l
// holds the total of value index (l / (32 / NV)); 32 / NV lanes hold each total.
template <int M, int OFF, int NV>
__device__ __forceinline__ void lane_transpose_round(float (&v)[NV], int lane) {
  if constexpr (M >= 1) {
    const bool up = (lane & OFF) != 0;
#pragma unroll
    for (int k = 0; k < M; ++k) {
      const float send = up ? v[k] : v[k + M];
      const float keep = up ? v[k + M] : v[k];
      v[k] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
    }
    lane_transpose_round<M / 2, OFF / 2>(v, lane);
  } else if constexpr (OFF >= 1) {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], OFF);
    lane_transpose_round<0, OFF / 2>(v, lane);
  }
}
template <int NV>
__device__ __forceinline__ float lane_transpose_sum(float (&v)[NV], int lane) {
  static_assert(NV >= 1 && NV <= 32 && (NV & (NV - 1)) == 0, "NV: a power of two <= 32");
  lane_transpose_round<NV / 2, 16>(v, lane);
  return v[0];
}

// exp(x) as 2^(x log2 e) on the MUFU unit (ex2.approx: relative error < 2^-22, flushes results
// below 2^-126 to 0), as mamba_ssm does; the accurate expf costs ~8 instructions and these
// kernels evaluate it 2 (forward) or 3 (backward) times per token and state.  Used for the methods
// whose a = exp(dt A) is all they need (mamba / euler and dirac); zoh and bilinear keep the
// shared formulas (zoh's expm1 would lose digits through 2^x - 1).
constexpr float kLog2e = 1.4426950408889634f;
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// Register prefetches keep the raw elements (T) and convert them to float where they are used,
// after the tile's barrier: a conversion next to the load (as Store<T>::ld does) makes the warp
// wait there for the load, i.e. a full memory latency per tile before the barrier (H200, session
// 9: the half-precision state-parallel kernels were 12-15% slower than fp32 for that reason).
template <typename T> __device__ __forceinline__ T ld_raw(const T* p, bool ok) {
  return ok ? *p : T(0.f);
}
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// sigmoid(x) = 1 / (1 + 2^(-x log2 e)) on the MUFU unit (ex2.approx, rcp.approx: relative error
// ~3e-7; 0 for x < -88, where 2^(..) is inf): the accurate expf and IEEE division cost ~25
// instructions, once per (token, channel) in the state-parallel kernels' staging / epilogue.
__device__ __forceinline__ float sigmoid_fast(float x) {
  return __fdividef(1.f, 1.f + ex2_approx(-x * kLog2e));
}
template <int DISC>
__device__ __forceinline__ void disc_tiled(float dt, float A, float& a, float& s) {
  if constexpr (DISC == MAMBA || DISC == DIRAC) {
    a = ex2_approx(dt * (A * kLog2e));
    s = DISC == MAMBA ? dt : 1.f;
  } else {
    discretize_t<DISC>(dt, A, a, s);
  }
}
template <int DISC>
__device__ __forceinline__ void disc_grads_tiled(float dt, float A, float& a, float& s,
                                                 float& dadx, float& dsdt, float& dsdA) {
  if constexpr (DISC == MAMBA || DISC == DIRAC) {
    a = ex2_approx(dt * (A * kLog2e));
    dadx = a;
    s = DISC == MAMBA ? dt : 1.f;
    dsdt = DISC == MAMBA ? 1.f : 0.f;
    dsdA = 0.f;
  } else {
    discretize_grads_t<DISC>(dt, A, a, s, dadx, dsdt, dsdA);
  }
}

// Methods whose a is exp(dt A) and whose input scale s does not depend on A (mamba / euler: s = dt,
// dirac: s = 1): s * u is then one value per token, and the backward reuses a from its
// recomputation instead of evaluating the exponential a third time.
template <int DISC> constexpr bool kExpOnly = DISC == MAMBA || DISC == DIRAC;
template <int DISC> __device__ __forceinline__ float su_token(float dt, float u) {
  return DISC == MAMBA ? dt * u : u;
}

// Launch a tiled kernel: grid (channel blocks of 32, batch), W warps, dynamic shared memory
// (opted in once per kernel and device).
template <typename K>
inline void launch_tiled(K kernel, int W, size_t smem, const SelParams& p, cudaStream_t stream) {
  set_dynamic_smem(reinterpret_cast<const void*>(kernel), smem, current_device());
  dim3 grid((unsigned)((p.Dm + 31) / 32), (unsigned)p.Bt);
  kernel<<<grid, 32 * W, smem, stream>>>(p);
}

// The state-parallel kernels (selective_states.cu, selective_states_bwd.cu) for the problems they
// take (N <= 16), unless LRNNX_SEL_FWD / LRNNX_SEL_BWD = tiled: returns whether it launched.
bool launch_selective_states(const SelParams& p, cudaStream_t stream, bool bwd);
bool launch_selective_states_bwd(const SelParams& p, cudaStream_t stream);

}  // namespace lrnnx_cuda
