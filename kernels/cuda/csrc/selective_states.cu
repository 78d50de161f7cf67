// Selective (S6) scan, state-parallel kernels: the default forward for N <= 16 and backward for
// fp32 data and N <= 16 (selective_tiled.cu's launcher calls them; the problems are those of the
// token-tiled kernels: real A, B, C, fp32 state, the 32 channels of a block in one group of B /
// C).  LRNNX_SEL_FWD=tiled / LRNNX_SEL_BWD=tiled select the two-pass token-tiled kernels.
#include "selective_tiled.cuh"

#include <cstdlib>
#include <cstring>

namespace lrnnx_cuda {

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
  if (ntiles > 0) load(ntiles - 1);  // L = 0 (the Python wrapper returns before): no tile at -1
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

bool launch_selective_states(const SelParams& p, cudaStream_t stream, bool bwd) {
  if (bwd) {
    if (!bwd_states(p)) return false;
    bwd_states_typed<float>(p, stream);  // bwd_states: fp32 data only
    return true;
  }
  if (!fwd_states(p)) return false;
  switch (p.dtype) {
    case DType::F32: fwd_states_typed<float>(p, stream); return true;
    case DType::F16: fwd_states_typed<__half>(p, stream); return true;
    case DType::BF16: fwd_states_typed<__nv_bfloat16>(p, stream); return true;
    default: return false;
  }
}

}  // namespace lrnnx_cuda
