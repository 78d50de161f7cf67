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

template <typename T, typename S, int NP, int CK>
__global__ void __launch_bounds__(kSelThreads)
sel_bwd_kernel(const SelParams p, const int ns, const bool warp_reduce) {
  using R = typename RealOf<S>::type;
  using EC = Elem<R, S>;
  __shared__ S hs[CK * NP * kSelThreads];  // h_{t-1}: [i][k][thread]
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
    // ---- re-run the chunk forward from its checkpoint, keeping h_{t-1}
    S h[NP];
#pragma unroll
    for (int k = 0; k < NP; ++k) {
      const int64_t n = (int64_t)m.j * NP + k;
      h[k] = (m.dok && n < N)
                 ? EC::ld(static_cast<const R*>(p.ck), ((b * p.n_ck + kc) * Dm + m.d) * N + n)
                 : S(R(0));
    }
    R uv[CK], dv[CK], tv[CK];
#pragma unroll
    for (int i = 0; i < CK; ++i) {
      const int64_t t = t0 + i;
      const bool ok = m.dok && t < L;
      const int64_t off = (b * L + t) * Dm + m.d;
      uv[i] = ok ? Store<T>::ld(u + off) : R(0);
      dv[i] = ok ? Store<T>::ld(delta + off) : R(0);
      tv[i] = (t < L && has_ts) ? ts[b * L + t] : R(0);
    }
#pragma unroll
    for (int i = 0; i < CK; ++i) {
      const int64_t t = t0 + i;
      if (t < L) {
        const Dt<R> q = make_dt(dv[i], bias, p.softplus, has_ts, tv[i]);
        const R dt = m.dok ? q.dt : R(0);
        const int64_t boff = ((b * L + t) * G + m.g) * N + (int64_t)m.j * NP;
#pragma unroll
        for (int k = 0; k < NP; ++k) {
          hs[(i * NP + k) * kSelThreads + tid] = h[k];
          if ((int64_t)m.j * NP + k < N) {
            const S Bn = Ldg<S>::ld(Bm, boff + k);
            S a, s;
            discretize(p.disc, dt, A[k], a, s);
            h[k] = a * h[k] + s * (uv[i] * Bn);
          }
        }
      }
    }
    // ---- walk the chunk backwards (each thread reads only its own history: no barrier)
#pragma unroll
    for (int i = CK - 1; i >= 0; --i) {
      const int64_t t = t0 + i;
      if (t < L) {
        const int64_t off = (b * L + t) * Dm + m.d;
        const bool ok = m.dok;
        const R zt = (ok && has_z) ? Store<T>::ld(z + off) : R(0);
        const R dyt = (ok && has_dy) ? Store<T>::ld(dy + off) : R(0);
        const Dt<R> q = make_dt(dv[i], bias, p.softplus, has_ts, tv[i]);
        const R dt = ok ? q.dt : R(0);
        const R sz = has_z ? sigmoid_(zt) : R(1);
        const R gy = has_z ? dyt * zt * sz : dyt;
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
            discretize_grads(p.disc, dt, A[k], a, s, dadx, dsdt, dsdA);
            const S hp = hs[(i * NP + k) * kSelThreads + tid];
            const S ht = a * hp + s * (uv[i] * Bn);
            ypart += re_(Cn * ht);
            lam[k] = gy * conj_(Cn) + conj_(anext[k]) * lam[k];
            anext[k] = a;
            const S Gx = conj_(dadx) * lam[k] * conj_(hp);
            const S Gs = uv[i] * (lam[k] * conj_(Bn));
            ddtpart += re_(conj_(A[k]) * Gx) + re_(conj_(dsdt) * Gs);
            dAacc[k] += dt * Gx + conj_(dsdA) * Gs;
            dupart += re_(conj_(s * Bn) * lam[k]);
            dBv[k] = uv[i] * (conj_(s) * lam[k]);
            dCv[k] = gy * conj_(ht);
          }
        }
        const R y = channel_sum(ypart, ns) + Dd * uv[i];
        const R du = channel_sum(dupart, ns) + gy * Dd;
        const R ddt = channel_sum(ddtpart, ns);
        const R gsp = has_ts ? ddt * tv[i] : ddt;
        const R gv = p.softplus ? gsp * softplus_grad_(q.v) : gsp;
        if (m.j == 0 && ok) {
          dDacc += gy * uv[i];
          dbacc += gv;
          Store<T>::st(static_cast<T*>(p.du) + off, du);
          Store<T>::st(static_cast<T*>(p.ddelta) + off, gv);
          if (has_z) {
            const R dz = dyt * y * (sz * (R(1) + zt * (R(1) - sz)));
            Store<T>::st(static_cast<T*>(p.dz) + off, dz);
          }
        }
        if (has_ts) {  // dts_t = sum over channels of ddt * softplus(v)
          R v = (m.j == 0 && ok) ? ddt * q.sp : R(0);
          for (int o = 1; o < 32; o <<= 1) v += shfl_xor_(v, o);
          if (m.lane == 0) atomic_add_(static_cast<R*>(p.dts) + b * L + t, v);
        }
        if (warp_reduce) {
#pragma unroll
          for (int k = 0; k < NP; ++k) {
            dBv[k] = warp_channels_sum(dBv[k], ns);
            dCv[k] = warp_channels_sum(dCv[k], ns);
          }
        }
        if (!warp_reduce || m.cw == 0) {
#pragma unroll
          for (int k = 0; k < NP; ++k) {
            if (m.dok && (int64_t)m.j * NP + k < N) {
              atomic_add_(static_cast<R*>(p.dB), boff + k, dBv[k]);
              atomic_add_(static_cast<R*>(p.dC), boff + k, dCv[k]);
            }
          }
        }
      }
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
  // A warp may reduce over its channels when they all read the same group of B / C.
  const bool warp_reduce = ((p.Dm / p.G) % cpw) == 0;
  dim3 grid((unsigned)((p.Dm + cpb - 1) / cpb), (unsigned)p.Bt);
  sel_bwd_kernel<T, S, kSelNP, sel_ck<S>()><<<grid, kSelThreads, 0, stream>>>(p, ns, warp_reduce);
}

void launch_selective_bwd(const SelParams& p, cudaStream_t stream) {
  if (p.Bt == 0 || p.Dm == 0 || p.L == 0) return;
  switch (p.dtype) {
    case DType::F32: p.cplx ? bwd_typed<float, Cx<float>>(p, stream) : bwd_typed<float, float>(p, stream); break;
    case DType::F64: p.cplx ? bwd_typed<double, Cx<double>>(p, stream) : bwd_typed<double, double>(p, stream); break;
    case DType::F16: p.cplx ? bwd_typed<__half, Cx<float>>(p, stream) : bwd_typed<__half, float>(p, stream); break;
    case DType::BF16: p.cplx ? bwd_typed<__nv_bfloat16, Cx<float>>(p, stream) : bwd_typed<__nv_bfloat16, float>(p, stream); break;
  }
}

}  // namespace lrnnx_cuda
