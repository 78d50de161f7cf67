// Selective (S6) scan, tiled over tokens: forward and fused backward for real A, B, C with an
// fp32 state (fp32 / fp16 / bf16 storage), N <= kTileMaxN, and the 32 channels of a block in one
// group of B / C.  Everything else runs in selective_fwd.cu / selective_bwd.cu.
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

#include "selective.cuh"

#include <cstdlib>
#include <cstring>

namespace lrnnx_cuda {

constexpr int kTileI = 8;      // tokens per warp piece (== sel_ck<float>())
constexpr int kTileMaxN = 32;  // shared memory grows with N x W; larger N uses the other kernels
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

// ------------------------------------------------------------------- forward, state-parallel
// The default forward (LRNNX_SEL_FWD=tiled selects the two-pass kernel above, for comparisons).
// Why: the two-pass forward evaluates exp(dt A) twice per (token, state) and runs the
// recurrence twice (local from zero, then from the true state), and the warps of a tile fold
// their predecessors' aggregates (an imbalanced serial fold).  Here the block's NW warps split
// the *states* instead of the tokens: warp w owns states w*K .. w*K+K-1 of the block's 32
// channels (lanes) and walks every token in order, so each (token, state) costs one exponential,
// one recurrence step and one multiply-add into y, with no fold.  The chain h = a h + b is one
// dependent FMA per token; the exponentials and loads do not depend on it, so a warp's tokens
// are independent work for them.  y_t = sum over states needs the warps' partial sums: each warp
// writes sum over its K states per token to shared memory, and after a barrier every thread adds
// the NW partials of its tokens in a fixed order (deterministic), applies D and the z gate and
// stores.  Per tile of kSpT tokens:
//   commit the previous iteration's register prefetch (u, dt = softplus(delta + bias) * ts, z;
//   B / C rows transposed to [state][token]) to shared memory (double-buffered), issue the
//   global loads of the next tile, barrier, the state walk, barrier, the output epilogue.
// The state entering every 8-token chunk is stored as the backward's checkpoint (the same
// (Bt, n_ck, N, Dm) layout as the two-pass forward).
constexpr int kSpT = 32;         // tokens per tile
constexpr int kSpTP = kSpT + 4;  // padded row (LDS.128 of 4 tokens, conflict-free per quarter warp)
static_assert(kSpT % kTileI == 0, "tiles must hold whole checkpoint chunks");

// Register caps through the minimum resident blocks: 2 states x 8 warps: 3 blocks (<= 80
// registers; ptxas spills 8 bytes for mamba; 384 blocks of mamba's shapes are one wave);
// 4 warps (8 prefetched tokens per thread): 128 registers (at 80 they spilled 220-530 bytes).
template <int K, int NW> constexpr int sp_min_blocks() { return NW >= 8 ? 3 : 4; }

template <typename T, int DISC, int K, int NW>
__global__ void __launch_bounds__(32 * NW, sp_min_blocks<K, NW>())
sel_fwd_states_kernel(const SelParams p) {
  constexpr int TT = kSpT, TP = kSpTP, NT = 32 * NW, NP = K * NW, J = TT / NW;
  constexpr int PB = (TT * NP + NT - 1) / NT;  // B (and C) elements staged per thread per tile
  static_assert(TT % NW == 0 && TT % 4 == 0, "tile / warps");
  extern __shared__ float4 smem4[];
  float* sdt = reinterpret_cast<float*>(smem4);  // [2][32][TP]   dt per (channel, token)
  float* su = sdt + 2 * 32 * TP;                 // [2][32][TP]   u
  float* sB = su + 2 * 32 * TP;                  // [2][NP][TP]   B per (state, token)
  float* sC = sB + 2 * NP * TP;                  // [2][NP][TP]
  float* syp = sC + 2 * NP * TP;                 // [NW][TT][32]  per-warp partial y
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int64_t b = blockIdx.y, L = p.L, Dm = p.Dm, G = p.G, N = p.N, d0 = (int64_t)blockIdx.x * 32;
  const int64_t d = d0 + lane;
  const bool dok = d < Dm;
  const int64_t g = d0 / (Dm / G);
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const float* __restrict__ ts = static_cast<const float*>(p.ts);
  const float* __restrict__ Bg = static_cast<const float*>(p.B);
  const float* __restrict__ Cg = static_cast<const float*>(p.C);
  T* __restrict__ yout = static_cast<T*>(p.y);
  float* __restrict__ ck = static_cast<float*>(p.ck);
  const bool has_z = z != nullptr, has_ts = ts != nullptr;

  // this warp's states: A (scaled by log2 e for the exp-only methods) and the initial state
  float Ak[K], h[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t n = (int64_t)w * K + k;
    const bool ok = dok && n < N;
    const float a = ok ? static_cast<const float*>(p.A)[d * N + n] : 0.f;
    Ak[k] = kExpOnly<DISC> ? a * kLog2e : a;
    h[k] = (ok && p.h0 != nullptr) ? static_cast<const float*>(p.h0)[(b * Dm + d) * N + n] : 0.f;
  }
  const float Dd = (dok && p.D != nullptr) ? static_cast<const float*>(p.D)[d] : 0.f;
  const float bias = (dok && p.bias != nullptr) ? static_cast<const float*>(p.bias)[d] : 0.f;

  // register prefetch of one tile: thread (w, lane) holds tokens w + j * NW of channel d
  float pu[J], pd[J], pz[J], pt[J], pB[PB], pC[PB];
  auto load = [&](int64_t tile) {
    const int64_t tb = tile * TT;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int64_t t = tb + w + j * NW;
      const bool tin = t < L, ok = dok && tin;
      const int64_t off = (b * L + t) * Dm + d;
      pu[j] = ok ? Store<T>::ld(u + off) : 0.f;
      pd[j] = ok ? Store<T>::ld(delta + off) : 0.f;
      pz[j] = (ok && has_z) ? Store<T>::ld(z + off) : 0.f;
      pt[j] = (tin && has_ts) ? ts[b * L + t] : 0.f;
    }
#pragma unroll
    for (int q = 0; q < PB; ++q) {
      const int e = tid + q * NT;
      const int tt = e / NP, n = e - tt * NP;
      const int64_t t = tb + tt;
      const bool ok = e < TT * NP && t < L && n < N;
      const int64_t bo = ((b * L + t) * G + g) * N + n;
      pB[q] = ok ? __ldg(Bg + bo) : 0.f;
      pC[q] = ok ? __ldg(Cg + bo) : 0.f;
    }
  };

  const int64_t ntiles = (L + TT - 1) / TT;
  load(0);
  float cu[J], cz[J];
  for (int64_t tile = 0; tile < ntiles; ++tile) {
    const int buf = (int)(tile & 1);
    float* bdt = sdt + buf * 32 * TP;
    float* bu = su + buf * 32 * TP;
    float* bB = sB + buf * NP * TP;
    float* bC = sC + buf * NP * TP;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int tt = w + j * NW;
      const bool ok = dok && tile * TT + tt < L;
      const float dt = ok ? make_dt(pd[j], bias, p.softplus, has_ts, pt[j]).dt : 0.f;
      bdt[lane * TP + tt] = dt;
      bu[lane * TP + tt] = pu[j];
      cu[j] = pu[j];
      cz[j] = pz[j];
    }
#pragma unroll
    for (int q = 0; q < PB; ++q) {
      const int e = tid + q * NT;
      if (e < TT * NP) {
        const int tt = e / NP, n = e - tt * NP;
        bB[n * TP + tt] = pB[q];
        bC[n * TP + tt] = pC[q];
      }
    }
    if (tile + 1 < ntiles) load(tile + 1);
    __syncthreads();  // this tile staged; every thread is past the previous epilogue
    // the state walk: K chains over the tile's tokens, 4 tokens per shared-memory vector
    const float4* rdt = reinterpret_cast<const float4*>(bdt + lane * TP);
    const float4* ru = reinterpret_cast<const float4*>(bu + lane * TP);
    float* yw = syp + w * TT * 32 + lane;
    const int64_t tb = tile * TT;
    const bool store = p.store_ck && dok;
#pragma unroll
    for (int i4 = 0; i4 < TT / 4; ++i4) {
      const float4 dt4 = rdt[i4], u4 = ru[i4];
      const float dts[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, us[4] = {u4.x, u4.y, u4.z, u4.w};
      float4 Bv[K], Cv[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        Bv[k] = reinterpret_cast<const float4*>(bB + (w * K + k) * TP)[i4];
        Cv[k] = reinterpret_cast<const float4*>(bC + (w * K + k) * TP)[i4];
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = i4 * 4 + j;
        if ((i % kTileI) == 0 && store && tb + i < L) {
#pragma unroll
          for (int k = 0; k < K; ++k) {
            const int64_t n = (int64_t)w * K + k;
            if (n < N) ck[((b * p.n_ck + (tb + i) / kTileI) * N + n) * Dm + d] = h[k];
          }
        }
        const float dt = dts[j];
        const float sux = su_token<DISC>(dt, us[j]);
        float y = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const float Bk = j == 0 ? Bv[k].x : j == 1 ? Bv[k].y : j == 2 ? Bv[k].z : Bv[k].w;
          const float Ck = j == 0 ? Cv[k].x : j == 1 ? Cv[k].y : j == 2 ? Cv[k].z : Cv[k].w;
          float a, bx;
          if constexpr (kExpOnly<DISC>) {
            a = ex2_approx(dt * Ak[k]);
            bx = sux * Bk;
          } else {
            float s;
            discretize_t<DISC>(dt, Ak[k], a, s);
            bx = s * (us[j] * Bk);
          }
          h[k] = a * h[k] + bx;
          y += Ck * h[k];
        }
        yw[i * 32] = y;
      }
    }
    __syncthreads();  // every warp's partial sums are in shared memory
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int tt = w + j * NW;
      const int64_t t = tb + tt;
      if (dok && t < L) {
        float y = 0.f;
#pragma unroll
        for (int w2 = 0; w2 < NW; ++w2) y += syp[(w2 * TT + tt) * 32 + lane];
        const float gate = has_z ? cz[j] * sigmoid_(cz[j]) : 1.f;
        Store<T>::st(yout + (b * L + t) * Dm + d, (y + Dd * cu[j]) * gate);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t n = (int64_t)w * K + k;
    if (dok && n < N) static_cast<float*>(p.last)[(b * Dm + d) * N + n] = h[k];
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

// ------------------------------------------------------------------ backward, state-parallel
// The default backward (LRNNX_SEL_BWD=tiled selects the two-pass one above).  As the
// state-parallel forward: warp w owns states w*K .. w*K+K-1 of the block's 32 channels and walks
// the tiles from the last, its adjoint carried in registers, so there is no local-adjoint pass
// and no fold.  Per 8-token chunk (from the last): the states are recomputed from the chunk's
// checkpoint (a = exp(dt A) and h kept in registers), then the tokens are walked back:
//   lam = gy C + inc;  inc = a lam;  G = inc h_{t-1} (= a lam h_{t-1});  dA += dt G
// and per token the warp's sums over its states: A G, B lam (du and the input part of ddt for
// the exp-only methods) and C h (y, for dz), written to shared memory and added over the warps
// in a fixed order by the tile's epilogue, which also applies D, the softplus and the gate and
// stores du, ddelta, dz.  dB_t = sum over channels of (s u)_t lam and dC_t = sum of gy_t h_t: a
// warp's 2 x K x 8 values per chunk go through a shared-memory transpose (one row per lane; lane
// m then adds column m), then one atomic per value, token and block.
constexpr int kSbT = 16;         // tokens per tile
constexpr int kSbTP = kSbT + 4;  // padded row (LDS.128, conflict-free per quarter warp)
static_assert(kSbT % kTileI == 0, "tiles must hold whole checkpoint chunks");

// 128 registers: one block of 16 warps or two of 8 per SM
template <int K, int NW> constexpr int sb_min_blocks() { return 16 / NW; }

template <typename T, int DISC, int K, int NW>
__global__ void __launch_bounds__(32 * NW, sb_min_blocks<K, NW>())
sel_bwd_states_kernel(const SelParams p) {
  constexpr int I = kTileI, TT = kSbT, TP = kSbTP, NT = 32 * NW, NP = K * NW, J = TT / NW;
  constexpr int NC = TT / I;                   // checkpoint chunks per tile
  constexpr int PB = (TT * NP + NT - 1) / NT;  // B (and C) elements staged per thread per tile
  constexpr int VALS = K == 1 ? 16 : 32;       // dB / dC values per transpose round (2 x 8 x ks)
  constexpr int TR = VALS + 4;                 // its padded row
  static_assert(TT % NW == 0 && (K == 1 || K % 2 == 0), "tile / warps / states");
  extern __shared__ float4 smem4[];
  float* sdt = reinterpret_cast<float*>(smem4);  // [2][32][TP]
  float* su = sdt + 2 * 32 * TP;                 // [2][32][TP]
  float* sgy = su + 2 * 32 * TP;                 // [2][32][TP]  gradient of the ungated output
  float* sB = sgy + 2 * 32 * TP;                 // [2][NP][TP]
  float* sC = sB + 2 * NP * TP;                  // [2][NP][TP]
  float* spart = sC + 2 * NP * TP;               // [3][NW][TT][32] per-warp sums over states
  float* sT = spart + 3 * NW * TT * 32;          // [NW][32][TR] transpose scratch
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int64_t b = blockIdx.y, L = p.L, Dm = p.Dm, G = p.G, N = p.N, d0 = (int64_t)blockIdx.x * 32;
  const int64_t d = d0 + lane;
  const bool dok = d < Dm;
  const int64_t g = d0 / (Dm / G);
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  const float* __restrict__ ts = static_cast<const float*>(p.ts);
  const float* __restrict__ ck = static_cast<const float*>(p.ck);
  const float* __restrict__ Bg = static_cast<const float*>(p.B);
  const float* __restrict__ Cg = static_cast<const float*>(p.C);
  const bool has_z = z != nullptr, has_ts = ts != nullptr, has_dy = dy != nullptr;

  float Araw[K], inc[K], dAacc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t n = (int64_t)w * K + k;
    const bool ok = dok && n < N;
    Araw[k] = ok ? static_cast<const float*>(p.A)[d * N + n] : 0.f;
    inc[k] = (ok && p.dlast != nullptr) ? static_cast<const float*>(p.dlast)[(b * Dm + d) * N + n] : 0.f;
    dAacc[k] = 0.f;
  }
  const float Dd = (dok && p.D != nullptr) ? static_cast<const float*>(p.D)[d] : 0.f;
  const float bias = (dok && p.bias != nullptr) ? static_cast<const float*>(p.bias)[d] : 0.f;
  float dDacc = 0.f, dbacc = 0.f;

  float pu[J], pd[J], pz[J], pdy[J], pt[J], pB[PB], pC[PB], pck[NC][K];
  auto load = [&](int64_t tile) {
    const int64_t tb = tile * TT;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int64_t t = tb + w + j * NW;
      const bool tin = t < L, ok = dok && tin;
      const int64_t off = (b * L + t) * Dm + d;
      pu[j] = ok ? Store<T>::ld(u + off) : 0.f;
      pd[j] = ok ? Store<T>::ld(delta + off) : 0.f;
      pz[j] = (ok && has_z) ? Store<T>::ld(z + off) : 0.f;
      pdy[j] = (ok && has_dy) ? Store<T>::ld(dy + off) : 0.f;
      pt[j] = (tin && has_ts) ? ts[b * L + t] : 0.f;
    }
#pragma unroll
    for (int q = 0; q < PB; ++q) {
      const int e = tid + q * NT;
      const int tt = e / NP, n = e - tt * NP;
      const int64_t t = tb + tt;
      const bool ok = e < TT * NP && t < L && n < N;
      const int64_t bo = ((b * L + t) * G + g) * N + n;
      pB[q] = ok ? __ldg(Bg + bo) : 0.f;
      pC[q] = ok ? __ldg(Cg + bo) : 0.f;
    }
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int64_t t = tb + c * I;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t n = (int64_t)w * K + k;
        pck[c][k] = (dok && t < L && n < N) ? ck[((b * p.n_ck + t / I) * N + n) * Dm + d] : 0.f;
      }
    }
  };

  const int64_t ntiles = (L + TT - 1) / TT;
  load(ntiles - 1);
  float cu[J], cz[J], cdy[J], cv[J], ct[J], hck[NC][K];
  for (int64_t tile = ntiles - 1; tile >= 0; --tile) {
    const int buf = (int)(tile & 1);
    float* bdt = sdt + buf * 32 * TP;
    float* bu = su + buf * 32 * TP;
    float* bgy = sgy + buf * 32 * TP;
    float* bB = sB + buf * NP * TP;
    float* bC = sC + buf * NP * TP;
    const int64_t tb = tile * TT;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int tt = w + j * NW;
      const bool ok = dok && tb + tt < L;
      cv[j] = pd[j] + bias;
      const float dt = ok ? make_dt(pd[j], bias, p.softplus, has_ts, pt[j]).dt : 0.f;
      const float gy = has_z ? pdy[j] * pz[j] * sigmoid_(pz[j]) : pdy[j];
      bdt[lane * TP + tt] = dt;
      bu[lane * TP + tt] = pu[j];
      bgy[lane * TP + tt] = ok ? gy : 0.f;
      cu[j] = pu[j];
      cz[j] = pz[j];
      cdy[j] = pdy[j];
      ct[j] = pt[j];
    }
#pragma unroll
    for (int q = 0; q < PB; ++q) {
      const int e = tid + q * NT;
      if (e < TT * NP) {
        const int tt = e / NP, n = e - tt * NP;
        bB[n * TP + tt] = pB[q];
        bC[n * TP + tt] = pC[q];
      }
    }
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
      for (int k = 0; k < K; ++k) hck[c][k] = pck[c][k];
    if (tile > 0) load(tile - 1);
    __syncthreads();  // this tile staged; every thread is past the previous epilogue

    const float* rdt = bdt + lane * TP;
    const float* ru = bu + lane * TP;
    const float* rgy = bgy + lane * TP;
    float* sTw = sT + w * 32 * TR;
#pragma unroll
    for (int c = NC - 1; c >= 0; --c) {
      float dts[I], sus[I], us[I], gys[I];
#pragma unroll
      for (int i4 = 0; i4 < I / 4; ++i4) {
        const float4 a4 = reinterpret_cast<const float4*>(rdt)[c * I / 4 + i4];
        const float4 b4 = reinterpret_cast<const float4*>(ru)[c * I / 4 + i4];
        const float4 c4 = reinterpret_cast<const float4*>(rgy)[c * I / 4 + i4];
        dts[4 * i4] = a4.x; dts[4 * i4 + 1] = a4.y; dts[4 * i4 + 2] = a4.z; dts[4 * i4 + 3] = a4.w;
        us[4 * i4] = b4.x; us[4 * i4 + 1] = b4.y; us[4 * i4 + 2] = b4.z; us[4 * i4 + 3] = b4.w;
        gys[4 * i4] = c4.x; gys[4 * i4 + 1] = c4.y; gys[4 * i4 + 2] = c4.z; gys[4 * i4 + 3] = c4.w;
      }
#pragma unroll
      for (int i = 0; i < I; ++i) sus[i] = su_token<DISC>(dts[i], us[i]);
      float Bs[K][I], Cs[K][I];
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int i4 = 0; i4 < I / 4; ++i4) {
          const float4 x = reinterpret_cast<const float4*>(bB + (w * K + k) * TP)[c * I / 4 + i4];
          const float4 y = reinterpret_cast<const float4*>(bC + (w * K + k) * TP)[c * I / 4 + i4];
          Bs[k][4 * i4] = x.x; Bs[k][4 * i4 + 1] = x.y; Bs[k][4 * i4 + 2] = x.z; Bs[k][4 * i4 + 3] = x.w;
          Cs[k][4 * i4] = y.x; Cs[k][4 * i4 + 1] = y.y; Cs[k][4 * i4 + 2] = y.z; Cs[k][4 * i4 + 3] = y.w;
        }
      // recompute the chunk's states from its checkpoint
      float hs[K][I + 1], as[K][I];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        hs[k][0] = hck[c][k];
#pragma unroll
        for (int i = 0; i < I; ++i) {
          float a, s;
          disc_tiled<DISC>(dts[i], Araw[k], a, s);
          as[k][i] = a;
          const float bx = kExpOnly<DISC> ? sus[i] * Bs[k][i] : s * (us[i] * Bs[k][i]);
          hs[k][i + 1] = a * hs[k][i] + bx;
        }
      }
      // walk back
      float red[2 * K * I];  // dB (k, i) at k * I + i, dC at K * I + k * I + i
#pragma unroll
      for (int i = I - 1; i >= 0; --i) {
        float p1 = 0.f, p2 = 0.f, yv = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const float lam = gys[i] * Cs[k][i] + inc[k];
          yv += Cs[k][i] * hs[k][i + 1];
          red[K * I + k * I + i] = gys[i] * hs[k][i + 1];
          if constexpr (kExpOnly<DISC>) {
            inc[k] = as[k][i] * lam;
            const float Gx = inc[k] * hs[k][i];
            p1 += Araw[k] * Gx;
            dAacc[k] += dts[i] * Gx;
            p2 += Bs[k][i] * lam;
            red[k * I + i] = sus[i] * lam;
          } else {
            float a, s, dadx, dsdt, dsdA;
            disc_grads_tiled<DISC>(dts[i], Araw[k], a, s, dadx, dsdt, dsdA);
            inc[k] = a * lam;
            const float Gx = dadx * lam * hs[k][i];
            const float Gs = us[i] * lam * Bs[k][i];
            p1 += Araw[k] * Gx + dsdt * Gs;
            dAacc[k] += dts[i] * Gx + dsdA * Gs;
            p2 += s * Bs[k][i] * lam;
            red[k * I + i] = us[i] * s * lam;
          }
        }
        const int tt = c * I + i;
        spart[((0 * NW + w) * TT + tt) * 32 + lane] = p1;
        spart[((1 * NW + w) * TT + tt) * 32 + lane] = p2;
        spart[((2 * NW + w) * TT + tt) * 32 + lane] = yv;
      }
      // dB, dC: sums over the warp's 32 channels, VALS values per round (KS = VALS / 16 states:
      // value m is dB (m < VALS / 2) or dC of state 2r + (m / 8) % KS, token m % 8)
      constexpr int KS = VALS / 16, HV = VALS / 2;
#pragma unroll
      for (int r = 0; r < K / KS; ++r) {
        float vals[VALS];
#pragma unroll
        for (int m = 0; m < HV; ++m) {
          vals[m] = red[KS * r * I + m];
          vals[HV + m] = red[K * I + KS * r * I + m];
        }
#pragma unroll
        for (int q = 0; q < VALS / 4; ++q)
          reinterpret_cast<float4*>(sTw + lane * TR)[q] =
              make_float4(vals[4 * q], vals[4 * q + 1], vals[4 * q + 2], vals[4 * q + 3]);
        __syncwarp();
        float tot = 0.f;
        if constexpr (VALS == 32) {
#pragma unroll
          for (int rr = 0; rr < 32; ++rr) tot += sTw[rr * TR + lane];
        } else {  // 16 values: lanes l and l + 16 add half the rows each
#pragma unroll
          for (int rr = 0; rr < 16; ++rr) tot += sTw[((lane >> 4) * 16 + rr) * TR + (lane & 15)];
          tot += __shfl_xor_sync(0xffffffffu, tot, 16);
        }
        __syncwarp();
        const int m = lane & (VALS - 1);
        const int kk = KS * r + (KS == 2 ? (m >> 3) & 1 : 0), i = m & 7;
        const int64_t t = tb + c * I + i, n = (int64_t)w * K + kk;
        if (lane < VALS && t < L && n < N) {
          float* dst = static_cast<float*>(m < HV ? p.dB : p.dC);
          atomicAdd(dst + ((b * L + t) * G + g) * N + n, tot);
        }
      }
    }
    __syncthreads();  // every warp's per-token sums are in shared memory
    float vts[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int tt = w + j * NW;
      const int64_t t = tb + tt;
      const bool ok = dok && t < L;
      float P1 = 0.f, P2 = 0.f, Y = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < NW; ++w2) {
        P1 += spart[((0 * NW + w2) * TT + tt) * 32 + lane];
        P2 += spart[((1 * NW + w2) * TT + tt) * 32 + lane];
        Y += spart[((2 * NW + w2) * TT + tt) * 32 + lane];
      }
      const float dt = bdt[lane * TP + tt];
      float ddt, duv;
      if constexpr (kExpOnly<DISC>) {
        // ddt = sum A G + dsdt u sum(B lam); du = s sum(B lam)
        ddt = P1 + (DISC == MAMBA ? cu[j] * P2 : 0.f);
        duv = (DISC == MAMBA ? dt : 1.f) * P2;
      } else {
        ddt = P1;
        duv = P2;
      }
      const float gy = has_z ? cdy[j] * cz[j] * sigmoid_(cz[j]) : cdy[j];
      const float sp = p.softplus ? softplus_(cv[j]) : cv[j];
      const float fac = (has_ts ? ct[j] : 1.f) * (p.softplus ? softplus_grad_(cv[j]) : 1.f);
      const float gv = ddt * fac;
      vts[j] = ok ? ddt * sp : 0.f;
      if (ok) {
        const int64_t off = (b * L + t) * Dm + d;
        dDacc += gy * cu[j];
        dbacc += gv;
        Store<T>::st(static_cast<T*>(p.du) + off, duv + gy * Dd);
        Store<T>::st(static_cast<T*>(p.ddelta) + off, gv);
        if (has_z) {
          const float yv = Y + Dd * cu[j];
          const float sg = sigmoid_(cz[j]);
          Store<T>::st(static_cast<T*>(p.dz) + off, cdy[j] * yv * (sg * (1.f + cz[j] * (1.f - sg))));
        }
      }
    }
    if (has_ts) {  // dts_t = sum over channels of ddt * softplus(v)
      const float tot = lane_transpose_sum<J>(vts, lane);
      const int jj = lane / (32 / J);
      const int64_t t = tb + w + jj * NW;
      if (lane % (32 / J) == 0 && t < L) atomicAdd(static_cast<float*>(p.dts) + b * L + t, tot);
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t n = (int64_t)w * K + k;
    if (dok && n < N) {
      static_cast<float*>(p.dA)[(b * Dm + d) * N + n] = dAacc[k];
      static_cast<float*>(p.dh0)[(b * Dm + d) * N + n] = inc[k];
    }
  }
  __syncthreads();
  float* sred = spart;  // [2][NW][32]
  sred[w * 32 + lane] = dDacc;
  sred[(NW + w) * 32 + lane] = dbacc;
  __syncthreads();
  if (w == 0 && dok) {
    float a1 = 0.f, a2 = 0.f;
#pragma unroll
    for (int w2 = 0; w2 < NW; ++w2) { a1 += sred[w2 * 32 + lane]; a2 += sred[(NW + w2) * 32 + lane]; }
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

template <typename K>
static void launch_tiled(K kernel, int W, size_t smem, const SelParams& p, cudaStream_t stream) {
  set_dynamic_smem(reinterpret_cast<const void*>(kernel), smem, current_device());
  dim3 grid((unsigned)((p.Dm + 31) / 32), (unsigned)p.Bt);
  kernel<<<grid, 32 * W, smem, stream>>>(p);
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

// For N <= 16 the forward runs the state-parallel kernel by default, LRNNX_SEL_FWD=tiled the
// two-pass one (read per call, like LRNNX_SEL_TILED: the backward reads either one's
// checkpoints).  N 17..32 keeps the two-pass forward: 4 states per warp were not measured.
static bool fwd_states(const SelParams& p) {
  if (p.N > 16) return false;
  const char* v = std::getenv("LRNNX_SEL_FWD");
  return v == nullptr || std::strcmp(v, "tiled") != 0;
}
static size_t states_smem(int K, int NW) {
  return sizeof(float) * (4 * 32 * kSpTP + 4 * K * NW * kSpTP + NW * kSpT * 32);
}
template <typename T, int K, int NW>
static void fwd_states_kn(const SelParams& p, cudaStream_t stream) {
  LRNNX_DISC_SWITCH(p.disc, launch_tiled(sel_fwd_states_kernel<T, D_, K, NW>, NW,
                                         states_smem(K, NW), p, stream))
}
// The backward likewise (LRNNX_SEL_BWD=tiled: the two-pass one), for fp32 data and N <= 16.
// H200, B8 L2048 D1536 N16, fwd+bwd: fp32 2.20 -> 2.00 ms; bf16 2.222 (two-pass backward) vs
// 2.247, so half-precision data keeps the two-pass backward (and the state-parallel one is not
// compiled for it).  2 states x 8 warps per block (2.23 / 2.36 ms) lost to 1 x 16.
static bool bwd_states(const SelParams& p) {
  if (p.N > 16 || p.dtype != DType::F32) return false;
  const char* v = std::getenv("LRNNX_SEL_BWD");
  return v == nullptr || std::strcmp(v, "tiled") != 0;
}
static size_t states_bwd_smem(int K, int NW) {
  const int tr = (K == 1 ? 16 : 32) + 4;
  return sizeof(float) * (6 * 32 * kSbTP + 4 * K * NW * kSbTP + 3 * NW * kSbT * 32 + NW * 32 * tr);
}
template <typename T, int K, int NW>
static void bwd_states_kn(const SelParams& p, cudaStream_t stream) {
  LRNNX_DISC_SWITCH(p.disc, launch_tiled(sel_bwd_states_kernel<T, D_, K, NW>, NW,
                                         states_bwd_smem(K, NW), p, stream))
}
// one state per warp: N <= 8: 8 warps (2 blocks per SM), else 16 (one block per SM: 2.9 waves of
// mamba's 384 blocks where 2 states x 8 warps gave 1.45, and no spills)
template <typename T>
static void bwd_states_typed(const SelParams& p, cudaStream_t stream) {
  if (p.N <= 8) bwd_states_kn<T, 1, 8>(p, stream);
  else bwd_states_kn<T, 1, 16>(p, stream);
}

// states per warp and warps: N <= 8: 2 x 4; N <= 16: 2 x 8 (mamba's 16)
template <typename T>
static void fwd_states_typed(const SelParams& p, cudaStream_t stream) {
  if (p.N <= 8) fwd_states_kn<T, 2, 4>(p, stream);
  else fwd_states_kn<T, 2, 8>(p, stream);
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
  switch (p.dtype) {
    case DType::F32:
      if (!bwd && fwd_states(p)) return fwd_states_typed<float>(p, stream);
      if (bwd && bwd_states(p)) return bwd_states_typed<float>(p, stream);
      tiled_typed<float>(p, stream, bwd); break;
    case DType::F16:
      if (!bwd && fwd_states(p)) return fwd_states_typed<__half>(p, stream);
      tiled_typed<__half>(p, stream, bwd); break;
    case DType::BF16:
      if (!bwd && fwd_states(p)) return fwd_states_typed<__nv_bfloat16>(p, stream);
      tiled_typed<__nv_bfloat16>(p, stream, bwd); break;
    default: break;  // excluded by selective_tiled_ok
  }
}

}  // namespace lrnnx_cuda
