// Selective (S6) scan, state-parallel kernels: the default forward and backward for N <= 16
// (selective_tiled.cu's launcher calls them; the problems are those of the token-tiled kernels:
// real A, B, C, fp32 state, the 32 channels of a block in one group of B / C).  The forward is
// here, the backward in selective_states_bwd.cu.  LRNNX_SEL_FWD=tiled / LRNNX_SEL_BWD=tiled
// select the two-pass token-tiled kernels.
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
  T qu[J], qd[J], qz[J];  // raw: converted at staging (ld_raw)
  float pt[J], pB[PB], pC[PB];
  auto load = [&](int64_t tile) {
    const int64_t tb = tile * TT;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int64_t t = tb + w + j * NW;
      const bool tin = t < L, ok = dok && tin;
      const int64_t off = (b * L + t) * Dm + d;
      qu[j] = ld_raw(u + off, ok);
      qd[j] = ld_raw(delta + off, ok);
      qz[j] = ld_raw(z + off, ok && has_z);
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
    float pu[J], pd[J], pz[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      pu[j] = to_f(qu[j]);
      pd[j] = to_f(qd[j]);
      pz[j] = to_f(qz[j]);
    }
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
        // the NW partials, 2 accumulators in a fixed order; one base pointer, so every load is
        // base + constant
        const float* pp = syp + tt * 32 + lane;
        float a2[2] = {0.f, 0.f};
#pragma unroll
        for (int w2 = 0; w2 < NW; ++w2) a2[w2 & 1] += pp[w2 * TT * 32];
        const float y = a2[0] + a2[1];
        const float gate = has_z ? cz[j] * sigmoid_fast(cz[j]) : 1.f;
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
// states per warp and warps: N <= 8: 2 x 4; N <= 16: 2 x 8 (mamba's 16)
template <typename T>
static void fwd_states_typed(const SelParams& p, cudaStream_t stream) {
  if (p.N <= 8) fwd_states_kn<T, 2, 4>(p, stream);
  else fwd_states_kn<T, 2, 8>(p, stream);
}

bool launch_selective_states(const SelParams& p, cudaStream_t stream, bool bwd) {
  if (bwd) return launch_selective_states_bwd(p, stream);
  if (!fwd_states(p)) return false;
  switch (p.dtype) {
    case DType::F32: fwd_states_typed<float>(p, stream); return true;
    case DType::F16: fwd_states_typed<__half>(p, stream); return true;
    case DType::BF16: fwd_states_typed<__nv_bfloat16>(p, stream); return true;
    default: return false;
  }
}

}  // namespace lrnnx_cuda
