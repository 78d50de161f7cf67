// Selective (S6) scan forward and the single decoding step (see selective.cuh for the layout).
//
//   dt_t  = softplus?(delta_t + bias) * ts_t
//   a, s  = discretize(method, A[d, n], dt_t)
//   h_t   = a h_{t-1} + s u_t B_t[g, n]
//   y_t   = (Re sum_n C_t[g, n] h_t + D u_t) * silu(z_t)
//
// The state lives in registers for the whole sequence; CK tokens of u / delta / z are loaded
// together before they are used (memory-level parallelism), and with store_ck the state entering
// every CK-token chunk is written to ck for the backward.
#include "selective.cuh"

namespace lrnnx_cuda {

template <typename T, typename S, int NP, int CK, int DISC>
__global__ void __launch_bounds__(kSelThreads)
sel_fwd_kernel(const SelParams p, const int ns) {
  using R = typename RealOf<S>::type;
  using EC = Elem<R, S>;
  // Per-token staging, one slot per thread (no barrier): u, dt, and the output gate.
  __shared__ R su[CK][kSelThreads], sdt[CK][kSelThreads], sg[CK][kSelThreads];
  const SelMap m = sel_map(p, ns);
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.y, L = p.L, Dm = p.Dm, N = p.N, G = p.G;
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const R* __restrict__ Bm = static_cast<const R*>(p.B);
  const R* __restrict__ Cm = static_cast<const R*>(p.C);
  const R* __restrict__ ts = static_cast<const R*>(p.ts);
  T* __restrict__ yout = static_cast<T*>(p.y);

  S A[NP], h[NP];
#pragma unroll
  for (int k = 0; k < NP; ++k) {
    const int64_t n = (int64_t)m.j * NP + k;
    const bool ok = m.dok && n < N;
    A[k] = ok ? EC::ld(static_cast<const R*>(p.A), m.d * N + n) : S(R(0));
    h[k] = (ok && p.h0 != nullptr) ? EC::ld(static_cast<const R*>(p.h0), (b * Dm + m.d) * N + n)
                                   : S(R(0));
  }
  const R Dd = (m.dok && p.D != nullptr) ? static_cast<const R*>(p.D)[m.d] : R(0);
  const R bias = (m.dok && p.bias != nullptr) ? static_cast<const R*>(p.bias)[m.d] : R(0);
  const bool has_z = z != nullptr, has_ts = ts != nullptr;

  int64_t kc = 0;
  for (int64_t t0 = 0; t0 < L; t0 += CK, ++kc) {
    if (p.store_ck) {
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        const int64_t n = (int64_t)m.j * NP + k;
        if (m.dok && n < N)
          EC::st(static_cast<R*>(p.ck), ((b * p.n_ck + kc) * Dm + m.d) * N + n, h[k]);
      }
    }
    // stage the chunk's inputs: all loads in flight together
#pragma unroll
    for (int i = 0; i < CK; ++i) {
      const int64_t t = t0 + i;
      const bool ok = m.dok && t < L;
      const int64_t off = (b * L + t) * Dm + m.d;
      const R uv = ok ? Store<T>::ld(u + off) : R(0);
      const R dv = ok ? Store<T>::ld(delta + off) : R(0);
      const R zv = (ok && has_z) ? Store<T>::ld(z + off) : R(0);
      const R tv = (t < L && has_ts) ? ts[b * L + t] : R(0);
      su[i][tid] = uv;
      sdt[i][tid] = ok ? make_dt(dv, bias, p.softplus, has_ts, tv).dt : R(0);
      sg[i][tid] = has_z ? zv * sigmoid_(zv) : R(1);
    }
    const int steps = (int)(L - t0 < CK ? L - t0 : CK);
#pragma unroll 2
    for (int i = 0; i < steps; ++i) {  // uniform over the block
      const int64_t t = t0 + i;
      const R uv = su[i][tid], dt = sdt[i][tid];
      const int64_t boff = ((b * L + t) * G + m.g) * N + (int64_t)m.j * NP;
      R ypart = R(0);
#pragma unroll
      for (int k = 0; k < NP; ++k) {
        if ((int64_t)m.j * NP + k < N) {
          const S Bn = Ldg<S>::ld(Bm, boff + k), Cn = Ldg<S>::ld(Cm, boff + k);
          S a, s;
          discretize_t<DISC>(dt, A[k], a, s);
          h[k] = a * h[k] + s * (uv * Bn);
          ypart += re_(Cn * h[k]);
        }
      }
      const R y = channel_sum(ypart, ns);
      if (m.j == 0 && m.dok)
        Store<T>::st(yout + (b * L + t) * Dm + m.d, (y + Dd * uv) * sg[i][tid]);
    }
  }
#pragma unroll
  for (int k = 0; k < NP; ++k) {
    const int64_t n = (int64_t)m.j * NP + k;
    if (m.dok && n < N) EC::st(static_cast<R*>(p.last), (b * Dm + m.d) * N + n, h[k]);
  }
}

// One token (L = 1): u, delta, z, y (Bt, Dm); B, C (Bt, G, N); state h0 -> last (Bt, Dm, N).
template <typename T, typename S, int NP>
__global__ void __launch_bounds__(kSelThreads)
sel_step_kernel(const SelParams p, const int ns) {
  using R = typename RealOf<S>::type;
  using EC = Elem<R, S>;
  const SelMap m = sel_map(p, ns);
  const int64_t b = blockIdx.y, Dm = p.Dm, N = p.N, G = p.G;
  const int64_t off = b * Dm + m.d;
  const R uv = m.dok ? Store<T>::ld(static_cast<const T*>(p.u) + off) : R(0);
  const R dv = m.dok ? Store<T>::ld(static_cast<const T*>(p.delta) + off) : R(0);
  const R bias = (m.dok && p.bias != nullptr) ? static_cast<const R*>(p.bias)[m.d] : R(0);
  const R tsv = p.ts != nullptr ? static_cast<const R*>(p.ts)[b] : R(0);
  const Dt<R> q = make_dt(dv, bias, p.softplus, p.ts != nullptr, tsv);
  const R dt = m.dok ? q.dt : R(0);
  const int64_t boff = (b * G + m.g) * N + (int64_t)m.j * NP;
  R ypart = R(0);
#pragma unroll
  for (int k = 0; k < NP; ++k) {
    const int64_t n = (int64_t)m.j * NP + k;
    if (m.dok && n < N) {
      const S A = EC::ld(static_cast<const R*>(p.A), m.d * N + n);
      S h = p.h0 != nullptr ? EC::ld(static_cast<const R*>(p.h0), (b * Dm + m.d) * N + n) : S(R(0));
      const S Bn = EC::ld(static_cast<const R*>(p.B), boff + k);
      const S Cn = EC::ld(static_cast<const R*>(p.C), boff + k);
      S a, s;
      discretize(p.disc, dt, A, a, s);
      h = a * h + s * (uv * Bn);
      ypart += re_(Cn * h);
      EC::st(static_cast<R*>(p.last), (b * Dm + m.d) * N + n, h);
    }
  }
  R y = channel_sum(ypart, ns);
  if (m.j == 0 && m.dok) {
    if (p.D != nullptr) y += static_cast<const R*>(p.D)[m.d] * uv;
    if (p.z != nullptr) {
      const R zv = Store<T>::ld(static_cast<const T*>(p.z) + off);
      y *= zv * sigmoid_(zv);
    }
    Store<T>::st(static_cast<T*>(p.y) + off, y);
  }
}

int selective_chunk(DType dtype, bool cplx) {
  if (dtype == DType::F64) return cplx ? sel_ck<Cx<double>>() : sel_ck<double>();
  return cplx ? sel_ck<Cx<float>>() : sel_ck<float>();
}

int selective_max_n() { return kSelMaxN; }

template <typename T, typename S>
static void fwd_typed(const SelParams& p, cudaStream_t stream, bool step) {
  const int ns = sel_ns(p.N);
  const int cpb = kSelThreads / ns;
  dim3 grid((unsigned)((p.Dm + cpb - 1) / cpb), (unsigned)p.Bt);
  if (step) sel_step_kernel<T, S, kSelNP><<<grid, kSelThreads, 0, stream>>>(p, ns);
  else LRNNX_DISC_SWITCH(p.disc, (sel_fwd_kernel<T, S, kSelNP, sel_ck<S>(), D_>
                                  <<<grid, kSelThreads, 0, stream>>>(p, ns)))
}

static void fwd_dispatch(const SelParams& p, cudaStream_t stream, bool step) {
  if (p.Bt == 0 || p.Dm == 0) return;
  switch (p.dtype) {
    case DType::F32: p.cplx ? fwd_typed<float, Cx<float>>(p, stream, step) : fwd_typed<float, float>(p, stream, step); break;
    case DType::F64: p.cplx ? fwd_typed<double, Cx<double>>(p, stream, step) : fwd_typed<double, double>(p, stream, step); break;
    case DType::F16: p.cplx ? fwd_typed<__half, Cx<float>>(p, stream, step) : fwd_typed<__half, float>(p, stream, step); break;
    case DType::BF16: p.cplx ? fwd_typed<__nv_bfloat16, Cx<float>>(p, stream, step) : fwd_typed<__nv_bfloat16, float>(p, stream, step); break;
  }
}

void launch_selective_fwd(const SelParams& p, cudaStream_t stream) {
  if (p.L == 0 || p.Bt == 0 || p.Dm == 0) return;
  if (selective_tiled_ok(p)) return launch_selective_tiled(p, stream, false);
  fwd_dispatch(p, stream, false);
}

void launch_selective_step(const SelParams& p, cudaStream_t stream) { fwd_dispatch(p, stream, true); }

}  // namespace lrnnx_cuda
