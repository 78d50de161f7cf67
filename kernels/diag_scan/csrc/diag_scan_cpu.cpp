// Diagonal linear recurrence on CPU: h_t = a_t * h_{t-1} + b_t.
//
// Layout (B, L, D), D contiguous. Work is split into (segment, channel-block)
// items run in parallel with OpenMP; a segment is one batch row or, with
// cu_seqlens, one packed sequence. Inside an item the time loop is sequential
// and the channel loop (a contiguous run of kBlock channels) is innermost, so
// every step is a vectorizable row update and the state lives in a small
// stack array (registers / L1).
//
// Complex tensors are processed as interleaved (re, im) pairs with the
// multiplication written out, which avoids the NaN/Inf recovery branches of
// std::complex and lets the compiler vectorize.
//
// Backward (PyTorch conjugate convention), iterating in reverse scan order:
//   g_t = grad_h_t + conj(a_{t+1}) g_{t+1}   (g seeded with grad of h_last)
//   grad_b_t = g_t,  grad_a_t = g_t * conj(h_{t-1}),  grad_h0 = conj(a_0) g_0
// grad_a is written per batch row; the Python side sums it when `a` is
// broadcast over the batch.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "block_cache.h"  // empty_out(): huge-page outputs from a block cache

namespace {

// A work item owns up to kBlock contiguous channels. Wide blocks keep the
// memory walk sequential (a full (L, D) row sweep when D <= kBlock), which is
// what the hardware prefetchers need; blocks are narrowed (down to kMinBlock)
// only when there would otherwise be too few items to feed every thread.
constexpr int64_t kBlock = 512;
constexpr int64_t kMinBlock = 16;

struct Layout {
  int64_t nseg, L, D;
  bool a_bcast;
  const int64_t* cu;  // nullptr unless varlen
  int64_t blk = kBlock;

  // Segment s covers tokens [t0, t1) of batch row `batch`.
  inline void seg(int64_t s, int64_t& batch, int64_t& t0, int64_t& t1) const {
    if (cu) { batch = 0; t0 = cu[s]; t1 = cu[s + 1]; }
    else { batch = s; t0 = 0; t1 = L; }
  }
  inline int64_t nblk() const { return (D + blk - 1) / blk; }

  void choose_block() {
    const int64_t want = 2 * static_cast<int64_t>(at::get_num_threads());
    blk = std::min<int64_t>(kBlock, (D + kMinBlock - 1) / kMinBlock * kMinBlock);
    while (blk > kMinBlock && nseg * nblk() < want) {
      blk = std::max<int64_t>(kMinBlock, (blk / 2 + kMinBlock - 1) / kMinBlock * kMinBlock);
    }
  }
};

// Software prefetch kPrefetchRows time steps ahead: each step touches one
// short run of every stream (a, b, h), too little for the hardware
// prefetchers to ramp up on their own.
constexpr int64_t kPrefetchRows = 6;

// Prefetch one row run of n scalars for reading (rw = 0) or writing (rw = 1).
template <int RW, typename T>
inline void prefetch(const T* p, int64_t n) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t i = 0; i < n; i += kLine) __builtin_prefetch(p + i, RW, 3);
}

// Position of the k-th token of [t0, t1) in scan order.
inline int64_t pos(int64_t k, int64_t t0, int64_t t1, bool reverse) {
  return reverse ? t1 - 1 - k : t0 + k;
}

// ---------------------------------------------------------------- real ---
template <typename T>
void fwd_real(const Layout& lay, const T* a, const T* b, const T* h0, T* h,
              T* hlast, bool reverse) {
  const int64_t L = lay.L, D = lay.D, nblk = lay.nblk();
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t w = 0; w < lay.nseg * nblk; ++w) {
    const int64_t s = w / nblk, d0 = (w % nblk) * lay.blk;
    const int64_t n = std::min(lay.blk, D - d0);
    int64_t batch, t0, t1;
    lay.seg(s, batch, t0, t1);
    const T* pa = a + (lay.a_bcast ? 0 : batch * L * D) + d0;
    const T* pb = b + batch * L * D + d0;
    T* ph = h + batch * L * D + d0;
    T acc[kBlock];
    for (int64_t i = 0; i < n; ++i) acc[i] = h0 ? h0[s * D + d0 + i] : T(0);
    const int64_t pf = (reverse ? -kPrefetchRows : kPrefetchRows) * D;
    for (int64_t k = 0; k < t1 - t0; ++k) {
      const int64_t o = pos(k, t0, t1, reverse) * D;
      const T* ar = pa + o;
      const T* br = pb + o;
      T* hr = ph + o;
      if (k + kPrefetchRows < t1 - t0) {
        prefetch<0>(ar + pf, n);
        prefetch<0>(br + pf, n);
        prefetch<1>(hr + pf, n);
      }
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        acc[i] = ar[i] * acc[i] + br[i];
        hr[i] = acc[i];
      }
    }
    for (int64_t i = 0; i < n; ++i) hlast[s * D + d0 + i] = acc[i];
  }
}

template <typename T>
void bwd_real(const Layout& lay, const T* a, const T* h, const T* h0,
              const T* gh, const T* ghlast, T* ga, T* gb, T* gh0,
              bool reverse) {
  const int64_t L = lay.L, D = lay.D, nblk = lay.nblk();
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t w = 0; w < lay.nseg * nblk; ++w) {
    const int64_t s = w / nblk, d0 = (w % nblk) * lay.blk;
    const int64_t n = std::min(lay.blk, D - d0);
    int64_t batch, t0, t1;
    lay.seg(s, batch, t0, t1);
    const int64_t off = batch * L * D + d0;
    const T* pa = a + (lay.a_bcast ? 0 : batch * L * D) + d0;
    T g[kBlock], hinit[kBlock];
    for (int64_t i = 0; i < n; ++i) {
      g[i] = ghlast ? ghlast[s * D + d0 + i] : T(0);
      hinit[i] = h0 ? h0[s * D + d0 + i] : T(0);
    }
    // Walks the scan order backwards: rows ahead are at -pf.
    const int64_t pf = (reverse ? -kPrefetchRows : kPrefetchRows) * D;
    for (int64_t k = t1 - t0 - 1; k >= 0; --k) {
      const int64_t o = pos(k, t0, t1, reverse) * D;
      // State that a_t multiplied in the forward pass.
      const T* hp = k == 0 ? hinit : h + off + pos(k - 1, t0, t1, reverse) * D;
      const T* ar = pa + o;
      const T* ghr = gh + off + o;
      T* gar = ga + off + o;
      T* gbr = gb + off + o;
      if (k - kPrefetchRows > 0) {
        prefetch<0>(ar - pf, n);
        prefetch<0>(ghr - pf, n);
        prefetch<0>(hp - pf, n);
        prefetch<1>(gar - pf, n);
        prefetch<1>(gbr - pf, n);
      }
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T gi = ghr[i] + g[i];
        gbr[i] = gi;
        gar[i] = gi * hp[i];
        g[i] = ar[i] * gi;
      }
    }
    for (int64_t i = 0; i < n; ++i) gh0[s * D + d0 + i] = g[i];
  }
}

// ------------------------------------------------------------- complex ---
// Pointers are to interleaved (re, im) scalars; D counts complex channels.
template <typename T>
void fwd_cplx(const Layout& lay, const T* a, const T* b, const T* h0, T* h,
              T* hlast, bool reverse) {
  const int64_t L = lay.L, D = lay.D, nblk = lay.nblk();
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t w = 0; w < lay.nseg * nblk; ++w) {
    const int64_t s = w / nblk, d0 = (w % nblk) * lay.blk;
    const int64_t n = std::min(lay.blk, D - d0);
    int64_t batch, t0, t1;
    lay.seg(s, batch, t0, t1);
    const T* pa = a + 2 * ((lay.a_bcast ? 0 : batch * L * D) + d0);
    const T* pb = b + 2 * (batch * L * D + d0);
    T* ph = h + 2 * (batch * L * D + d0);
    T re[kBlock], im[kBlock];
    for (int64_t i = 0; i < n; ++i) {
      re[i] = h0 ? h0[2 * (s * D + d0 + i)] : T(0);
      im[i] = h0 ? h0[2 * (s * D + d0 + i) + 1] : T(0);
    }
    const int64_t pf = 2 * (reverse ? -kPrefetchRows : kPrefetchRows) * D;
    for (int64_t k = 0; k < t1 - t0; ++k) {
      const int64_t o = 2 * pos(k, t0, t1, reverse) * D;
      const T* ar = pa + o;
      const T* br = pb + o;
      T* hr = ph + o;
      if (k + kPrefetchRows < t1 - t0) {
        prefetch<0>(ar + pf, 2 * n);
        prefetch<0>(br + pf, 2 * n);
        prefetch<1>(hr + pf, 2 * n);
      }
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T xr = ar[2 * i], xi = ar[2 * i + 1];
        const T nr = xr * re[i] - xi * im[i] + br[2 * i];
        const T ni = xr * im[i] + xi * re[i] + br[2 * i + 1];
        re[i] = nr;
        im[i] = ni;
        hr[2 * i] = nr;
        hr[2 * i + 1] = ni;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      hlast[2 * (s * D + d0 + i)] = re[i];
      hlast[2 * (s * D + d0 + i) + 1] = im[i];
    }
  }
}

template <typename T>
void bwd_cplx(const Layout& lay, const T* a, const T* h, const T* h0,
              const T* gh, const T* ghlast, T* ga, T* gb, T* gh0,
              bool reverse) {
  const int64_t L = lay.L, D = lay.D, nblk = lay.nblk();
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t w = 0; w < lay.nseg * nblk; ++w) {
    const int64_t s = w / nblk, d0 = (w % nblk) * lay.blk;
    const int64_t n = std::min(lay.blk, D - d0);
    int64_t batch, t0, t1;
    lay.seg(s, batch, t0, t1);
    const int64_t off = 2 * (batch * L * D + d0);
    const T* pa = a + 2 * ((lay.a_bcast ? 0 : batch * L * D) + d0);
    T gre[kBlock], gim[kBlock], hinit[2 * kBlock];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = 2 * (s * D + d0 + i);
      gre[i] = ghlast ? ghlast[j] : T(0);
      gim[i] = ghlast ? ghlast[j + 1] : T(0);
      hinit[2 * i] = h0 ? h0[j] : T(0);
      hinit[2 * i + 1] = h0 ? h0[j + 1] : T(0);
    }
    const int64_t pf = 2 * (reverse ? -kPrefetchRows : kPrefetchRows) * D;
    for (int64_t k = t1 - t0 - 1; k >= 0; --k) {
      const int64_t o = 2 * pos(k, t0, t1, reverse) * D;
      const T* hp = k == 0 ? hinit : h + off + 2 * pos(k - 1, t0, t1, reverse) * D;
      const T* ar = pa + o;
      const T* ghr = gh + off + o;
      T* gar = ga + off + o;
      T* gbr = gb + off + o;
      if (k - kPrefetchRows > 0) {
        prefetch<0>(ar - pf, 2 * n);
        prefetch<0>(ghr - pf, 2 * n);
        prefetch<0>(hp - pf, 2 * n);
        prefetch<1>(gar - pf, 2 * n);
        prefetch<1>(gbr - pf, 2 * n);
      }
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T gr = ghr[2 * i] + gre[i], gi = ghr[2 * i + 1] + gim[i];
        gbr[2 * i] = gr;
        gbr[2 * i + 1] = gi;
        // g * conj(h_prev)
        const T pr = hp[2 * i], pi = hp[2 * i + 1];
        gar[2 * i] = gr * pr + gi * pi;
        gar[2 * i + 1] = gi * pr - gr * pi;
        // conj(a) * g
        const T xr = ar[2 * i], xi = ar[2 * i + 1];
        gre[i] = xr * gr + xi * gi;
        gim[i] = xr * gi - xi * gr;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      gh0[2 * (s * D + d0 + i)] = gre[i];
      gh0[2 * (s * D + d0 + i) + 1] = gim[i];
    }
  }
}

// ------------------------------------------------------------- binding ---
Layout make_layout(const at::Tensor& a, const at::Tensor& b,
                   const std::optional<at::Tensor>& h0,
                   const std::optional<at::Tensor>& cu) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "diag_scan_cpu: CPU tensors only");
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3, "diag_scan_cpu: a, b must be (B, L, D)");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "diag_scan_cpu: a, b dtype mismatch");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "diag_scan_cpu: a, b must be contiguous");
  const int64_t B = b.size(0), L = b.size(1), D = b.size(2);
  TORCH_CHECK(a.size(1) == L && a.size(2) == D && (a.size(0) == B || a.size(0) == 1),
              "diag_scan_cpu: a must be (B, L, D) or (1, L, D)");
  Layout lay{B, L, D, a.size(0) != B, nullptr};
  if (cu.has_value()) {
    TORCH_CHECK(B == 1, "diag_scan_cpu: cu_seqlens needs B == 1");
    TORCH_CHECK(cu->scalar_type() == at::kLong && cu->is_contiguous() && cu->dim() == 1,
                "diag_scan_cpu: cu_seqlens must be contiguous int64");
    lay.nseg = cu->numel() - 1;
    lay.cu = cu->data_ptr<int64_t>();
  }
  lay.choose_block();
  if (h0.has_value()) {
    TORCH_CHECK(h0->scalar_type() == b.scalar_type() && h0->is_contiguous() &&
                    h0->dim() == 2 && h0->size(0) == lay.nseg && h0->size(1) == D,
                "diag_scan_cpu: h0 must be contiguous (N, D) of b's dtype");
  }
  return lay;
}

template <typename T>
const T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

std::vector<at::Tensor> fwd(const at::Tensor& a, const at::Tensor& b,
                            const std::optional<at::Tensor>& h0,
                            const std::optional<at::Tensor>& cu, bool reverse) {
  const Layout lay = make_layout(a, b, h0, cu);
  auto h = empty_out(b.sizes(), b.options());
  auto hlast = at::empty({lay.nseg, lay.D}, b.options());
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "diag_scan_cpu_fwd", [&] {
    fwd_real<scalar_t>(lay, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                       opt_ptr<scalar_t>(h0), h.data_ptr<scalar_t>(),
                       hlast.data_ptr<scalar_t>(), reverse);
  });
  return {h, hlast};
}

std::vector<at::Tensor> fwd_complex(const at::Tensor& a, const at::Tensor& b,
                                    const std::optional<at::Tensor>& h0,
                                    const std::optional<at::Tensor>& cu, bool reverse) {
  const Layout lay = make_layout(a, b, h0, cu);
  auto h = empty_out(b.sizes(), b.options());
  auto hlast = at::empty({lay.nseg, lay.D}, b.options());
  AT_DISPATCH_COMPLEX_TYPES(b.scalar_type(), "diag_scan_cpu_fwd_c", [&] {
    using R = typename scalar_t::value_type;
    fwd_cplx<R>(lay, reinterpret_cast<const R*>(a.data_ptr()),
                reinterpret_cast<const R*>(b.data_ptr()), opt_ptr<R>(h0),
                reinterpret_cast<R*>(h.data_ptr()),
                reinterpret_cast<R*>(hlast.data_ptr()), reverse);
  });
  return {h, hlast};
}

std::vector<at::Tensor> bwd_any(const at::Tensor& a, const at::Tensor& h,
                                const std::optional<at::Tensor>& h0,
                                const at::Tensor& gh,
                                const std::optional<at::Tensor>& ghlast,
                                const std::optional<at::Tensor>& cu, bool reverse) {
  const Layout lay = make_layout(a, h, h0, cu);
  TORCH_CHECK(gh.sizes() == h.sizes() && gh.scalar_type() == h.scalar_type() && gh.is_contiguous(),
              "diag_scan_cpu: grad_h must be contiguous, shaped like h");
  if (ghlast.has_value()) {
    TORCH_CHECK(ghlast->scalar_type() == h.scalar_type() && ghlast->is_contiguous() &&
                    ghlast->numel() == lay.nseg * lay.D,
                "diag_scan_cpu: grad_h_last must be contiguous (N, D)");
  }
  auto ga = empty_out(h.sizes(), h.options());  // per batch row, summed in Python if broadcast
  auto gb = empty_out(h.sizes(), h.options());
  auto gh0 = at::empty({lay.nseg, lay.D}, h.options());
  if (h.is_complex()) {
    AT_DISPATCH_COMPLEX_TYPES(h.scalar_type(), "diag_scan_cpu_bwd_c", [&] {
      using R = typename scalar_t::value_type;
      bwd_cplx<R>(lay, reinterpret_cast<const R*>(a.data_ptr()),
                  reinterpret_cast<const R*>(h.data_ptr()), opt_ptr<R>(h0),
                  reinterpret_cast<const R*>(gh.data_ptr()), opt_ptr<R>(ghlast),
                  reinterpret_cast<R*>(ga.data_ptr()), reinterpret_cast<R*>(gb.data_ptr()),
                  reinterpret_cast<R*>(gh0.data_ptr()), reverse);
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "diag_scan_cpu_bwd", [&] {
      bwd_real<scalar_t>(lay, a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                         opt_ptr<scalar_t>(h0), gh.data_ptr<scalar_t>(),
                         opt_ptr<scalar_t>(ghlast), ga.data_ptr<scalar_t>(),
                         gb.data_ptr<scalar_t>(), gh0.data_ptr<scalar_t>(), reverse);
    });
  }
  return {ga, gb, gh0};
}

std::vector<at::Tensor> fwd_any(const at::Tensor& a, const at::Tensor& b,
                                const std::optional<at::Tensor>& h0,
                                const std::optional<at::Tensor>& cu, bool reverse) {
  return b.is_complex() ? fwd_complex(a, b, h0, cu, reverse) : fwd(a, b, h0, cu, reverse);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd_any, "diag scan forward -> (h, h_last)");
  m.def("bwd", &bwd_any, "diag scan backward -> (grad_a per batch row, grad_b, grad_h0)");
}
