// PyTorch operators of the lrnnx CUDA kernels (namespace lrnnx_cuda_impl), registered with
// TORCH_LIBRARY so the shared library has no Python dependency; kernels/cuda/ops.py wraps them
// in torch.library custom ops with fake implementations and autograd.
//
// The Python wrappers validate, cast and make tensors contiguous before calling; the checks
// here guard the kernels' assumptions (internal errors if they ever fire).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "kernels.h"

namespace lrnnx_cuda {
namespace {

using at::Tensor;
using OptT = c10::optional<Tensor>;

const void* ptr(const OptT& t) { return t.has_value() ? t->data_ptr() : nullptr; }

DType storage_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: case at::kComplexFloat: return DType::F32;
    case at::kDouble: case at::kComplexDouble: return DType::F64;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    default: TORCH_CHECK(false, "lrnnx cuda: unsupported dtype ", t.scalar_type());
  }
}

at::ScalarType compute_real(const Tensor& t) {
  return (t.scalar_type() == at::kDouble || t.scalar_type() == at::kComplexDouble) ? at::kDouble
                                                                                   : at::kFloat;
}

void check_cuda(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "lrnnx cuda: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), "lrnnx cuda: ", name, " must be contiguous");
}
void check_opt(const OptT& t, const char* name) {
  if (t.has_value()) check_cuda(*t, name);
}

// ------------------------------------------------------------------------- diag scan
std::tuple<Tensor, Tensor> diag_scan_fwd(const Tensor& a, const OptT& b, const OptT& h0,
                                         const OptT& cu, bool reverse) {
  check_cuda(a, "a");
  check_opt(b, "b");
  check_opt(h0, "h0");
  check_opt(cu, "cu_seqlens");
  const c10::cuda::CUDAGuard guard(a.device());
  const Tensor& ref = b.has_value() ? *b : a;
  TORCH_CHECK(a.dim() == 3 && ref.dim() == 3, "lrnnx cuda: a, b must be 3-D");
  const int64_t B = ref.size(0), L = ref.size(1), D = ref.size(2);
  const int64_t nseq = cu.has_value() ? cu->numel() - 1 : B;
  const bool cplx = a.is_complex();
  auto cdt = cplx ? c10::toComplexType(compute_real(a)) : compute_real(a);
  // half inputs get their last state in the input dtype (what the Python wrapper returns), so
  // no cast op follows the scan; fp32 / fp64 / complex keep the compute type (the same)
  const bool half = a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16;
  Tensor h = at::empty({B, L, D}, a.options());
  Tensor last = at::empty({nseq, D}, half ? a.options() : a.options().dtype(cdt));
  DiagParams p{};
  p.a = a.data_ptr();
  p.b = ptr(b);
  p.h0 = ptr(h0);
  p.out = h.data_ptr();
  p.last = last.data_ptr();
  p.cu = cu.has_value() ? cu->data_ptr<int32_t>() : nullptr;
  p.nseq = nseq; p.L = L; p.D = D;
  p.a_bcast = a.size(0) != B;
  p.reverse = reverse; p.bwd = false; p.cplx = cplx;
  p.last_store = half;
  p.dtype = storage_dtype(a);
  launch_diag_scan(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {h, last};
}

std::tuple<Tensor, Tensor, Tensor> diag_scan_bwd(const Tensor& a, const Tensor& h,
                                                 const OptT& h0, const OptT& cu, const OptT& gh,
                                                 const OptT& gl, bool reverse, bool need_a) {
  check_cuda(a, "a");
  check_cuda(h, "h");
  check_opt(h0, "h0");
  check_opt(cu, "cu_seqlens");
  check_opt(gh, "grad_h");
  check_opt(gl, "grad_h_last");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t B = h.size(0), L = h.size(1), D = h.size(2);
  const int64_t nseq = cu.has_value() ? cu->numel() - 1 : B;
  const bool cplx = a.is_complex();
  auto cdt = cplx ? c10::toComplexType(compute_real(a)) : compute_real(a);
  Tensor gb = at::empty({B, L, D}, a.options());
  Tensor gh0 = at::empty({nseq, D}, a.options().dtype(cdt));
  Tensor ga = need_a ? at::empty({B, L, D}, a.options()) : at::empty({0}, a.options());
  DiagParams p{};
  p.a = a.data_ptr();
  p.b = ptr(gh);
  p.h0 = ptr(gl);
  p.out = gb.data_ptr();
  p.last = gh0.data_ptr();
  p.cu = cu.has_value() ? cu->data_ptr<int32_t>() : nullptr;
  p.hf = h.data_ptr();
  p.h0f = ptr(h0);
  p.ga = need_a ? ga.data_ptr() : nullptr;
  p.nseq = nseq; p.L = L; p.D = D;
  p.a_bcast = a.size(0) != B;
  p.reverse = reverse; p.bwd = true; p.cplx = cplx;
  p.dtype = storage_dtype(a);
  launch_diag_scan(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ga, gb, gh0};
}

Tensor diag_step(const Tensor& a, const Tensor& b, const OptT& h) {
  check_cuda(a, "a_t");
  check_cuda(b, "b_t");
  check_opt(h, "h");
  const c10::cuda::CUDAGuard guard(b.device());
  const bool cplx = a.is_complex();
  auto cdt = cplx ? c10::toComplexType(compute_real(a)) : compute_real(a);
  Tensor out = at::empty({b.size(0), b.size(1)}, b.options().dtype(cdt));
  DiagStepParams p{};
  p.a = a.data_ptr(); p.b = b.data_ptr(); p.h = ptr(h); p.out = out.data_ptr();
  p.B = b.size(0); p.D = b.size(1);
  p.a_bcast = a.size(0) != b.size(0);
  p.cplx = cplx;
  p.dtype = storage_dtype(a);
  launch_diag_step(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ------------------------------------------------------------------------- selective scan
SelParams sel_params(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                     const Tensor& C, const OptT& D, const OptT& z, const OptT& bias,
                     const OptT& ts, bool softplus, int64_t disc) {
  for (auto* pr : {&u, &delta, &A, &B, &C}) check_cuda(*pr, "input");
  check_opt(D, "D");
  check_opt(z, "z");
  check_opt(bias, "delta_bias");
  check_opt(ts, "timesteps");
  TORCH_CHECK(B.dim() == 4 && C.sizes() == B.sizes(), "lrnnx cuda: B, C must be (Bt, L, G, N)");
  TORCH_CHECK(A.scalar_type() == B.scalar_type() && B.scalar_type() == C.scalar_type(),
              "lrnnx cuda: A, B, C must share one dtype");
  TORCH_CHECK(delta.scalar_type() == u.scalar_type(), "lrnnx cuda: delta must have u's dtype");
  TORCH_CHECK(A.size(1) <= selective_max_n(), "lrnnx cuda: N > ", selective_max_n());
  SelParams p{};
  p.u = u.data_ptr(); p.delta = delta.data_ptr(); p.z = ptr(z);
  p.A = A.data_ptr(); p.B = B.data_ptr(); p.C = C.data_ptr();
  p.D = ptr(D); p.bias = ptr(bias); p.ts = ptr(ts);
  p.Bt = u.size(0); p.L = u.size(1); p.Dm = u.size(2); p.N = A.size(1); p.G = B.size(2);
  p.disc = (int)disc;
  p.softplus = softplus;
  p.cplx = A.is_complex();
  p.dtype = storage_dtype(u);
  return p;
}

int64_t chunk_len(const Tensor& u, const Tensor& A) {
  return selective_chunk(storage_dtype(u), A.is_complex());
}

std::tuple<Tensor, Tensor, Tensor> selective_fwd(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const OptT& D, const OptT& z, const OptT& bias, const OptT& ts, const OptT& h0,
    bool softplus, int64_t disc, bool store_ck) {
  const c10::cuda::CUDAGuard guard(u.device());
  SelParams p = sel_params(u, delta, A, B, C, D, z, bias, ts, softplus, disc);
  check_opt(h0, "h0");
  const int64_t ck_len = chunk_len(u, A);
  p.n_ck = (p.L + ck_len - 1) / ck_len;
  Tensor y = at::empty_like(u);
  Tensor last = at::empty({p.Bt, p.Dm, p.N}, A.options());
  Tensor ck = store_ck ? at::empty({p.Bt, p.n_ck, p.Dm, p.N}, A.options())
                       : at::empty({0}, A.options());
  if (p.L == 0) {
    if (h0.has_value()) last.copy_(*h0);
    else last.zero_();
    return {y, last, ck};
  }
  p.h0 = ptr(h0);
  p.y = y.data_ptr();
  p.last = last.data_ptr();
  p.ck = store_ck ? ck.data_ptr() : nullptr;
  p.store_ck = store_ck;
  launch_selective_fwd(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, last, ck};
}

std::vector<Tensor> selective_bwd(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const OptT& D, const OptT& z, const OptT& bias, const OptT& ts, const Tensor& ck,
    const OptT& dy, const OptT& dlast, bool softplus, int64_t disc) {
  const c10::cuda::CUDAGuard guard(u.device());
  SelParams p = sel_params(u, delta, A, B, C, D, z, bias, ts, softplus, disc);
  check_cuda(ck, "checkpoints");
  check_opt(dy, "grad_y");
  check_opt(dlast, "grad_h_last");
  const int64_t ck_len = chunk_len(u, A);
  p.n_ck = (p.L + ck_len - 1) / ck_len;
  TORCH_CHECK(ck.dim() == 4 && ck.size(1) == p.n_ck,
              "lrnnx cuda: checkpoints do not match the chunk length ", ck_len);
  auto rdt = compute_real(u);
  auto ro = u.options().dtype(rdt);
  Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  Tensor dz = z.has_value() ? at::empty_like(u) : at::empty({0}, u.options());
  Tensor dA = at::empty({p.Bt, p.Dm, p.N}, A.options());
  Tensor dB = at::zeros_like(B), dC = at::zeros_like(C);
  Tensor dD = at::empty({p.Bt, p.Dm}, ro), dbias = at::empty({p.Bt, p.Dm}, ro);
  Tensor dts = at::zeros({p.Bt, p.L}, ro);
  Tensor dh0 = at::empty({p.Bt, p.Dm, p.N}, A.options());
  p.ck = ck.data_ptr();
  p.dy = ptr(dy); p.dlast = ptr(dlast);
  p.du = du.data_ptr(); p.ddelta = ddelta.data_ptr(); p.dz = z.has_value() ? dz.data_ptr() : nullptr;
  p.dA = dA.data_ptr(); p.dB = dB.data_ptr(); p.dC = dC.data_ptr();
  p.dD = dD.data_ptr(); p.dbias = dbias.data_ptr(); p.dts = dts.data_ptr(); p.dh0 = dh0.data_ptr();
  launch_selective_bwd(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dts, dh0};
}

std::tuple<Tensor, Tensor> selective_step(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const OptT& D, const OptT& z, const OptT& bias, const OptT& ts, const OptT& state,
    bool softplus, int64_t disc) {
  // u, delta, z (Bt, Dm); B, C (Bt, G, N): viewed as one-token sequences.
  const c10::cuda::CUDAGuard guard(u.device());
  SelParams p = sel_params(u.unsqueeze(1), delta.unsqueeze(1), A, B.unsqueeze(1),
                           C.unsqueeze(1), D, z, bias, ts, softplus, disc);
  check_opt(state, "state");
  Tensor y = at::empty_like(u);
  Tensor out = at::empty({p.Bt, p.Dm, p.N}, A.options());
  p.h0 = ptr(state);
  p.y = y.data_ptr();
  p.last = out.data_ptr();
  launch_selective_step(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, out};
}

int64_t selective_chunk_op(bool double_precision, bool cplx) {
  return selective_chunk(double_precision ? DType::F64 : DType::F32, cplx);
}

}  // namespace
}  // namespace lrnnx_cuda

TORCH_LIBRARY(lrnnx_cuda_impl, m) {
  m.def("diag_scan_fwd(Tensor a, Tensor? b, Tensor? h0, Tensor? cu, bool reverse) -> (Tensor, Tensor)");
  m.def("diag_scan_bwd(Tensor a, Tensor h, Tensor? h0, Tensor? cu, Tensor? gh, Tensor? gl, "
        "bool reverse, bool need_a) -> (Tensor, Tensor, Tensor)");
  m.def("diag_step(Tensor a, Tensor b, Tensor? h) -> Tensor");
  m.def("selective_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
        "Tensor? z, Tensor? bias, Tensor? ts, Tensor? h0, bool softplus, int disc, "
        "bool store_ck) -> (Tensor, Tensor, Tensor)");
  m.def("selective_bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
        "Tensor? z, Tensor? bias, Tensor? ts, Tensor ck, Tensor? dy, Tensor? dlast, "
        "bool softplus, int disc) -> Tensor[]");
  m.def("selective_step(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
        "Tensor? z, Tensor? bias, Tensor? ts, Tensor? state, bool softplus, int disc) "
        "-> (Tensor, Tensor)");
  m.def("selective_chunk(bool double_precision, bool cplx) -> int",
        &lrnnx_cuda::selective_chunk_op);
  m.def("max_state() -> int", []() -> int64_t { return lrnnx_cuda::selective_max_n(); });
}

TORCH_LIBRARY_IMPL(lrnnx_cuda_impl, CUDA, m) {
  m.impl("diag_scan_fwd", &lrnnx_cuda::diag_scan_fwd);
  m.impl("diag_scan_bwd", &lrnnx_cuda::diag_scan_bwd);
  m.impl("diag_step", &lrnnx_cuda::diag_step);
  m.impl("selective_fwd", &lrnnx_cuda::selective_fwd);
  m.impl("selective_bwd", &lrnnx_cuda::selective_bwd);
  m.impl("selective_step", &lrnnx_cuda::selective_step);
}
