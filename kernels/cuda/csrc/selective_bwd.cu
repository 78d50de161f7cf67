// Selective (S6) scan backward, fused (see selective.cuh for the layout).
//
// The chunks of CK tokens are visited from the last to the first.  For chunk k the state entering
// it is read from the forward's checkpoint ck[k]; the chunk is re-run forward, keeping every
// h_{t-1} in shared memory (CK x threads x NP values of the state type, 32 KiB); then the tokens
// are walked backwards with the adjoint state lambda (PyTorch's conjugate convention; for real
// data every conj is the identity):
//
//   gy_t      = dy_t * silu(z_t)
//   lambda_t  = gy_t conj(C_t) + conj(a_{t+1}) lambda_{t+1}       (lambda_L = grad of h_last)
//   G(x)      = conj(da/dx) lambda_t conj(h_{t-1})                 (x = dt A)
//   G(s)      = u_t lambda_t conj(B_t)
//   ddt      += Re(conj(A) G(x)) + Re(conj(ds/ddt) G(s));   dA += dt G(x) + conj(ds/dA) G(s)
//   du        = Re(sum_n conj(s B_t) lambda_t) + gy_t D;  dB_t += conj(s) u_t lambda_t;
//   dC_t     += gy_t conj(h_t);  dz = dy * y * silu'(z);  dh0 = conj(a_0) lambda_0
//
// dB, dC and dtimesteps are sums over channels: a warp reduces its channels with shuffles and
// adds once per (token, state) atomically (per lane when a warp straddles two groups of B/C).
#include "selective.cuh"

namespace lrnnx_cuda {

// Reduction of dB / dC over channels: 2 = over the block (shared memory, one atomic per block,
// token and state), 1 = over a warp (shuffles), 0 = none (per-lane atomics: a warp straddles
// groups of B / C).
template <typename T, typename S, int NP, int CK, int DISC>
__global__ void __launch_bounds__(kSelThreads)
sel_bwd_kernel(const SelParams p, const int ns, const int red) {
  using R = typename RealOf<S>::type;
  using EC = Elem<R, S>;
  constexpr int W = kSelThreads / 32;
  __shared__ S hs[CK * NP * kSelThreads];  // h_{t-1}: [i][k][thread]
  // per-token staging (thread-private slots): u, dt, d dt / d delta, softplus (for dts), z, dy
  __shared__ R su[CK][kSelThreads], sdt[CK][kSelThreads], sfac[CK][kSelThreads];
  __shared__ R ssp[CK][kSelThreads], sz[CK][kSelThreads], sdy[CK][kSelThreads];
  // block reduction of dB / dC: [token][warp][2 * kSelMaxN] reals (used when red == 2, which the
  // host only picks for N * (complex ? 2 : 1) <= 32 so that this stays small)
  __shared__ R sred[CK][W][64];
  const SelMap m = sel_map(p, ns);
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.y, L = p.L, Dm = p.Dm, N = p.N, G = p.G;
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const T* __restrict__ dy = static_cast<const T*>(p.dy);
  const R* __restrict__ Bm = static_cast<const R*>(p.B);
  const R* __restrict__ Cm = static_cast<const R*>(p.C);
  const R* __restrict__ ts = static_cast<const R*>(p.ts);
  const bool has_z = z != nullptr, has_ts = ts != nullptr, has_dy = dy != nullptr;
  constexpr int CPLX = IsCx<S>::value ? 2 : 1;

  S A[NP], lam[NP], anext[NP], dAacc[NP];
#pragma unroll
  for (int k = 0; k < NP; ++k) {
    const int64_t n = (int64_t)m.j * NP + k;
    const bool ok = m.dok && n < N;
    A[k] = ok ? EC::ld(static_cast<const R*>(p.A), m.d * N + n) : S(R(0));
    lam[k] = (ok && p.dlast != nullptr)
                 ? EC::ld(static_cast<const R*>(p.dlast), (b * Dm + m.d) * N + n) : S(R(0));
    anext[k] = S(R(1));
    dAacc[k] = S(R(0));
  }
  const R Dd = (m.dok && p.D != nullptr) ? static_cast<const R*>(p.D)[m.d] : R(0);
  const R bias = (m.dok && p.bias != nullptr) ? static_cast<const R*>(p.bias)[m.d] : R(0);
  R dDacc = R(0), dbacc = R(0);

  for (int64_t kc = p.n_ck - 1; kc >= 0; --kc) {
    const int64_t t0 = kc * CK;
    const int steps = (int)(L - t0 < CK ? L - t0 : CK);
    // ---- stage the chunk's per-token inputs
#pragma unroll
    for (int i = 0; i < CK; ++i) {
      const int64_t t = t0 + i;
      const bool ok = m.dok && t < L;
      const int64_t off = (b * L + t) * Dm + m.d;
      const R uv = ok ? Store<T>::ld(u + off) : R(0);
      const R dv = ok ? Store<T>::ld(delta + off) : R(0);
      const R tv = (t < L && has_ts) ? ts[b * L + t] : R(0);
      const Dt<R> q = make_dt(dv, bias, p.softplus, has_ts, tv);
      su[i][tid] = uv;
      sdt[i][tid] = ok ? q.dt : R(0);
      sfac[i][tid] = (has_ts ? tv : R(1)) * (p.softplus ? softplus_grad_(q.v) : R(1));
      ssp[i][tid] = q.sp;
      sz[i][tid] = (ok && has_z) ? Store<T>::ld(z + off) : R(0);
      sdy[i][tid] = (ok && has_dy) ? Store<T>::ld(dy + off) : R(0);
    }
    // ---- re-run the chunk forward from its checkpoint, keeping h_{t-1}
    S h[NP];
#pragma unroll
    for (int k = 0; k < NP; ++k) {
      const int64_t n = (int64_t)m.j * NP + k;
      h[k] = (m.dok && n < N)
                 ? EC::ld(static_cast<const R*>(p.ck), ((b * p.n_ck + kc) * Dm + m.d) * N + n)
                 : S(R(0));
    }
#pragma unroll 2
    for (int i = 0; i < steps; ++i) {
      const int64_t t = t0 + i;
      const R uv = su[i][tid], dt = sdt[i][tid];
      const int64_t boff = ((b * L + t) * G + m.g) * N + (int64_t)m.j * NP;
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        hs[(i * NP + k) * kSelThreads + tid] = h[k];
        if ((int64_t)m.j * NP + k < N) {
          const S Bn = Ldg<S>::ld(Bm, boff + k);
          S a, s;
          discretize_t<DISC>(dt, A[k], a, s);
          h[k] = a * h[k] + s * (uv * Bn);
        }
      }
    }
    // ---- walk the chunk backwards
#pragma unroll 2
    for (int i = steps - 1; i >= 0; --i) {
      const int64_t t = t0 + i;
      const int64_t off = (b * L + t) * Dm + m.d;
      const bool ok = m.dok;
      const R uv = su[i][tid], dt = sdt[i][tid], zt = sz[i][tid], dyt = sdy[i][tid];
      const R sgz = has_z ? sigmoid_(zt) : R(1);
      const R gy = has_z ? dyt * zt * sgz : dyt;
      const int64_t boff = ((b * L + t) * G + m.g) * N + (int64_t)m.j * NP;
      R ypart = R(0), dupart = R(0), ddtpart = R(0);
      S dBv[NP], dCv[NP];
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        dBv[k] = S(R(0));
        dCv[k] = S(R(0));
        if ((int64_t)m.j * NP + k < N) {
          const S Bn = Ldg<S>::ld(Bm, boff + k), Cn = Ldg<S>::ld(Cm, boff + k);
          S a, s, dadx, dsdt, dsdA;
          discretize_grads_t<DISC>(dt, A[k], a, s, dadx, dsdt, dsdA);
          const S hp = hs[(i * NP + k) * kSelThreads + tid];
          const S ht = a * hp + s * (uv * Bn);
          ypart += re_(Cn * ht);
          lam[k] = gy * conj_(Cn) + conj_(anext[k]) * lam[k];
          anext[k] = a;
          const S Gx = conj_(dadx) * lam[k] * conj_(hp);
          const S Gs = uv * (lam[k] * conj_(Bn));
          ddtpart += re_(conj_(A[k]) * Gx) + re_(conj_(dsdt) * Gs);
          dAacc[k] += dt * Gx + conj_(dsdA) * Gs;
          dupart += re_(conj_(s * Bn) * lam[k]);
          dBv[k] = uv * (conj_(s) * lam[k]);
          dCv[k] = gy * conj_(ht);
        }
      }
      const R y = channel_sum(ypart, ns) + Dd * uv;
      const R du = channel_sum(dupart, ns) + gy * Dd;
      const R ddt = channel_sum(ddtpart, ns);
      const R gv = ddt * sfac[i][tid];
      if (m.j == 0 && ok) {
        dDacc += gy * uv;
        dbacc += gv;
        Store<T>::st(static_cast<T*>(p.du) + off, du);
        Store<T>::st(static_cast<T*>(p.ddelta) + off, gv);
        if (has_z) {
          const R dz = dyt * y * (sgz * (R(1) + zt * (R(1) - sgz)));
          Store<T>::st(static_cast<T*>(p.dz) + off, dz);
        }
      }
      if (has_ts) {  // dts_t = sum over channels of ddt * softplus(v)
        R v = (m.j == 0 && ok) ? ddt * ssp[i][tid] : R(0);
        for (int o = 1; o < 32; o <<= 1) v += shfl_xor_(v, o);
        if (m.lane == 0) atomic_add_(static_cast<R*>(p.dts) + b * L + t, v);
      }
      if (red > 0) {
#pragma unroll
        for (int k = 0; k < NP; ++k) {
          dBv[k] = warp_channels_sum(dBv[k], ns);
          dCv[k] = warp_channels_sum(dCv[k], ns);
        }
      }
      if (red == 2) {
        if (m.cw == 0) {  // lanes 0..ns-1 hold the warp's sums for states j*NP + k
#pragma unroll
          for (int k = 0; k < NP; ++k) {
            const int n = m.j * NP + k;
            if (n < N) {
              R* slot = &sred[i][m.warp][0];
              if constexpr (CPLX == 2) {
                slot[2 * n] = re_(dBv[k]);
                slot[2 * n + 1] = conj_(dBv[k]).im * R(-1);
                slot[2 * N + 2 * n] = re_(dCv[k]);
                slot[2 * N + 2 * n + 1] = conj_(dCv[k]).im * R(-1);
              } else {
                slot[n] = re_(dBv[k]);
                slot[N + n] = re_(dCv[k]);
              }
            }
          }
        }
      } else if (red == 0 || m.cw == 0) {
#pragma unroll
        for (int k = 0; k < NP; ++k) {
          if (m.dok && (int64_t)m.j * NP + k < N) {
            atomic_add_(static_cast<R*>(p.dB), boff + k, dBv[k]);
            atomic_add_(static_cast<R*>(p.dC), boff + k, dCv[k]);
          }
        }
      }
    }
    if (red == 2) {  // sum the warps' partials, one atomic per (token, value)
      __syncthreads();
      const int nv = 2 * (int)N * CPLX;
      for (int e = tid; e < steps * nv; e += kSelThreads) {
        const int i = e / nv, v = e % nv;
        R acc = R(0);
#pragma unroll
        for (int w = 0; w < W; ++w) acc += sred[i][w][v];
        const int64_t t = t0 + i;
        const int half = (int)N * CPLX;  // dB values, then dC values
        R* dst = static_cast<R*>(v < half ? p.dB : p.dC);
        const int64_t g0 = (int64_t)(blockIdx.x) * (kSelThreads / ns) / (Dm / G);
        atomic_add_(dst + (((b * L + t) * G + g0) * N) * CPLX + (v % half), acc);
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int k = 0; k < NP; ++k) {
    const int64_t n = (int64_t)m.j * NP + k;
    if (m.dok && n < N) {
      const int64_t so = (b * Dm + m.d) * N + n;
      EC::st(static_cast<R*>(p.dh0), so, conj_(anext[k]) * lam[k]);
      EC::st(static_cast<R*>(p.dA), so, dAacc[k]);
    }
  }
  if (m.j == 0 && m.dok) {
    static_cast<R*>(p.dD)[b * Dm + m.d] = dDacc;
    static_cast<R*>(p.dbias)[b * Dm + m.d] = dbacc;
  }
}

template <typename T, typename S>
static void bwd_typed(const SelParams& p, cudaStream_t stream) {
  const int ns = sel_ns(p.N);
  const int cpw = 32 / ns, cpb = kSelThreads / ns;
  const int64_t dpg = p.Dm / p.G;
  // Channels of a warp (block) reduce together when they all read the same group of B / C; the
  // block reduction's shared buffer holds 64 reals per token and warp.
  const int vals = 2 * (int)p.N * (p.cplx ? 2 : 1);
  const int red = (dpg % cpb == 0 && vals <= 64) ? 2 : (dpg % cpw == 0 ? 1 : 0);
  dim3 grid((unsigned)((p.Dm + cpb - 1) / cpb), (unsigned)p.Bt);
  LRNNX_DISC_SWITCH(p.disc, (sel_bwd_kernel<T, S, kSelNP, sel_ck<S>(), D_>
                             <<<grid, kSelThreads, 0, stream>>>(p, ns, red)))
}

void launch_selective_bwd(const SelParams& p, cudaStream_t stream) {
  if (p.Bt == 0 || p.Dm == 0 || p.L == 0) return;
  if (selective_tiled_ok(p)) return launch_selective_tiled(p, stream, true);
  switch (p.dtype) {
    case DType::F32: p.cplx ? bwd_typed<float, Cx<float>>(p, stream) : bwd_typed<float, float>(p, stream); break;
    case DType::F64: p.cplx ? bwd_typed<double, Cx<double>>(p, stream) : bwd_typed<double, double>(p, stream); break;
    case DType::F16: p.cplx ? bwd_typed<__half, Cx<float>>(p, stream) : bwd_typed<__half, float>(p, stream); break;
    case DType::BF16: p.cplx ? bwd_typed<__nv_bfloat16, Cx<float>>(p, stream) : bwd_typed<__nv_bfloat16, float>(p, stream); break;
  }
}

}  // namespace lrnnx_cuda
