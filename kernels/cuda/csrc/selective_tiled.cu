// Selective (S6) scan, tiled over tokens: forward and fused backward for real A, B, C with an
// fp32 state (fp32 / fp16 / bf16 storage), N <= kTileMaxN, and the 32 channels of a block in one
// group of B / C.  Everything else runs in selective_fwd.cu / selective_bwd.cu.  For N <= 16 the
// state-parallel kernels of selective_states.cu run instead (by default; see there).
//
// Why: the per-channel kernels walk the whole sequence in one thread group; at mamba's shapes
// (B 8, D 1536) that is ~12 warps per SM, each a long chain of dependent steps.  Here a block is
// 32 channels (lanes: every per-token load is one coalesced row) x W warps, and the warps split
// each tile of W * I tokens into I-token pieces (I = 8, the checkpoint interval of the fp32
// state, selective.cuh), so a warp's I tokens are independent work for its exps and loads.
// Per tile and state n:
//   pass 1: each warp scans its I tokens from zero: (P, H) = (prod a_i, local end state)
//   barrier; pass 2: h entering the warp = fold of the tile carry with the (P, H) of the warps
//   before it; the warp re-runs its tokens from that state and accumulates y_i += C_i h_i.
// The state entering every warp piece is the checkpoint the backward reads (layout
// (Bt, n_ck, N, Dm): coalesced over channels; the tensor only travels between these kernels).
//
// Backward, tiles from the last to the first, per state n (PyTorch's conventions, real data):
//   pass A: local adjoint from zero over the warp's tokens, walking back:
//           lam_i = gy_i C_i + a_{i+1} lam_{i+1};  (P, Lc) = (prod a_i, a_0 lam_0)
//   barrier; pass B: the adjoint entering from the right = fold of the tile's right carry with
//   the (P, Lc) of the warps after it; h_{t-1} re-run from the checkpoint; then the tokens are
//   walked back accumulating ddt, du, y (for dz) per token, dA per (channel, state), and dB / dC
//   per (token, state), which are sums over the 32 channels of a warp: a transposing shuffle
//   reduction (16 values in 16 shuffles), then one atomic per warp, token and state.
#include <type_traits>

#include "selective_tiled.cuh"

#include <cstdlib>

namespace lrnnx_cuda {

constexpr int kTileMaxN = 32;  // shared memory grows with N x W; larger N uses the other kernels

// K consecutive states as one shared-memory access (LDS.64 / LDS.128): the tiled kernels work
// on groups of K states, so a warp has K independent recurrences in flight.
template <int K> struct alignas(4 * K) Vk { float v[K]; };
template <int K> __device__ __forceinline__ Vk<K> vfill(float x) {
  Vk<K> r;
#pragma unroll
  for (int k = 0; k < K; ++k) r.v[k] = x;
  return r;
}

// Copy a tile's rows of B and C (token stride `stride` in global memory, N states) to shared
// memory rows of NS >= N floats (the padding and rows at or past `rows` are zeros).  All loads
// are issued before the stores.
template <int NT>
__device__ __forceinline__ void stage_bc(const float* __restrict__ Bm, const float* __restrict__ Cm,
                                         float* tB, float* tC, int64_t base, int64_t stride,
                                         int TT, int N, int NS, int rows, int tid) {
  constexpr int PER = (kTileI * (NT / 32) * kTileMaxN + NT - 1) / NT;
  const int total = TT * NS;
  float bst[PER], cst[PER];
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int e = tid + k * NT;
    const int tt = e / NS, n = e - tt * NS;
    const bool ok = e < total && tt < rows && n < N;
    const int64_t bo = base + (int64_t)tt * stride + n;
    bst[k] = ok ? __ldg(Bm + bo) : 0.f;
    cst[k] = ok ? __ldg(Cm + bo) : 0.f;
  }
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int e = tid + k * NT;
    if (e < total) { tB[e] = bst[k]; tC[e] = cst[k]; }
  }
}

// Per-block constants: A for the block's channels as groups of K states ([NG][32] vectors; the
// padding states have A = 0, i.e. a = 1, and B = C = 0, so they stay at zero), and an initial
// per-channel state vector (h0, or the gradient of h_last), zeros when `init` is null.
template <int K>
__device__ __forceinline__ void load_groups(const float* __restrict__ Am,
                                            const float* __restrict__ init, Vk<K>* sA,
                                            Vk<K>* sinit, int64_t b, int64_t d0, int64_t Dm,
                                            int N, int NG, int tid, int NT) {
  for (int e = tid; e < NG * 32; e += NT) {
    const int q = e >> 5;
    const int64_t dd = d0 + (e & 31);
    Vk<K> a, h;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int n = q * K + k;
      const bool ok = dd < Dm && n < N;
      a.v[k] = ok ? Am[dd * N + n] : 0.f;
      h.v[k] = (ok && init != nullptr) ? init[(b * Dm + dd) * N + n] : 0.f;
    }
    sA[e] = a;
    sinit[e] = h;
  }
}

// ----------------------------------------------------------------------------------- forward
// fp32 tokens: block-uniform full tiles and pointer increments (H200, B8 L2048 D1536 N16: forward
// 0.531 -> 0.507 ms); fp16 / bf16 keep per-token index math, which measured faster for them
// (0.531 vs 0.564 ms with the increments).
template <typename T> constexpr bool kPtrTokens = std::is_same<T, float>::value;

// Register caps through the minimum resident blocks: 24 warps per SM for the forward (<= 85
// registers), 16 for the backward (<= 128).
template <int W> constexpr int fwd_min_blocks() { return W >= 16 ? 1 : 24 / W; }
template <int W> constexpr int bwd_min_blocks() { return W >= 16 ? 1 : 16 / W; }
constexpr int kFwdK = 4;  // states per group, forward
constexpr int kBwdK = 2;  // backward (more live values per state)

template <typename T, int DISC, int W>
__global__ void __launch_bounds__(32 * W, fwd_min_blocks<W>())
sel_fwd_tiled_kernel(const SelParams p) {
  constexpr int I = kTileI, TT = W * I, NT = 32 * W, K = kFwdK;
  using V = Vk<K>;
  extern __shared__ float4 smem4[];
  const int N = (int)p.N, NG = (N + K - 1) / K, NS = NG * K;
  float* sB = reinterpret_cast<float*>(smem4);  // [2][TT][NS]  (double-buffered over tiles)
  float* sC = sB + 2 * TT * NS;                 // [2][TT][NS]
  V* sP = reinterpret_cast<V*>(sC + 2 * TT * NS);  // [NG][W][32]
  V* sH = sP + NG * W * 32;                     // [NG][W][32]
  V* scar = sH + NG * W * 32;                   // [2][NG][32] state entering the tile
  V* sA = scar + 2 * NG * 32;                   // [NG][32]
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int64_t b = blockIdx.y, L = p.L, Dm = p.Dm, G = p.G, d0 = (int64_t)blockIdx.x * 32;
  const int64_t d = d0 + lane;
  const bool dok = d < Dm;
  const int64_t g = d0 / (Dm / G);
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const float* __restrict__ ts = static_cast<const float*>(p.ts);
  T* __restrict__ yout = static_cast<T*>(p.y);
  float* __restrict__ ck = static_cast<float*>(p.ck);
  const bool has_z = z != nullptr, has_ts = ts != nullptr;

  load_groups<K>(static_cast<const float*>(p.A), static_cast<const float*>(p.h0), sA, scar, b,
                 d0, Dm, N, NG, tid, NT);
  const float Dd = (dok && p.D != nullptr) ? static_cast<const float*>(p.D)[d] : 0.f;
  const float bias = (dok && p.bias != nullptr) ? static_cast<const float*>(p.bias)[d] : 0.f;
  const int64_t ntiles = (L + TT - 1) / TT;
  int par = 0;
  for (int64_t tile = 0; tile < ntiles; ++tile, par ^= 1) {
    const int64_t t0 = tile * TT + (int64_t)w * I;
    // Block-uniform "every token of the tile is real": no per-token bounds tests then.  Token
    // addresses advance by pointer increments (int64 index math per token and tensor was a
    // visible share of the instructions).
    const bool full = (tile + 1) * TT <= L;
    const int64_t off0 = (b * L + t0) * Dm + d;
    // this thread's tokens, and its share of the tile's B / C rows: loads issued together
    float uv[I], dtv[I], zv[I];
    if constexpr (kPtrTokens<T>) {
      const T* pu = u + off0;
      const T* pd = delta + off0;
      const T* pz = has_z ? z + off0 : nullptr;
      const float* pt = has_ts ? ts + b * L + t0 : nullptr;
#pragma unroll
      for (int i = 0; i < I; ++i) {
        const bool tin = full || t0 + i < L;
        const bool ok = dok && tin;
        uv[i] = ok ? Store<T>::ld(pu) : 0.f;
        const float dv = ok ? Store<T>::ld(pd) : 0.f;
        const float tv = (tin && has_ts) ? *pt : 0.f;
        dtv[i] = ok ? make_dt(dv, bias, p.softplus, has_ts, tv).dt : 0.f;
        zv[i] = (ok && has_z) ? Store<T>::ld(pz) : 0.f;
        pu += Dm;
        pd += Dm;
        if (has_z) pz += Dm;
        if (has_ts) ++pt;
      }
    } else {
#pragma unroll
      for (int i = 0; i < I; ++i) {
        const int64_t t = t0 + i;
        const bool ok = dok && t < L;
        const int64_t off = (b * L + t) * Dm + d;
        uv[i] = ok ? Store<T>::ld(u + off) : 0.f;
        const float dv = ok ? Store<T>::ld(delta + off) : 0.f;
        const float tv = (t < L && has_ts) ? ts[b * L + t] : 0.f;
        dtv[i] = ok ? make_dt(dv, bias, p.softplus, has_ts, tv).dt : 0.f;
        zv[i] = (ok && has_z) ? Store<T>::ld(z + off) : 0.f;
      }
    }
    float* tB = sB + par * TT * NS;
    float* tC = sC + par * TT * NS;
    stage_bc<NT>(static_cast<const float*>(p.B), static_cast<const float*>(p.C), tB, tC,
                 ((b * L + tile * TT) * G + g) * N, G * N, TT, N, NS,
                 (int)(L - tile * TT < TT ? L - tile * TT : TT), tid);
    __syncthreads();  // B / C of this tile staged; the previous tile's pass 2 is done
    // pass 1: each warp's (P, H) from a zero state
    const V* wB = reinterpret_cast<const V*>(tB + w * I * NS);
    const V* wC = reinterpret_cast<const V*>(tC + w * I * NS);
    for (int q = 0; q < NG; ++q) {
      const V A = sA[q * 32 + lane];
      V P = vfill<K>(1.f), H = vfill<K>(0.f);
#pragma unroll
      for (int i = 0; i < I; ++i) {
        const V Bv = wB[i * NG + q];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          float a, s;
          disc_tiled<DISC>(dtv[i], A.v[k], a, s);
          const float bx = kExpOnly<DISC> ? su_token<DISC>(dtv[i], uv[i]) * Bv.v[k]
                                          : s * (uv[i] * Bv.v[k]);
          H.v[k] = a * H.v[k] + bx;
          P.v[k] *= a;
        }
      }
      sP[(q * W + w) * 32 + lane] = P;
      sH[(q * W + w) * 32 + lane] = H;
    }
    __syncthreads();  // every warp's (P, H) is visible
    // pass 2: the true state entering the warp's piece, then the outputs
    float y[I];
#pragma unroll
    for (int i = 0; i < I; ++i) y[i] = 0.f;
    const int64_t kc = t0 / I;
    const bool store = p.store_ck && dok && t0 < L;
    const V* cin = scar + par * NG * 32;
    V* cout = scar + (par ^ 1) * NG * 32;
    for (int q = 0; q < NG; ++q) {
      V h = cin[q * 32 + lane];
      for (int w2 = 0; w2 < w; ++w2) {
        const V P = sP[(q * W + w2) * 32 + lane], H = sH[(q * W + w2) * 32 + lane];
#pragma unroll
        for (int k = 0; k < K; ++k) h.v[k] = P.v[k] * h.v[k] + H.v[k];
      }
      if (store) {
#pragma unroll
        for (int k = 0; k < K; ++k)
          if (q * K + k < N) ck[((b * p.n_ck + kc) * N + q * K + k) * Dm + d] = h.v[k];
      }
      const V A = sA[q * 32 + lane];
#pragma unroll
      for (int i = 0; i < I; ++i) {
        const V Bv = wB[i * NG + q], Cv = wC[i * NG + q];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          float a, s;
          disc_tiled<DISC>(dtv[i], A.v[k], a, s);
          const float bx = kExpOnly<DISC> ? su_token<DISC>(dtv[i], uv[i]) * Bv.v[k]
                                          : s * (uv[i] * Bv.v[k]);
          h.v[k] = a * h.v[k] + bx;
          y[i] += Cv.v[k] * h.v[k];
        }
      }
      if (w == W - 1) cout[q * 32 + lane] = h;  // the next tile's carry (other buffer)
    }
    if constexpr (kPtrTokens<T>) {
      T* py = yout + off0;
#pragma unroll
      for (int i = 0; i < I; ++i) {
        if (dok && (full || t0 + i < L)) {
          const float gate = has_z ? zv[i] * sigmoid_(zv[i]) : 1.f;
          Store<T>::st(py, (y[i] + Dd * uv[i]) * gate);
        }
        py += Dm;
      }
    } else {
#pragma unroll
      for (int i = 0; i < I; ++i) {
        const int64_t t = t0 + i;
        if (dok && t < L) {
          const float gate = has_z ? zv[i] * sigmoid_(zv[i]) : 1.f;
          Store<T>::st(yout + (b * L + t) * Dm + d, (y[i] + Dd * uv[i]) * gate);
        }
      }
    }
  }
  __syncthreads();
  const V* fin = scar + par * NG * 32;  // written by the last warp in the final tile
  for (int e = tid; e < NG * 32; e += NT) {
    const int64_t dd = d0 + (e & 31);
    const V h = fin[e];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int n = (e >> 5) * K + k;
      if (dd < Dm && n < N) static_cast<float*>(p.last)[(b * Dm + dd) * N + n] = h.v[k];
    }
  }
}

// ---------------------------------------------------------------------------------- backward
template <typename T, int DISC, int W>
__global__ void __launch_bounds__(32 * W, bwd_min_blocks<W>())
sel_bwd_tiled_kernel(const SelParams p) {
  constexpr int I = kTileI, TT = W * I, NT = 32 * W, K = kBwdK;
  using V = Vk<K>;
  extern __shared__ float4 smem4[];
  const int N = (int)p.N, NG = (N + K - 1) / K, NS = NG * K;
  float* sB = reinterpret_cast<float*>(smem4);  // [2][TT][NS]
  float* sC = sB + 2 * TT * NS;                 // [2][TT][NS]
  V* sP = reinterpret_cast<V*>(sC + 2 * TT * NS);  // [NG][W][32]
  V* sL = sP + NG * W * 32;                     // [NG][W][32]
  V* sdA = sL + NG * W * 32;                    // [NG][W][32] per-thread dA accumulators
  V* src = sdA + NG * W * 32;                   // [2][NG][32] adjoint entering from the right
  V* sA = src + 2 * NG * 32;                    // [NG][32]
  float* sred = reinterpret_cast<float*>(sA + NG * 32);  // [2][W][32] dD, dbias at the end
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int64_t b = blockIdx.y, L = p.L, Dm = p.Dm, G = p.G, d0 = (int64_t)blockIdx.x * 32;
  const int64_t d = d0 + lane;
  const bool dok = d < Dm;
  const int64_t g = d0 / (Dm / G);
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  const float* __restrict__ ts = static_cast<const float*>(p.ts);
  const float* __restrict__ ck = static_cast<const float*>(p.ck);
  float* __restrict__ dB = static_cast<float*>(p.dB);
  float* __restrict__ dC = static_cast<float*>(p.dC);
  const bool has_z = z != nullptr, has_ts = ts != nullptr, has_dy = dy != nullptr;

  load_groups<K>(static_cast<const float*>(p.A), static_cast<const float*>(p.dlast), sA, src,
                 b, d0, Dm, N, NG, tid, NT);
  for (int e = tid; e < NG * NT; e += NT) sdA[e] = vfill<K>(0.f);
  const float Dd = (dok && p.D != nullptr) ? static_cast<const float*>(p.D)[d] : 0.f;
  const float bias = (dok && p.bias != nullptr) ? static_cast<const float*>(p.bias)[d] : 0.f;
  float dDacc = 0.f, dbacc = 0.f;
  const int64_t ntiles = (L + TT - 1) / TT;
  int par = 0;
  for (int64_t tile = ntiles - 1; tile >= 0; --tile, par ^= 1) {
    const int64_t t0 = tile * TT + (int64_t)w * I;
    // u, dt and the output-gate gradient gy stay in registers through the tile; delta, z and dy
    // are read again at its end (cache hits) rather than held, to keep the register count down
    float uv[I], dtv[I], gy[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const int64_t t = t0 + i;
      const bool ok = dok && t < L;
      const int64_t off = (b * L + t) * Dm + d;
      uv[i] = ok ? Store<T>::ld(u + off) : 0.f;
      const float dv = ok ? Store<T>::ld(delta + off) : 0.f;
      const float tv = (t < L && has_ts) ? ts[b * L + t] : 0.f;
      dtv[i] = ok ? make_dt(dv, bias, p.softplus, has_ts, tv).dt : 0.f;
      const float zi = (ok && has_z) ? Store<T>::ld(z + off) : 0.f;
      const float dyi = (ok && has_dy) ? Store<T>::ld(dy + off) : 0.f;
      gy[i] = has_z ? dyi * zi * sigmoid_(zi) : dyi;
    }
    float* tB = sB + par * TT * NS;
    float* tC = sC + par * TT * NS;
    stage_bc<NT>(static_cast<const float*>(p.B), static_cast<const float*>(p.C), tB, tC,
                 ((b * L + tile * TT) * G + g) * N, G * N, TT, N, NS,
                 (int)(L - tile * TT < TT ? L - tile * TT : TT), tid);
    __syncthreads();
    const V* wB = reinterpret_cast<const V*>(tB + w * I * NS);
    const V* wC = reinterpret_cast<const V*>(tC + w * I * NS);
    // pass A: local adjoint from zero, per state
    for (int q = 0; q < NG; ++q) {
      const V A = sA[q * 32 + lane];
      V P = vfill<K>(1.f), inc = vfill<K>(0.f);
#pragma unroll
      for (int i = I - 1; i >= 0; --i) {
        const V Cv = wC[i * NG + q];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          float a, s;
          disc_tiled<DISC>(dtv[i], A.v[k], a, s);
          inc.v[k] = a * (gy[i] * Cv.v[k] + inc.v[k]);
          P.v[k] *= a;
        }
      }
      sP[(q * W + w) * 32 + lane] = P;
      sL[(q * W + w) * 32 + lane] = inc;
    }
    __syncthreads();
    // pass B
    float ddt[I], du[I], y[I];
#pragma unroll
    for (int i = 0; i < I; ++i) { ddt[i] = 0.f; du[i] = 0.f; y[i] = 0.f; }
    const int64_t kc = t0 / I;
    const bool live = t0 < L;  // the warp's piece holds real tokens
    const V* rin = src + par * NG * 32;
    V* rout = src + (par ^ 1) * NG * 32;
    for (int q = 0; q < NG; ++q) {
      V c = rin[q * 32 + lane];
      for (int w2 = W - 1; w2 > w; --w2) {
        const V P = sP[(q * W + w2) * 32 + lane], Lc = sL[(q * W + w2) * 32 + lane];
#pragma unroll
        for (int k = 0; k < K; ++k) c.v[k] = Lc.v[k] + P.v[k] * c.v[k];
      }
      if (w == 0) {
        const V P = sP[q * W * 32 + lane], Lc = sL[q * W * 32 + lane];
        V cl;
#pragma unroll
        for (int k = 0; k < K; ++k) cl.v[k] = Lc.v[k] + P.v[k] * c.v[k];
        rout[q * 32 + lane] = cl;
        if (tile == 0 && dok) {
#pragma unroll
          for (int k = 0; k < K; ++k)
            if (q * K + k < N) static_cast<float*>(p.dh0)[(b * Dm + d) * N + q * K + k] = cl.v[k];
        }
      }
      const V A = sA[q * 32 + lane];
      float hp[K][I + 1];
#pragma unroll
      for (int k = 0; k < K; ++k)
        hp[k][0] = (live && dok && q * K + k < N) ? ck[((b * p.n_ck + kc) * N + q * K + k) * Dm + d]
                                                  : 0.f;
      float av[K][I];  // a of the recomputation, reused below for the exp-only methods
#pragma unroll
      for (int i = 0; i < I; ++i) {
        const V Bv = wB[i * NG + q];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          float a, s;
          disc_tiled<DISC>(dtv[i], A.v[k], a, s);
          av[k][i] = a;
          const float bx = kExpOnly<DISC> ? su_token<DISC>(dtv[i], uv[i]) * Bv.v[k]
                                          : s * (uv[i] * Bv.v[k]);
          hp[k][i + 1] = a * hp[k][i] + bx;
        }
      }
      float red[K * I];  // dB of (state k, token i) at k * I + i
      V dAq = vfill<K>(0.f);
      V inc = c;
#pragma unroll
      for (int i = I - 1; i >= 0; --i) {
        const V Bv = wB[i * NG + q], Cv = wC[i * NG + q];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          float a, s, dadx, dsdt, dsdA;
          if constexpr (kExpOnly<DISC>) {
            a = dadx = av[k][i];
            s = DISC == MAMBA ? dtv[i] : 1.f;
            dsdt = DISC == MAMBA ? 1.f : 0.f;
            dsdA = 0.f;
          } else {
            disc_grads_tiled<DISC>(dtv[i], A.v[k], a, s, dadx, dsdt, dsdA);
          }
          const float lam = gy[i] * Cv.v[k] + inc.v[k];
          inc.v[k] = a * lam;
          const float Gx = dadx * lam * hp[k][i];
          const float Gs = uv[i] * lam * Bv.v[k];
          ddt[i] += A.v[k] * Gx + dsdt * Gs;
          dAq.v[k] += dtv[i] * Gx + dsdA * Gs;
          du[i] += s * Bv.v[k] * lam;
          y[i] += Cv.v[k] * hp[k][i + 1];
          red[k * I + i] = uv[i] * s * lam;
        }
      }
      V acc = sdA[(q * W + w) * 32 + lane];
#pragma unroll
      for (int k = 0; k < K; ++k) acc.v[k] += dAq.v[k];
      sdA[(q * W + w) * 32 + lane] = acc;
      // dB, then dC = gy_t h_t, summed over the warp's channels: lane l ends with the total of
      // value (l >> 1) of the K * I = 16 (one atomic per value from the even lanes)
      static_assert(K * I == 16, "the reduction below maps 16 values to lane pairs");
      const int idx = lane >> 1, kk = idx / I, ii = idx % I;
      const int64_t t = t0 + ii;
      const bool put = (lane & 1) == 0 && t < L && q * K + kk < N;
      const int64_t bo = ((b * L + t) * G + g) * N + q * K + kk;
      const float totB = lane_transpose_sum<K * I>(red, lane);
      if (put) atomicAdd(dB + bo, totB);
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int i = 0; i < I; ++i) red[k * I + i] = gy[i] * hp[k][i + 1];
      const float totC = lane_transpose_sum<K * I>(red, lane);
      if (put) atomicAdd(dC + bo, totC);
    }
    float vts[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const int64_t t = t0 + i;
      const bool ok = dok && t < L;
      const int64_t off = (b * L + t) * Dm + d;
      const float dv = ok ? Store<T>::ld(delta + off) : 0.f;
      const float tv = (t < L && has_ts) ? ts[b * L + t] : 0.f;
      const Dt<float> qd = make_dt(dv, bias, p.softplus, has_ts, tv);
      const float fac = (has_ts ? tv : 1.f) * (p.softplus ? softplus_grad_(qd.v) : 1.f);
      const float gv = ddt[i] * fac;
      vts[i] = ok ? ddt[i] * qd.sp : 0.f;
      if (ok) {
        dDacc += gy[i] * uv[i];
        dbacc += gv;
        Store<T>::st(static_cast<T*>(p.du) + off, du[i] + gy[i] * Dd);
        Store<T>::st(static_cast<T*>(p.ddelta) + off, gv);
        if (has_z) {
          const float zi = Store<T>::ld(z + off);
          const float dyi = has_dy ? Store<T>::ld(dy + off) : 0.f;
          const float yv = y[i] + Dd * uv[i];
          const float sg = sigmoid_(zi);
          Store<T>::st(static_cast<T*>(p.dz) + off, dyi * yv * (sg * (1.f + zi * (1.f - sg))));
        }
      }
    }
    if (has_ts) {  // dts_t = sum over channels of ddt * softplus(v)
      const float tot = lane_transpose_sum<I>(vts, lane);
      const int64_t t = t0 + (lane >> 2);
      if ((lane & 3) == 0 && t < L) atomicAdd(static_cast<float*>(p.dts) + b * L + t, tot);
    }
  }
  sred[w * 32 + lane] = dDacc;
  sred[(W + w) * 32 + lane] = dbacc;
  __syncthreads();
  for (int e = tid; e < NG * 32; e += NT) {
    const int q = e >> 5, l = e & 31;
    const int64_t dd = d0 + l;
    V acc = vfill<K>(0.f);
#pragma unroll
    for (int w2 = 0; w2 < W; ++w2) {
      const V v = sdA[(q * W + w2) * 32 + l];
#pragma unroll
      for (int k = 0; k < K; ++k) acc.v[k] += v.v[k];
    }
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (dd < Dm && q * K + k < N) static_cast<float*>(p.dA)[(b * Dm + dd) * N + q * K + k] = acc.v[k];
  }
  if (w == 0 && dok) {
    float a1 = 0.f, a2 = 0.f;
#pragma unroll
    for (int w2 = 0; w2 < W; ++w2) { a1 += sred[w2 * 32 + lane]; a2 += sred[(W + w2) * 32 + lane]; }
    static_cast<float*>(p.dD)[b * Dm + d] = a1;
    static_cast<float*>(p.dbias)[b * Dm + d] = a2;
  }
}

// ------------------------------------------------------------------------------------- host
// Warps per block: 8 for the forward, 16 for the backward (H200, B8 L2048 D1536 N16: fwd W8
// 0.86-1.0 ms vs W16 0.96-0.99; fwd+bwd with bwd W16 3.06-3.08 ms vs W8 3.23-3.31, W4 3.5: the
// backward holds 128 registers, so W16 is one block of 16 warps per SM and 2.9 waves for 384
// blocks, W8 2 blocks and 1.45 waves).  LRNNX_SEL_TILE_W (4, 8, 16), or per direction
// LRNNX_SEL_TILE_WF / LRNNX_SEL_TILE_WB, override them for experiments.
static int tile_warps(const char* var, int dflt) {
  const char* v = std::getenv(var);
  if (v == nullptr) v = std::getenv("LRNNX_SEL_TILE_W");
  const int w = v != nullptr ? std::atoi(v) : dflt;
  return (w == 4 || w == 8 || w == 16) ? w : dflt;
}

bool selective_tiled_ok(const SelParams& p) {
  // read per call (a getenv, no cache) so a test can compare both kernels in one process; the
  // forward and its backward must see the same value, as the checkpoint layouts differ
  const char* v = std::getenv("LRNNX_SEL_TILED");
  const bool off = v != nullptr && v[0] == '0';
  if (off || p.cplx || p.dtype == DType::F64 || p.N > kTileMaxN || p.N < 1) return false;
  return p.G == 1 || (p.Dm / p.G) % 32 == 0;  // a block's 32 channels share one group of B / C
}

// Largest dynamic shared memory a block may opt in to on the current device.
static size_t smem_optin() { return smem_optin_cached(current_device()); }
static size_t fwd_smem(int64_t N, int W) {
  const size_t NS = (size_t)((N + kFwdK - 1) / kFwdK * kFwdK), TT = (size_t)W * kTileI;
  return sizeof(float) * (4 * TT * NS + 2 * NS * W * 32 + 3 * NS * 32);
}
static size_t bwd_smem(int64_t N, int W) {
  const size_t NS = (size_t)((N + kBwdK - 1) / kBwdK * kBwdK), TT = (size_t)W * kTileI;
  return sizeof(float) * (4 * TT * NS + 3 * NS * W * 32 + 3 * NS * 32 + 2 * W * 32);
}


template <typename T, int W>
static void fwd_tiled_w(const SelParams& p, cudaStream_t stream) {
  const size_t smem = fwd_smem(p.N, W);
  LRNNX_DISC_SWITCH(p.disc, launch_tiled(sel_fwd_tiled_kernel<T, D_, W>, W, smem, p, stream))
}

template <typename T, int W>
static void bwd_tiled_w(const SelParams& p, cudaStream_t stream) {
  const size_t smem = bwd_smem(p.N, W);
  LRNNX_DISC_SWITCH(p.disc, launch_tiled(sel_bwd_tiled_kernel<T, D_, W>, W, smem, p, stream))
}

template <typename T>
static void tiled_typed(const SelParams& p, cudaStream_t stream, bool bwd) {
  int W = bwd ? tile_warps("LRNNX_SEL_TILE_WB", 16) : tile_warps("LRNNX_SEL_TILE_WF", 8);
  // fewer warps when the block's shared memory would not fit (N = 32 takes 272 KiB at bwd W16)
  const size_t cap = smem_optin();
  while (W > 4 && (bwd ? bwd_smem(p.N, W) : fwd_smem(p.N, W)) > cap) W /= 2;
  if (bwd) {
    if (W == 4) bwd_tiled_w<T, 4>(p, stream);
    else if (W == 16) bwd_tiled_w<T, 16>(p, stream);
    else bwd_tiled_w<T, 8>(p, stream);
  } else {
    if (W == 4) fwd_tiled_w<T, 4>(p, stream);
    else if (W == 16) fwd_tiled_w<T, 16>(p, stream);
    else fwd_tiled_w<T, 8>(p, stream);
  }
}

void launch_selective_tiled(const SelParams& p, cudaStream_t stream, bool bwd) {
  if (launch_selective_states(p, stream, bwd)) return;  // selective_states.cu (N <= 16)
  switch (p.dtype) {
    case DType::F32: tiled_typed<float>(p, stream, bwd); break;
    case DType::F16: tiled_typed<__half>(p, stream, bwd); break;
    case DType::BF16: tiled_typed<__nv_bfloat16>(p, stream, bwd); break;
    default: break;  // excluded by selective_tiled_ok
  }
}

}  // namespace lrnnx_cuda
