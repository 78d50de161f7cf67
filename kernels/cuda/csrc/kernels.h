// Host-side interface of the lrnnx CUDA kernels (plain pointers; no torch types), so the .cu
// files compile without the PyTorch headers and ops.cpp does all tensor handling.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace lrnnx_cuda {

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// ---------------------------------------------------------------- diagonal scan
// Forward  h_t = a_t h_{t-1} + b_t (or t+1 with reverse); adjoint with bwd = true:
//   g_t = gh_t + conj(a_next) g_next, seeded with the gradient of h_last;
//   out = grad_b = g, last = grad_h0, ga = g * conj(h_prev) (h_prev from hf / h0f).
struct DiagParams {
  const void* a;     // (Ba, L, D) storage type; Ba = 1 (broadcast) or B
  const void* b;     // (B, L, D) or nullptr (zeros); in bwd: grad of h
  const void* h0;    // (nseq, D) compute type or nullptr; in bwd: grad of h_last
  void* out;         // (B, L, D) storage type
  void* last;        // (nseq, D) compute type; storage type when last_store
  const int32_t* cu; // (nseq + 1) offsets or nullptr
  const void* hf;    // bwd: forward states (B, L, D) storage type
  const void* h0f;   // bwd: forward initial state (nseq, D) compute type or nullptr
  void* ga;          // bwd: grad of a per batch row (B, L, D) storage type or nullptr
  int64_t nseq, L, D;
  bool a_bcast, reverse, bwd, cplx;
  bool last_store;   // fwd: write last in the storage type (half inputs: no cast op after)
  DType dtype;       // storage type of a, b, out, hf, ga; compute type float (double for F64)
};
void launch_diag_scan(const DiagParams& p, cudaStream_t stream);

// h_new = a * h + b over (B, D) elements (a may be (1, D)); h nullptr = zeros. Compute type in
// and out for h / h_new, storage type for a and b.
struct DiagStepParams {
  const void* a; const void* b; const void* h; void* out;
  int64_t B, D;
  bool a_bcast, cplx;
  DType dtype;
};
void launch_diag_step(const DiagStepParams& p, cudaStream_t stream);

// ---------------------------------------------------------------- selective (S6) scan
// u, delta, z, y, du, ddelta, dz, dy: (Bt, L, Dm) storage type.  Everything else in the
// compute type R (float; double for F64): A (Dm, N), B/C (Bt, L, G, N), h0 / last / dlast /
// dh0 (Bt, Dm, N), ck (Bt, n_ck, Dm, N), dA (Bt, Dm, N), dB / dC (Bt, L, G, N) (zeroed by the
// caller, accumulated atomically) -- complex when cplx -- and the real D, delta_bias (Dm),
// timesteps (Bt, L), dD / dbias (Bt, Dm), dts (Bt, L) (zeroed, atomic).
struct SelParams {
  const void* u; const void* delta; const void* z;
  const void* A; const void* B; const void* C; const void* D; const void* bias;
  const void* ts; const void* h0;
  void* y; void* last; void* ck;
  // backward
  const void* dy; const void* dlast;
  void* du; void* ddelta; void* dz; void* dA; void* dB; void* dC; void* dD; void* dbias;
  void* dts; void* dh0;
  int64_t Bt, L, Dm, N, G, n_ck;
  int disc;
  bool softplus, store_ck, cplx;
  DType dtype;
};
// Tokens between two state checkpoints of the selective scan (the forward stores the state
// entering every chunk; the backward recomputes a chunk from it).
int selective_chunk(DType dtype, bool cplx);
// Largest N the kernels take.
int selective_max_n();
void launch_selective_fwd(const SelParams& p, cudaStream_t stream);
void launch_selective_bwd(const SelParams& p, cudaStream_t stream);
// The token-tiled kernels (selective_tiled.cu) for real fp32-state problems with N <= 32 whose
// blocks of 32 channels fall in one group of B / C; the launchers above call them when this holds
// (LRNNX_SEL_TILED=0 turns them off, for comparisons).  Their checkpoints are laid out
// (Bt, n_ck, N, Dm), the per-channel kernels' (Bt, n_ck, Dm, N): the same shape and size.
bool selective_tiled_ok(const SelParams& p);
void launch_selective_tiled(const SelParams& p, cudaStream_t stream, bool bwd);
// One token: u, delta, z, y (Bt, Dm) storage type; B, C (Bt, G, N); state in / out (Bt, Dm, N)
// compute type (in may be nullptr = zeros); ts (Bt).
void launch_selective_step(const SelParams& p, cudaStream_t stream);

}  // namespace lrnnx_cuda
