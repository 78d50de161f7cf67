// Diagonal linear recurrence h_t = a_t h_{t-1} + b_t on (B, L, D) tensors with D contiguous,
// forward and fused adjoint (backward), real or complex, any L, varlen, reverse.
//
// Layout: block (32, W): lane = channel (32 consecutive channels, so each warp load is one
// contiguous row segment), warp w = a segment of ITEMS consecutive tokens inside a tile of
// W * ITEMS tokens.  Per tile every thread
//   1. loads its ITEMS (a, b) pairs (all loads in flight together),
//   2. scans them from a zero state, keeping the cumulative products and local states,
//   3. publishes its segment's aggregate (prod a, local h) in shared memory; after one barrier
//      each thread composes the aggregates of the earlier segments onto the running carry,
//   4. writes h = cumprod * carry_in + local h.
// The carry leaves the tile in registers, and the next tile's inputs are already in flight
// (loaded one tile ahead).  Traffic: a and b read once, h written once.
#include "common.cuh"
#include "kernels.h"

namespace lrnnx_cuda {

constexpr int kMaxWarps = 8;

// Two resident blocks per SM for real data caps the registers at 128: the fp32 / bf16 channel-pair
// adjoint otherwise takes 162 (one block per SM); H200 B16 L4096 D1024 fwd+bwd fp32 0.675 ->
// 0.549 ms, bf16 0.831 -> 0.634 ms.  Complex keeps one (capped, complex64 went 0.718 -> 0.865).
template <typename S> constexpr int diag_min_blocks() { return IsCx<S>::value ? 1 : 2; }

template <typename T, typename S, int ITEMS, bool BWD>
__global__ void __launch_bounds__(32 * kMaxWarps, diag_min_blocks<S>())
diag_scan_kernel(const DiagParams p) {
  using R = typename RealOf<S>::type;
  using E = Elem<T, S>;   // storage
  using EC = Elem<R, S>;  // compute-type tensors (h0, last)
  __shared__ S sP[2][kMaxWarps][32];
  __shared__ S sH[2][kMaxWarps][32];

  const int lane = threadIdx.x, w = threadIdx.y, W = blockDim.y;
  const int64_t D = p.D, L = p.L;
  const int64_t d = (int64_t)blockIdx.x * 32 + lane;
  const bool dok = d < D;
  const int64_t s = blockIdx.y;
  int64_t start, end, batch;
  if (p.cu != nullptr) {
    start = p.cu[s];
    end = p.cu[s + 1];
    batch = 0;
  } else {
    start = 0;
    end = L;
    batch = s;
  }
  const int64_t len = end - start;
  // Scan direction in time: the adjoint runs against the forward direction.
  const bool rev = BWD ? !p.reverse : p.reverse;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* out = static_cast<T*>(p.out);
  const int64_t row = batch * L * D + d;                    // + t * D
  const int64_t arow = (p.a_bcast ? 0 : batch) * L * D + d;  // + t * D

  S carry = S(R(0));
  if (dok && p.h0 != nullptr) carry = EC::ld(static_cast<const R*>(p.h0), s * D + d);
  S hinit = S(R(0));  // bwd: the forward state before the first forward token
  if (BWD && dok && p.h0f != nullptr) hinit = EC::ld(static_cast<const R*>(p.h0f), s * D + d);

  const int64_t tile = (int64_t)W * ITEMS;
  // Forward: the tile's inputs are loaded one tile ahead (registers Pn / Hn), so the DRAM latency
  // of tile k+1 overlaps the scan, barrier and stores of tile k.  The adjoint, which reads three
  // streams, would need ~160 registers for that (one block per SM), so it loads in place.
  auto load = [&](int64_t base, S (&P)[ITEMS], S (&H)[ITEMS], S (&F)[ITEMS]) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t q = base + (int64_t)w * ITEMS + i;  // position in scan order
      const bool ok = dok && q < len;
      const int64_t t = rev ? end - 1 - q : start + q;
      if (!BWD) {
        P[i] = ok ? E::ld(a, arow + t * D) : S(R(1));
      } else {
        // multiplier of position q: conj(a) of the token scanned just before (1 at q = 0)
        const int64_t tp = rev ? t + 1 : t - 1;
        P[i] = (ok && q > 0) ? conj_(E::ld(a, arow + tp * D)) : S(R(1));
        // grad_a_t = g_t * conj(forward state before t) = position q + 1 in this order
        F[i] = hinit;
        if (ok && p.ga != nullptr && q + 1 < len)
          F[i] = E::ld(static_cast<const T*>(p.hf), row + (rev ? t - 1 : t + 1) * D);
      }
      H[i] = (ok && b != nullptr) ? E::ld(b, row + t * D) : S(R(0));
    }
  };
  S Pn[ITEMS], Hn[ITEMS], Fn[ITEMS];
  if (!BWD && len > 0) load(0, Pn, Hn, Fn);
  int buf = 0;
  for (int64_t base = 0; base < len; base += tile) {
    S P[ITEMS], H[ITEMS], F[ITEMS];
    if constexpr (BWD) {
      load(base, P, H, F);
    } else {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        P[i] = Pn[i];
        H[i] = Hn[i];
      }
      if (base + tile < len) load(base + tile, Pn, Hn, Fn);
    }
    S cp = S(R(1)), ch = S(R(0));
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      ch = P[i] * ch + H[i];
      cp = cp * P[i];
      P[i] = cp;
      H[i] = ch;
    }
    sP[buf][w][lane] = cp;
    sH[buf][w][lane] = ch;
    __syncthreads();
    S c = carry, cin = carry;
    for (int j = 0; j < W; ++j) {
      if (j == w) cin = c;
      c = sP[buf][j][lane] * c + sH[buf][j][lane];
    }
    carry = c;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t q = base + (int64_t)w * ITEMS + i;
      if (dok && q < len) {
        const int64_t t = rev ? end - 1 - q : start + q;
        const S h = P[i] * cin + H[i];
        E::st(out, row + t * D, h);
        if (BWD && p.ga != nullptr) E::st(static_cast<T*>(p.ga), row + t * D, h * conj_(F[i]));
      }
    }
    buf ^= 1;
  }
  if (dok) {
    S res = carry;
    if (BWD && len > 0) {
      // grad_h0 = conj(a at the first forward token) * g there
      const int64_t tf = rev ? start : end - 1;
      res = conj_(E::ld(a, arow + tf * D)) * carry;
    }
    EC::st(static_cast<R*>(p.last), s * D + d, res);
  }
}

template <typename T, typename S, int ITEMS>
static void launch_typed(const DiagParams& p, cudaStream_t stream) {
  const int64_t per_seq = p.cu != nullptr ? (p.L + p.nseq - 1) / (p.nseq > 0 ? p.nseq : 1) : p.L;
  int W = kMaxWarps;
  while (W > 1 && (int64_t)(W / 2) * ITEMS >= per_seq) W /= 2;  // short sequences: fewer warps
  dim3 block(32, W);
  dim3 grid((unsigned)((p.D + 31) / 32), (unsigned)p.nseq);
  if (p.bwd) diag_scan_kernel<T, S, ITEMS, true><<<grid, block, 0, stream>>>(p);
  else diag_scan_kernel<T, S, ITEMS, false><<<grid, block, 0, stream>>>(p);
}

// Channel groups: G consecutive real channels per lane move as one vector load, which keeps
// enough bytes in flight per thread (the kernel is otherwise latency-bound: measured on an H200,
// fp32 B16 L4096 D1024 fwd 0.231 ms with one channel per lane, 0.202 ms with pairs; bf16
// 0.385 ms -> 0.232 ms with pairs).  Only when D % G == 0 and every pointer is aligned to the
// vector (a tensor may be a view starting at any element), else one channel per lane.
static bool grouped(const DiagParams& p, int G, size_t store_bytes) {
  if (p.D % G != 0) return false;
  auto ok = [](const void* q, size_t bytes) {
    return q == nullptr || reinterpret_cast<uintptr_t>(q) % bytes == 0;
  };
  const size_t sv = G * store_bytes, cv = G * sizeof(float);
  return ok(p.a, sv) && ok(p.b, sv) && ok(p.out, sv) && ok(p.hf, sv) && ok(p.ga, sv) &&
         ok(p.h0, cv) && ok(p.last, cv) && ok(p.h0f, cv);
}

template <typename T, typename V, int ITEMS>
static void launch_grouped(const DiagParams& p, int G, cudaStream_t stream) {
  DiagParams q = p;
  q.D = p.D / G;
  launch_typed<T, V, ITEMS>(q, stream);
}

void launch_diag_scan(const DiagParams& p, cudaStream_t stream) {
  if (p.nseq == 0 || p.D == 0) return;
  switch (p.dtype) {
    case DType::F32:
      if (p.cplx) launch_typed<float, Cx<float>, 8>(p, stream);
      else if (grouped(p, 2, 4)) launch_grouped<float, F2, 8>(p, 2, stream);
      else launch_typed<float, float, 8>(p, stream);
      break;
    case DType::F64:
      if (p.cplx) launch_typed<double, Cx<double>, 4>(p, stream);
      else launch_typed<double, double, 8>(p, stream);
      break;
    // complex32 is not accepted (ops.cpp), so half precisions are real here.  Pairs, 8 items:
    // measured 0.232 / 0.807 ms (bf16 fwd / fwd+bwd); four channels per lane (8-byte loads)
    // 0.332 / 0.911 ms with 4 items (8 items: 128-180 registers); pairs with 16 items 0.237 / 1.12.
    case DType::F16:
      if (grouped(p, 2, 2)) launch_grouped<__half, F2, 8>(p, 2, stream);
      else launch_typed<__half, float, 16>(p, stream);
      break;
    case DType::BF16:
      if (grouped(p, 2, 2)) launch_grouped<__nv_bfloat16, F2, 8>(p, 2, stream);
      else launch_typed<__nv_bfloat16, float, 16>(p, stream);
      break;
  }
}

// ---------------------------------------------------------------- one step
template <typename T, typename S>
__global__ void diag_step_kernel(const DiagStepParams p) {
  using R = typename RealOf<S>::type;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.B * p.D) return;
  const int64_t ia = p.a_bcast ? i % p.D : i;
  const S a = Elem<T, S>::ld(static_cast<const T*>(p.a), ia);
  const S b = Elem<T, S>::ld(static_cast<const T*>(p.b), i);
  S h = S(R(0));
  if (p.h != nullptr) h = Elem<R, S>::ld(static_cast<const R*>(p.h), i);
  Elem<R, S>::st(static_cast<R*>(p.out), i, a * h + b);
}

template <typename T, typename S>
static void step_typed(const DiagStepParams& p, cudaStream_t stream) {
  const int64_t n = p.B * p.D;
  const int threads = 256;
  diag_step_kernel<T, S><<<(unsigned)((n + threads - 1) / threads), threads, 0, stream>>>(p);
}

void launch_diag_step(const DiagStepParams& p, cudaStream_t stream) {
  if (p.B * p.D == 0) return;
  switch (p.dtype) {
    case DType::F32: p.cplx ? step_typed<float, Cx<float>>(p, stream) : step_typed<float, float>(p, stream); break;
    case DType::F64: p.cplx ? step_typed<double, Cx<double>>(p, stream) : step_typed<double, double>(p, stream); break;
    case DType::F16: step_typed<__half, float>(p, stream); break;
    case DType::BF16: step_typed<__nv_bfloat16, float>(p, stream); break;
  }
}

}  // namespace lrnnx_cuda
