// Selective (S6) scan, state-parallel backward: the default for N <= 16 (selective_states.cu's
// launch_selective_states calls it; LRNNX_SEL_BWD=tiled selects the two-pass token-tiled one).
// Its own translation unit so that a first-use build compiles it beside the forward.
#include "selective_tiled.cuh"

#include <cstdlib>
#include <cstring>

namespace lrnnx_cuda {

// ------------------------------------------------------------------ backward, state-parallel
// The default backward for N <= 16, every data type (LRNNX_SEL_BWD=tiled selects the two-pass
// one in selective_tiled.cu).  As the state-parallel forward: warp w owns states w*K .. w*K+K-1 of the block's 32 channels and walks
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
// Instruction budget (session 9, from the SASS; the H200 runs it issue-bound at about half the
// issue rate): per warp and 16-token tile ~240 staging + ~430 walk + ~180 epilogue instructions
// (was 254 + 434 + 499: the epilogue's shared-memory indices were recomputed per load, and the
// staging's softplus / sigmoid were evaluated again in the epilogue).  Hence: the per-token
// factors are computed once at staging and kept in registers, the partial sums are read from
// one base pointer, (A G, B lam) are stored as one float2, and the loads' offsets step by
// constants per tile.
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
  // lane l's row of the transpose; with 16 values, the rows of lanes 16..31 are shifted by 16
  // words, so the column reads of lanes l and l + 16 (rows rr and 16 + rr) hit different banks
  constexpr int TSH = VALS == 32 ? 0 : 16, TW = 32 * TR + TSH;  // shift, floats per warp
  static_assert(TT % NW == 0 && (K == 1 || K % 2 == 0), "tile / warps / states");
  extern __shared__ float4 smem4[];
  float* sdt = reinterpret_cast<float*>(smem4);  // [2][32][TP]
  float* su = sdt + 2 * 32 * TP;                 // [2][32][TP]
  float* sgy = su + 2 * 32 * TP;                 // [2][32][TP]  gradient of the ungated output
  float* sB = sgy + 2 * 32 * TP;                 // [2][NP][TP]
  float* sC = sB + 2 * NP * TP;                  // [2][NP][TP]
  // per-warp sums over states: (A G, B lam) pairs [NW][TT][32] float2, then C h [NW][TT][32]
  float* spart = sC + 2 * NP * TP;
  float* sT = spart + 3 * NW * TT * 32;          // [NW][TW] transpose scratch
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

  // Element offsets of the thread's loads, kept for the next tile to load and stepped back by
  // constants per tile (no 64-bit index products per element in the loop); bounds are checked
  // only in the partial last tile.
  const int64_t ntiles = (L + TT - 1) / TT;
  const int64_t TDm = (int64_t)TT * Dm, TBC = (int64_t)TT * G * N, TCK = (int64_t)NC * N * Dm;
  const int64_t rowU = (b * L + w) * Dm + d;  // u / delta / z / dy / outputs: token w of tile 0
  int64_t oU = rowU + (ntiles - 1) * TDm, oT = b * L + (ntiles - 1) * TT + w;
  int64_t oB[PB];
  bool eok[PB];
#pragma unroll
  for (int q = 0; q < PB; ++q) {
    const int e = tid + q * NT, tt = e / NP, n = e - tt * NP;
    eok[q] = e < TT * NP && n < N;
    oB[q] = ((b * L + (ntiles - 1) * TT + tt) * G + g) * N + n;
  }
  int64_t oCk = ((b * p.n_ck + (ntiles - 1) * NC) * N + (int64_t)w * K) * Dm + d;
  T qu[J], qd[J], qz[J], qdy[J];  // raw: converted at staging (ld_raw)
  float pt[J], pB[PB], pC[PB], pck[NC][K];
  auto load = [&](int64_t tile) {  // the tiles in order ntiles - 1, ..., 0
    const int64_t tb = tile * TT;
    const bool full = tb + TT <= L;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const bool tin = full || tb + w + j * NW < L, ok = dok && tin;
      const int64_t off = oU + (int64_t)(j * NW) * Dm;
      qu[j] = ld_raw(u + off, ok);
      qd[j] = ld_raw(delta + off, ok);
      qz[j] = ld_raw(z + off, ok && has_z);
      qdy[j] = ld_raw(dy + off, ok && has_dy);
      pt[j] = (tin && has_ts) ? ts[oT + j * NW] : 0.f;
    }
#pragma unroll
    for (int q = 0; q < PB; ++q) {
      const int tt = (tid + q * NT) / NP;
      const bool ok = eok[q] && (full || tb + tt < L);
      pB[q] = ok ? __ldg(Bg + oB[q]) : 0.f;
      pC[q] = ok ? __ldg(Cg + oB[q]) : 0.f;
      oB[q] -= TBC;
    }
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const bool tin = full || tb + c * I < L;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const bool ok = dok && tin && w * K + k < N;
        pck[c][k] = ok ? ck[oCk + ((int64_t)c * N + k) * Dm] : 0.f;
      }
    }
    oU -= TDm;
    oT -= TT;
    oCk -= TCK;
  };

  if (ntiles > 0) load(ntiles - 1);  // L = 0 (the Python wrapper returns before): no tile at -1
  // Per token of the thread's epilogue, computed once at staging: u, the gated output gradient
  // gy, dt, the factor from ddt to ddelta (ts softplus'(v)), softplus(v) (for dts) and the factor
  // from the ungated output to dz (dy silu'(z)).
  float cu[J], cgy[J], cdt[J], cfac[J], csp[J], cdz[J], hck[NC][K];
  for (int64_t tile = ntiles - 1; tile >= 0; --tile) {
    const int buf = (int)(tile & 1);
    float* bdt = sdt + buf * 32 * TP;
    float* bu = su + buf * 32 * TP;
    float* bgy = sgy + buf * 32 * TP;
    float* bB = sB + buf * NP * TP;
    float* bC = sC + buf * NP * TP;
    const int64_t tb = tile * TT;
    const bool full = tb + TT <= L;
    float pu[J], pd[J], pz[J], pdy[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      pu[j] = to_f(qu[j]);
      pd[j] = to_f(qd[j]);
      pz[j] = to_f(qz[j]);
      pdy[j] = to_f(qdy[j]);
    }
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int tt = w + j * NW;
      const bool ok = dok && (full || tb + tt < L);
      const float v = pd[j] + bias;
      float sp = v, sgv = 1.f;  // softplus(v) and its derivative (torch's threshold 20)
      if (p.softplus && v <= 20.f) {
        const float e = exp_(v);
        sp = log1p_(e);
        sgv = __fdividef(e, 1.f + e);  // 1 + e <= 5e8: in __fdividef's range
      }
      float gy = pdy[j], dzf = 0.f;
      if (has_z) {
        const float sg = sigmoid_fast(pz[j]);
        gy = pdy[j] * pz[j] * sg;
        dzf = pdy[j] * (sg * (1.f + pz[j] * (1.f - sg)));
      }
      const float dt = ok ? (has_ts ? sp * pt[j] : sp) : 0.f;
      cu[j] = pu[j];
      cgy[j] = ok ? gy : 0.f;
      cdt[j] = dt;
      cfac[j] = has_ts ? pt[j] * sgv : sgv;
      csp[j] = sp;
      cdz[j] = dzf;
      bdt[lane * TP + tt] = dt;
      bu[lane * TP + tt] = pu[j];
      bgy[lane * TP + tt] = cgy[j];
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
    float* sTw = sT + w * TW;
    auto trow = [&](int l) { return l * TR + (l >= 16 ? TSH : 0); };
    // this lane's column of the transpose: lane (all 32 rows), or lane & 15 of rows 0..15 /
    // 16..31 for lanes below / from 16
    const float* sTr = VALS == 32 ? sTw + lane : sTw + trow((lane >> 4) * 16) + (lane & 15);
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
        reinterpret_cast<float2*>(spart)[(w * TT + tt) * 32 + lane] = make_float2(p1, p2);
        spart[2 * NW * TT * 32 + (w * TT + tt) * 32 + lane] = yv;
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
          reinterpret_cast<float4*>(sTw + trow(lane))[q] =
              make_float4(vals[4 * q], vals[4 * q + 1], vals[4 * q + 2], vals[4 * q + 3]);
        __syncwarp();
        // column sums with 4 accumulators (shorter dependency chains; fixed order)
        float s4[4] = {0.f, 0.f, 0.f, 0.f};
        if constexpr (VALS == 32) {
#pragma unroll
          for (int rr = 0; rr < 32; ++rr) s4[rr & 3] += sTr[rr * TR];
        } else {  // 16 values: lanes l and l + 16 add half the rows each
#pragma unroll
          for (int rr = 0; rr < 16; ++rr) s4[rr & 3] += sTr[rr * TR];
        }
        float tot = (s4[0] + s4[1]) + (s4[2] + s4[3]);
        if constexpr (VALS != 32) tot += __shfl_xor_sync(0xffffffffu, tot, 16);
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
      const bool ok = dok && (full || t < L);
      // the NW warps' partials of this (token, channel), 4 accumulators each in a fixed order;
      // one base pointer, so every load is base + constant
      const float2* pp2 = reinterpret_cast<const float2*>(spart) + tt * 32 + lane;
      const float* pp = spart + 2 * NW * TT * 32 + tt * 32 + lane;
      constexpr int WS = TT * 32;  // warp stride
      float a1[4] = {0.f, 0.f, 0.f, 0.f}, a2[4] = {0.f, 0.f, 0.f, 0.f}, a3[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int w2 = 0; w2 < NW; ++w2) {
        const float2 v = pp2[w2 * WS];
        a1[w2 & 3] += v.x;
        a2[w2 & 3] += v.y;
        a3[w2 & 3] += pp[w2 * WS];
      }
      const float P1 = (a1[0] + a1[1]) + (a1[2] + a1[3]);
      const float P2 = (a2[0] + a2[1]) + (a2[2] + a2[3]);
      const float Y = (a3[0] + a3[1]) + (a3[2] + a3[3]);
      const float dt = cdt[j];
      float ddt, duv;
      if constexpr (kExpOnly<DISC>) {
        // ddt = sum A G + dsdt u sum(B lam); du = s sum(B lam)
        ddt = P1 + (DISC == MAMBA ? cu[j] * P2 : 0.f);
        duv = (DISC == MAMBA ? dt : 1.f) * P2;
      } else {
        ddt = P1;
        duv = P2;
      }
      const float gv = ddt * cfac[j];
      vts[j] = ok ? ddt * csp[j] : 0.f;
      if (ok) {
        const int64_t off = rowU + tile * TDm + (int64_t)(j * NW) * Dm;
        dDacc += cgy[j] * cu[j];
        dbacc += gv;
        Store<T>::st(static_cast<T*>(p.du) + off, duv + cgy[j] * Dd);
        Store<T>::st(static_cast<T*>(p.ddelta) + off, gv);
        if (has_z) Store<T>::st(static_cast<T*>(p.dz) + off, cdz[j] * (Y + Dd * cu[j]));
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
// For N <= 16 the backward runs the state-parallel kernel by default, LRNNX_SEL_BWD=tiled the
// two-pass one (read per call).  H200, B8 L2048 D1536 N16, fwd+bwd with the state-parallel
// forward (session 9, after the instruction trims): fp32 1.67 ms (two-pass backward 2.18), bf16
// 1.90 (2.20).  2 states x 8 warps per block (session 8: 2.23 / 2.36 ms) lost to 1 x 16.
static bool bwd_states(const SelParams& p) {
  if (p.N > 16) return false;
  const char* v = std::getenv("LRNNX_SEL_BWD");
  return v == nullptr || std::strcmp(v, "tiled") != 0;
}
static size_t states_bwd_smem(int K, int NW) {
  const int tr = (K == 1 ? 16 : 32) + 4, tw = 32 * tr + (K == 1 ? 16 : 0);
  return sizeof(float) * (6 * 32 * kSbTP + 4 * K * NW * kSbTP + 3 * NW * kSbT * 32 + NW * tw);
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

bool launch_selective_states_bwd(const SelParams& p, cudaStream_t stream) {
  if (!bwd_states(p)) return false;
  switch (p.dtype) {
    case DType::F32: bwd_states_typed<float>(p, stream); return true;
    case DType::F16: bwd_states_typed<__half>(p, stream); return true;
    case DType::BF16: bwd_states_typed<__nv_bfloat16>(p, stream); return true;
    default: return false;
  }
}

}  // namespace lrnnx_cuda
