// Shared device code of the lrnnx CUDA kernels: a small complex type, storage <-> compute
// conversions, discretization formulas and their derivatives.
//
// Every kernel computes in `R` (float, or double for fp64 inputs), real or complex; storage
// types are float / double / __half / __nv_bfloat16 for real data and interleaved (re, im) pairs
// for complex data (what torch.view_as_real shows).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <mutex>
#include <unordered_map>

namespace lrnnx_cuda {

#define LRNNX_HD __host__ __device__ __forceinline__

// ---------------------------------------------------------------------------- complex numbers
template <typename R>
struct Cx {
  R re, im;
  Cx() = default;  // trivial, so Cx can live in __shared__ arrays
  LRNNX_HD Cx(R r) : re(r), im(0) {}
  LRNNX_HD Cx(R r, R i) : re(r), im(i) {}
};

template <typename R> LRNNX_HD Cx<R> operator+(Cx<R> x, Cx<R> y) { return {x.re + y.re, x.im + y.im}; }
template <typename R> LRNNX_HD Cx<R> operator-(Cx<R> x, Cx<R> y) { return {x.re - y.re, x.im - y.im}; }
template <typename R> LRNNX_HD Cx<R> operator*(Cx<R> x, Cx<R> y) {
  return {x.re * y.re - x.im * y.im, x.re * y.im + x.im * y.re};
}
template <typename R> LRNNX_HD Cx<R> operator*(R s, Cx<R> x) { return {s * x.re, s * x.im}; }
template <typename R> LRNNX_HD Cx<R> operator*(Cx<R> x, R s) { return {s * x.re, s * x.im}; }
template <typename R> LRNNX_HD Cx<R> operator/(Cx<R> x, Cx<R> y) {
  // Smith's algorithm: no overflow for moderate magnitudes.
  if (fabs(y.re) >= fabs(y.im)) {
    R r = y.im / y.re, den = y.re + y.im * r;
    return {(x.re + x.im * r) / den, (x.im - x.re * r) / den};
  }
  R r = y.re / y.im, den = y.re * r + y.im;
  return {(x.re * r + x.im) / den, (x.im * r - x.re) / den};
}
template <typename R> LRNNX_HD Cx<R>& operator+=(Cx<R>& x, Cx<R> y) { x.re += y.re; x.im += y.im; return x; }

// Real and complex through one interface.
template <typename R> LRNNX_HD R conj_(R x) { return x; }
template <typename R> LRNNX_HD Cx<R> conj_(Cx<R> x) { return {x.re, -x.im}; }
template <typename R> LRNNX_HD R re_(R x) { return x; }
template <typename R> LRNNX_HD R re_(Cx<R> x) { return x.re; }
template <typename R> LRNNX_HD R abs1_(R x) { return fabs(x); }
template <typename R> LRNNX_HD R abs1_(Cx<R> x) { return hypot(x.re, x.im); }

// Two independent real channels processed as one element (elementwise arithmetic): lets the
// diag scan move half-precision data as 4-byte pairs, so a warp reads full 128-byte lines.
struct F2 {
  float x, y;
  F2() = default;
  LRNNX_HD F2(float v) : x(v), y(v) {}
  LRNNX_HD F2(float a, float b) : x(a), y(b) {}
};
LRNNX_HD F2 operator+(F2 a, F2 b) { return {a.x + b.x, a.y + b.y}; }
LRNNX_HD F2 operator*(F2 a, F2 b) { return {a.x * b.x, a.y * b.y}; }

template <typename T> struct RealOf { using type = T; };
template <> struct RealOf<F2> { using type = float; };
template <typename R> struct RealOf<Cx<R>> { using type = R; };
template <typename T> struct IsCx { static constexpr bool value = false; };
template <typename R> struct IsCx<Cx<R>> { static constexpr bool value = true; };

// exp / expm1 / sin / cos in the precision of R.
LRNNX_HD float exp_(float x) { return expf(x); }
LRNNX_HD double exp_(double x) { return exp(x); }
LRNNX_HD float expm1_(float x) { return expm1f(x); }
LRNNX_HD double expm1_(double x) { return expm1(x); }
LRNNX_HD float log1p_(float x) { return log1pf(x); }
LRNNX_HD double log1p_(double x) { return log1p(x); }
LRNNX_HD void sincos_(float x, float* s, float* c) { sincosf(x, s, c); }
LRNNX_HD void sincos_(double x, double* s, double* c) { sincos(x, s, c); }

template <typename R> LRNNX_HD Cx<R> exp_(Cx<R> x) {
  R s, c;
  sincos_(x.im, &s, &c);
  R e = exp_(x.re);
  return {e * c, e * s};
}
// exp(x) - 1 without cancellation: Re = expm1(a) cos(b) - 2 sin(b/2)^2, Im = exp(a) sin(b).
template <typename R> LRNNX_HD Cx<R> expm1_(Cx<R> x) {
  R s, c, sh, ch;
  sincos_(x.im, &s, &c);
  sincos_(R(0.5) * x.im, &sh, &ch);
  return {expm1_(x.re) * c - R(2) * sh * sh, exp_(x.re) * s};
}

// ---------------------------------------------------------------------------- storage types
template <typename T> struct Store;  // load/store of one scalar in compute precision
template <> struct Store<float> {
  using R = float;
  static LRNNX_HD float ld(const float* p) { return *p; }
  static LRNNX_HD void st(float* p, float v) { *p = v; }
};
template <> struct Store<double> {
  using R = double;
  static LRNNX_HD double ld(const double* p) { return *p; }
  static LRNNX_HD void st(double* p, double v) { *p = v; }
};
template <> struct Store<__half> {
  using R = float;
  static __device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }
};
template <> struct Store<__nv_bfloat16> {
  using R = float;
  static __device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  static __device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};

// Element access for a "scalar" S (R or Cx<R>) stored as T (complex: two consecutive T).
template <typename T, typename S> struct Elem {  // real S
  static __device__ __forceinline__ S ld(const T* base, int64_t i) { return Store<T>::ld(base + i); }
  static __device__ __forceinline__ void st(T* base, int64_t i, S v) { Store<T>::st(base + i, v); }
};
template <typename T, typename R> struct Elem<T, Cx<R>> {
  static __device__ __forceinline__ Cx<R> ld(const T* base, int64_t i) {
    return {Store<T>::ld(base + 2 * i), Store<T>::ld(base + 2 * i + 1)};
  }
  static __device__ __forceinline__ void st(T* base, int64_t i, Cx<R> v) {
    Store<T>::st(base + 2 * i, v.re);
    Store<T>::st(base + 2 * i + 1, v.im);
  }
};
// Read-only loads through the non-coherent cache (the data is never written by the kernel):
// lets the compiler hoist them above stores, e.g. the next tokens' B_t / C_t.
template <typename S> struct Ldg;
template <> struct Ldg<float> {
  static __device__ __forceinline__ float ld(const float* b, int64_t i) { return __ldg(b + i); }
};
template <> struct Ldg<double> {
  static __device__ __forceinline__ double ld(const double* b, int64_t i) { return __ldg(b + i); }
};
template <> struct Ldg<Cx<float>> {
  static __device__ __forceinline__ Cx<float> ld(const float* b, int64_t i) {
    float2 v = __ldg(reinterpret_cast<const float2*>(b) + i);
    return {v.x, v.y};
  }
};
template <> struct Ldg<Cx<double>> {
  static __device__ __forceinline__ Cx<double> ld(const double* b, int64_t i) {
    double2 v = __ldg(reinterpret_cast<const double2*>(b) + i);
    return {v.x, v.y};
  }
};

// Pairs of channels: two half-precision values as one 4-byte load, fp32 pairs as 8 bytes.
template <> struct Elem<__half, F2> {
  static __device__ __forceinline__ F2 ld(const __half* base, int64_t i) {
    const float2 v = __half22float2(reinterpret_cast<const __half2*>(base)[i]);
    return {v.x, v.y};
  }
  static __device__ __forceinline__ void st(__half* base, int64_t i, F2 v) {
    reinterpret_cast<__half2*>(base)[i] = __floats2half2_rn(v.x, v.y);
  }
};
template <> struct Elem<__nv_bfloat16, F2> {
  static __device__ __forceinline__ F2 ld(const __nv_bfloat16* base, int64_t i) {
    const float2 v = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(base)[i]);
    return {v.x, v.y};
  }
  static __device__ __forceinline__ void st(__nv_bfloat16* base, int64_t i, F2 v) {
    reinterpret_cast<__nv_bfloat162*>(base)[i] = __floats2bfloat162_rn(v.x, v.y);
  }
};
template <> struct Elem<float, F2> {
  static __device__ __forceinline__ F2 ld(const float* base, int64_t i) {
    const float2 v = reinterpret_cast<const float2*>(base)[i];
    return {v.x, v.y};
  }
  static __device__ __forceinline__ void st(float* base, int64_t i, F2 v) {
    reinterpret_cast<float2*>(base)[i] = make_float2(v.x, v.y);
  }
};

// Two consecutive fp32 as one 8-byte load (complex64).
template <> struct Elem<float, Cx<float>> {
  static __device__ __forceinline__ Cx<float> ld(const float* base, int64_t i) {
    float2 v = reinterpret_cast<const float2*>(base)[i];
    return {v.x, v.y};
  }
  static __device__ __forceinline__ void st(float* base, int64_t i, Cx<float> v) {
    reinterpret_cast<float2*>(base)[i] = make_float2(v.re, v.im);
  }
};

// ---------------------------------------------------------------------------- math helpers
template <typename R> LRNNX_HD R sigmoid_(R x) { return R(1) / (R(1) + exp_(-x)); }
// torch.nn.functional.softplus (beta 1, threshold 20)
template <typename R> LRNNX_HD R softplus_(R v) { return v > R(20) ? v : log1p_(exp_(v)); }
template <typename R> LRNNX_HD R softplus_grad_(R v) { return v > R(20) ? R(1) : sigmoid_(v); }

// phi1(x) = (exp(x) - 1) / x, Taylor series (12 terms) for |x| < 0.1 as kernels/discretize.py.
template <typename S> LRNNX_HD S phi1_(S x) {
  using R = typename RealOf<S>::type;
  if (abs1_(x) < R(0.1)) {
    const R c[13] = {R(1.0 / 6227020800.0), R(1.0 / 479001600.0), R(1.0 / 39916800.0),
                     R(1.0 / 3628800.0),    R(1.0 / 362880.0),    R(1.0 / 40320.0),
                     R(1.0 / 5040.0),       R(1.0 / 720.0),       R(1.0 / 120.0),
                     R(1.0 / 24.0),         R(1.0 / 6.0),         R(0.5),
                     R(1.0)};
    S s = S(c[0]);
#pragma unroll
    for (int k = 1; k < 13; ++k) s = s * x + S(c[k]);
    return s;
  }
  return expm1_(x) / x;
}
// phi1'(x) = (exp(x) - phi1(x)) / x; series sum_j (j+1) x^j / (j+2)! for |x| < 0.1.
template <typename S> LRNNX_HD S dphi1_(S x, S ex, S p1) {
  using R = typename RealOf<S>::type;
  if (abs1_(x) < R(0.1)) {
    const R c[12] = {R(12.0 / 6227020800.0), R(11.0 / 479001600.0), R(10.0 / 39916800.0),
                     R(9.0 / 3628800.0),     R(8.0 / 362880.0),     R(7.0 / 40320.0),
                     R(6.0 / 5040.0),        R(5.0 / 720.0),        R(4.0 / 120.0),
                     R(3.0 / 24.0),          R(2.0 / 6.0),          R(0.5)};
    S s = S(c[0]);
#pragma unroll
    for (int k = 1; k < 12; ++k) s = s * x + S(c[k]);
    return s;
  }
  return (ex - p1) / x;
}

// Discretization codes, the order of DISC_CODES in kernels/triton/_host.py
enum Disc : int { MAMBA = 0, ZOH = 1, BILINEAR = 2, DIRAC = 3 };

// A_bar and the input scale s (B_bar = s * B) at x = dt * A.
template <typename S, typename R>
__device__ __forceinline__ void discretize(int disc, R dt, S A, S& abar, S& scale) {
  S x = dt * A;
  if (disc == BILINEAR) {
    S den = S(R(1)) - R(0.5) * x;
    abar = (S(R(1)) + R(0.5) * x) / den;
    scale = S(dt) / den;
  } else {
    abar = exp_(x);
    if (disc == ZOH) scale = dt * phi1_(x);
    else if (disc == DIRAC) scale = S(R(1));
    else scale = S(dt);
  }
}

// ... and the derivatives dA_bar/dx, ds/ddt, ds/dA (holomorphic in A for the complex case).
template <typename S, typename R>
__device__ __forceinline__ void discretize_grads(int disc, R dt, S A, S& abar, S& scale, S& dadx,
                                                 S& ds_ddt, S& ds_dA) {
  S x = dt * A;
  if (disc == BILINEAR) {
    S den = S(R(1)) - R(0.5) * x;
    S inv = S(R(1)) / den;
    abar = (S(R(1)) + R(0.5) * x) * inv;
    scale = dt * inv;
    S inv2 = inv * inv;
    dadx = inv2;
    ds_ddt = inv2;
    ds_dA = (R(0.5) * dt * dt) * inv2;
  } else {
    abar = exp_(x);
    dadx = abar;
    if (disc == ZOH) {
      S p1 = phi1_(x);
      scale = dt * p1;
      ds_ddt = abar;
      ds_dA = (dt * dt) * dphi1_(x, abar, p1);
    } else if (disc == DIRAC) {
      scale = S(R(1));
      ds_ddt = S(R(0));
      ds_dA = S(R(0));
    } else {
      scale = S(dt);
      ds_ddt = S(R(1));
      ds_dA = S(R(0));
    }
  }
}

// The same with the method fixed at compile time (the scan kernels are instantiated per method,
// which keeps their unrolled inner loops small).
template <int DISC, typename S, typename R>
__device__ __forceinline__ void discretize_t(R dt, S A, S& abar, S& scale) {
  S x = dt * A;
  if constexpr (DISC == BILINEAR) {
    S den = S(R(1)) - R(0.5) * x;
    abar = (S(R(1)) + R(0.5) * x) / den;
    scale = S(dt) / den;
  } else {
    abar = exp_(x);
    if constexpr (DISC == ZOH) scale = dt * phi1_(x);
    else if constexpr (DISC == DIRAC) scale = S(R(1));
    else scale = S(dt);
  }
}

template <int DISC, typename S, typename R>
__device__ __forceinline__ void discretize_grads_t(R dt, S A, S& abar, S& scale, S& dadx,
                                                   S& ds_ddt, S& ds_dA) {
  S x = dt * A;
  if constexpr (DISC == BILINEAR) {
    S inv = S(R(1)) / (S(R(1)) - R(0.5) * x);
    abar = (S(R(1)) + R(0.5) * x) * inv;
    scale = dt * inv;
    S inv2 = inv * inv;
    dadx = inv2;
    ds_ddt = inv2;
    ds_dA = (R(0.5) * dt * dt) * inv2;
  } else {
    abar = exp_(x);
    dadx = abar;
    if constexpr (DISC == ZOH) {
      S p1 = phi1_(x);
      scale = dt * p1;
      ds_ddt = abar;
      ds_dA = (dt * dt) * dphi1_(x, abar, p1);
    } else if constexpr (DISC == DIRAC) {
      scale = S(R(1));
      ds_ddt = S(R(0));
      ds_dA = S(R(0));
    } else {
      scale = S(dt);
      ds_ddt = S(R(1));
      ds_dA = S(R(0));
    }
  }
}

// ---------------------------------------------------------------------------- launch helpers
// Host-side CUDA queries cost a call into the driver each; on a virtualized host (the H200
// machine runs under gVisor) the kernels' wrappers spent tens of microseconds per op on them, so
// what does not change is asked once per device.
constexpr int kMaxDevices = 64;

// Largest dynamic shared memory a block may opt in to on the current device (cached).
inline size_t smem_optin_cached(int dev) {
  static int cache[kMaxDevices] = {};  // 0 = not asked yet
  if (dev < 0 || dev >= kMaxDevices) {
    int v = 48 * 1024;
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return (size_t)v;
  }
  if (cache[dev] == 0) {
    int v = 48 * 1024;
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cache[dev] = v;
  }
  return (size_t)cache[dev];
}

// Opt kernel `kern` in to `smem` bytes of dynamic shared memory on device `dev`, once per
// (kernel, device) unless a larger size is asked later (keyed by the kernel's address).  Set
// for every non-zero size: the 48 KiB default bounds static plus dynamic shared memory, so a
// kernel with static arrays needs the opt-in below 48 KiB of dynamic memory too (a version that
// skipped sizes <= 48 KiB failed the bf16 adjoint's launch, 48 KiB + 8 KiB static, with
// "invalid argument").
inline void set_dynamic_smem(const void* kern, size_t smem, int dev) {
  if (smem == 0) return;
  static std::mutex mu;
  static std::unordered_map<const void*, size_t> done[kMaxDevices];
  const bool cacheable = dev >= 0 && dev < kMaxDevices;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = done[dev].find(kern);
    if (it != done[dev].end() && it->second >= smem) return;
  }
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(mu);
    size_t& v = done[dev][kern];
    if (v < smem) v = smem;
  }
}

// Streaming multiprocessors of device dev (cached per device).
inline int sm_count_cached(int dev) {
  static int cache[kMaxDevices] = {};  // 0 = not asked yet
  auto ask = [](int d) {
    int v = 0;
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, d);
    return v > 0 ? v : 1;
  };
  if (dev < 0 || dev >= kMaxDevices) return ask(dev);
  if (cache[dev] == 0) cache[dev] = ask(dev);
  return cache[dev];
}

inline int current_device() {
  int dev = 0;
  cudaGetDevice(&dev);
  return dev;
}

}  // namespace lrnnx_cuda
