// Diagonal linear recurrence h_t = a_t h_{t-1} + b_t on (B, L, D) tensors with D contiguous,
// forward and fused adjoint (backward), real or complex, any L, varlen, reverse.
//
// Layout: block (32, W): lane = channel (32 consecutive channels, so each warp load is one
// contiguous row segment), warp w = a segment of ITEMS consecutive tokens inside a tile of
// W * ITEMS tokens.  Per tile every thread
//   1. loads its ITEMS (a, b) pairs (all loads in flight together),
//   2. scans them from a zero state, keeping the cumulative products and local states,
//   3. publishes its segment's aggregate (prod a, local h) in shared memory; after one barrier
//      each thread composes the aggregates of the earlier segments onto the running carry,
//   4. writes h = cumprod * carry_in + local h.
// The carry leaves the tile in registers, and the next tile's inputs are already in flight
// (loaded one tile ahead).  Traffic: a and b read once, h written once.
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "kernels.h"

namespace lrnnx_cuda {

// Asynchronous global -> shared copies (sm_80+), used by the staged kernels: the loads of the
// next STAGES - 1 tiles stay in flight without holding registers.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem) {
  const unsigned sa = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(gmem));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(sa), "l"(gmem), "n"(BYTES));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Bytes of one element S stored as T (a pair of channels, a complex number or a scalar).
template <typename T, typename S> constexpr int elem_bytes() {
  return (int)sizeof(T) * (IsCx<S>::value ? 2 : 1) * (std::is_same<S, F2>::value ? 2 : 1);
}

// Register prefetch of the forward's next tile: half-precision channel pairs stay packed (one
// 32-bit register per pair) until the tile is scanned; converting them next to the load made
// the warp wait there for the load (the conversion consumes it), a full memory latency per tile.
// Other types keep the compute value.
template <typename T, typename S> struct RawE {
  using type = S;
  static __device__ __forceinline__ type ld(const T* p) { return Elem<T, S>::ld(p, 0); }
  static __device__ __forceinline__ type one() { return S(typename RealOf<S>::type(1)); }
  static __device__ __forceinline__ type zero() { return S(typename RealOf<S>::type(0)); }
  static __device__ __forceinline__ S cvt(type r) { return r; }
};
template <> struct RawE<__nv_bfloat16, F2> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type ld(const __nv_bfloat16* p) {
    return *reinterpret_cast<const __nv_bfloat162*>(p);
  }
  static __device__ __forceinline__ type one() { return __float2bfloat162_rn(1.f); }
  static __device__ __forceinline__ type zero() { return __float2bfloat162_rn(0.f); }
  static __device__ __forceinline__ F2 cvt(type r) {
    const float2 v = __bfloat1622float2(r);
    return {v.x, v.y};
  }
};
template <typename T> struct RawHalf {  // one half-precision channel
  using type = T;
  static __device__ __forceinline__ type ld(const T* p) { return *p; }
  static __device__ __forceinline__ type one() { return T(1.f); }
  static __device__ __forceinline__ type zero() { return T(0.f); }
  static __device__ __forceinline__ float cvt(type r) { return static_cast<float>(r); }
};
template <> struct RawE<__nv_bfloat16, float> : RawHalf<__nv_bfloat16> {};
template <> struct RawE<__half, float> : RawHalf<__half> {};
template <> struct RawE<__half, F2> {
  using type = __half2;
  static __device__ __forceinline__ type ld(const __half* p) {
    return *reinterpret_cast<const __half2*>(p);
  }
  static __device__ __forceinline__ type one() { return __float2half2_rn(1.f); }
  static __device__ __forceinline__ type zero() { return __float2half2_rn(0.f); }
  static __device__ __forceinline__ F2 cvt(type r) {
    const float2 v = __half22float2(r);
    return {v.x, v.y};
  }
};

constexpr int kMaxWarps = 8;

// Two resident blocks per SM for real data caps the registers at 128: the fp32 / bf16 channel-pair
// adjoint otherwise takes 162 (one block per SM); H200 B16 L4096 D1024 fwd+bwd fp32 0.675 ->
// 0.549 ms, bf16 0.831 -> 0.634 ms.  Complex keeps one (capped, complex64 went 0.718 -> 0.865).
template <typename S> constexpr int diag_min_blocks() { return IsCx<S>::value ? 1 : 2; }

// STAGES = 0: the tile's inputs go through registers (forward: loaded one tile ahead).
// STAGES >= 2: a ring of STAGES tiles in dynamic shared memory filled by cp.async, STAGES - 1
// tiles in flight while one is scanned.  Each thread copies and reads back only its own
// elements, so the ring needs no barrier; slot (stage, array, item, thread) keeps a warp's
// accesses consecutive (no bank conflicts).
template <typename T, typename S, int ITEMS, bool BWD, int STAGES>
__global__ void __launch_bounds__(32 * kMaxWarps, diag_min_blocks<S>())
diag_scan_kernel(const DiagParams p) {
  using R = typename RealOf<S>::type;
  using E = Elem<T, S>;   // storage
  using EC = Elem<R, S>;  // compute-type tensors (h0, last)
  __shared__ S sP[2][kMaxWarps][32];
  __shared__ S sH[2][kMaxWarps][32];

  const int lane = threadIdx.x, w = threadIdx.y, W = blockDim.y;
  const int64_t D = p.D, L = p.L;
  const int64_t d = (int64_t)blockIdx.x * 32 + lane;
  const bool dok = d < D;
  const int64_t s = blockIdx.y;
  int64_t start, end, batch;
  if (p.cu != nullptr) {
    start = p.cu[s];
    end = p.cu[s + 1];
    batch = 0;
  } else {
    start = 0;
    end = L;
    batch = s;
  }
  const int64_t len = end - start;
  // Scan direction in time: the adjoint runs against the forward direction.
  const bool rev = BWD ? !p.reverse : p.reverse;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  const T* hf = static_cast<const T*>(p.hf);
  T* out = static_cast<T*>(p.out);
  T* ga = static_cast<T*>(p.ga);
  const bool has_b = b != nullptr, has_ga = BWD && ga != nullptr;
  // Addressing by scan position q: token t(q) = t0 + q * dir, so a tensor's element of position
  // q is (row of position 0) + q * sD, and a thread walks its items by pointer increments of sT
  // storage elements (the address math of the first version, int64 per item and tensor, made
  // the kernel instruction-bound).
  constexpr int EPS = elem_bytes<T, S>() / (int)sizeof(T);  // storage elements per S
  const int64_t sD = rev ? -D : D, sT = sD * EPS;
  const int64_t t0 = rev ? end - 1 : start;
  // Lanes past the last channel address the last channel instead (loads stay in bounds; their
  // stores are skipped), so "full" below is uniform over the block: scan_tile's barrier sits in
  // both branches of that test, and a divergent __syncthreads would hang the block.
  const int64_t dc = dok ? d : D - 1;
  const int64_t row0 = (batch * L + t0) * D + dc;                    // b, out, hf, ga
  const int64_t arow0 = ((p.a_bcast ? 0 : batch) * L + t0) * D + dc;  // a
  const int64_t arowE = ((p.a_bcast ? 0 : batch) * L + (rev ? start : end - 1)) * D + d;

  S carry = S(R(0));
  if (dok && p.h0 != nullptr) carry = EC::ld(static_cast<const R*>(p.h0), s * D + d);
  S hinit = S(R(0));  // bwd: the forward state before the first forward token
  if (BWD && dok && p.h0f != nullptr) hinit = EC::ld(static_cast<const R*>(p.h0f), s * D + d);

  const int64_t tile = (int64_t)W * ITEMS;
  // A tile is "full" when every item of the block is a real token and, in the adjoint, no item
  // touches the sequence ends (q = 0 has no previous a, q = len - 1 no next forward state): no
  // per-item predicates then (block-uniform: it does not depend on the lane).
  auto is_full = [&](int64_t base) {
    return base + tile <= len && (!BWD || (base > 0 && base + tile < len));
  };
  // Storage pointers of the thread's first item in a tile.
  auto first = [&](int64_t row, int64_t base) -> int64_t {
    return (row + (base + (int64_t)w * ITEMS) * sD) * EPS;
  };

  // Scan one tile whose inputs are in P, H, F (position-ordered); writes h (and grad a).
  // `full` is a std::bool_constant: the full-tile code has no per-item predicates at all.
  auto scan_tile = [&](auto full, int64_t base, S (&P)[ITEMS], S (&H)[ITEMS], S (&F)[ITEMS],
                       int buf) {
    S cp = S(R(1)), ch = S(R(0));
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      ch = P[i] * ch + H[i];
      cp = cp * P[i];
      P[i] = cp;
      H[i] = ch;
    }
    sP[buf][w][lane] = cp;
    sH[buf][w][lane] = ch;
    __syncthreads();
    // Unrolled over the largest block with the warp count as a predicate, so the 2 W shared
    // loads issue together and only the FMA chain is serial.
    S aP[kMaxWarps], aH[kMaxWarps];
#pragma unroll
    for (int j = 0; j < kMaxWarps; ++j) {  // in bounds for every j; entries >= W are unused
      aP[j] = sP[buf][j][lane];
      aH[j] = sH[buf][j][lane];
    }
    S c = carry, cin = carry;
#pragma unroll
    for (int j = 0; j < kMaxWarps; ++j) {
      if (j < W) {
        if (j == w) cin = c;
        c = aP[j] * c + aH[j];
      }
    }
    carry = c;
    T* po = out + first(row0, base);
    T* pg = has_ga ? ga + first(row0, base) : nullptr;
    const int64_t q0 = base + (int64_t)w * ITEMS;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (dok && (decltype(full)::value || q0 + i < len)) {
        const S h = P[i] * cin + H[i];
        E::st(po, 0, h);
        if (has_ga) E::st(pg, 0, h * conj_(F[i]));
      }
      po += sT;
      if (has_ga) pg += sT;
    }
  };

  if constexpr (STAGES >= 2) {
    constexpr int EB = elem_bytes<T, S>();
    constexpr int NARR = BWD ? 3 : 2;  // a (P), b (H), forward states (F, adjoint only)
    extern __shared__ __align__(16) unsigned char ring[];
    const int NT = 32 * W, tid = w * 32 + lane;
    auto slot = [&](int st, int arr, int i) -> unsigned char* {
      return ring + ((size_t)((st * NARR + arr) * ITEMS + i) * NT + tid) * EB;
    };
    // The same predicates decide what is copied (issue) and what is read back (consume):
    // elements outside the sequence are never copied and read as the identity.
    auto issue_t = [&](auto fullc, int64_t base, int st) {
      constexpr bool full = decltype(fullc)::value;
      const int64_t q0 = base + (int64_t)w * ITEMS;
      const T* pa = a + first(arow0, base);
      const T* pb = has_b ? b + first(row0, base) : nullptr;
      const T* pf = has_ga ? hf + first(row0, base) : nullptr;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const bool ok = full || (dok && q0 + i < len);
        if (!BWD) {
          if (ok) cp_async<EB>(slot(st, 0, i), pa);
        } else {
          if (ok && (full || q0 + i > 0)) cp_async<EB>(slot(st, 0, i), pa - sT);
          if (has_ga && ok && (full || q0 + i + 1 < len)) cp_async<EB>(slot(st, 2, i), pf + sT);
        }
        if (has_b && ok) cp_async<EB>(slot(st, 1, i), pb);
        pa += sT;
        if (has_b) pb += sT;
        if (has_ga) pf += sT;
      }
    };
    auto issue = [&](int64_t base, int st) {
      if (is_full(base)) issue_t(std::true_type{}, base, st);
      else issue_t(std::false_type{}, base, st);
    };
    // Read tile `base` back from ring stage st into registers.
    auto consume = [&](auto fullc, int64_t base, int st, S (&P)[ITEMS], S (&H)[ITEMS],
                       S (&F)[ITEMS]) {
      constexpr bool full = decltype(fullc)::value;
      const int64_t q0 = base + (int64_t)w * ITEMS;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const bool ok = full || (dok && q0 + i < len);
        if (!BWD) {
          P[i] = ok ? E::ld(reinterpret_cast<const T*>(slot(st, 0, i)), 0) : S(R(1));
        } else {
          P[i] = (ok && (full || q0 + i > 0))
                     ? conj_(E::ld(reinterpret_cast<const T*>(slot(st, 0, i)), 0))
                     : S(R(1));
          F[i] = (has_ga && ok && (full || q0 + i + 1 < len))
                     ? E::ld(reinterpret_cast<const T*>(slot(st, 2, i)), 0)
                     : hinit;
        }
        H[i] = (has_b && ok) ? E::ld(reinterpret_cast<const T*>(slot(st, 1, i)), 0) : S(R(0));
      }
    };
    const int64_t ntiles = (len + tile - 1) / tile;
#pragma unroll
    for (int k = 0; k < STAGES - 1; ++k) {
      if (k < ntiles) issue((int64_t)k * tile, k);
      cp_async_commit();  // empty groups keep the group count uniform
    }
    int st = 0, buf = 0;
    for (int64_t k = 0; k < ntiles; ++k) {
      const int64_t kn = k + STAGES - 1;
      // slot kn % STAGES held tile k - 1, already read back into registers
      if (kn < ntiles) issue(kn * tile, (int)(kn % STAGES));
      cp_async_commit();
      cp_async_wait<STAGES - 1>();  // tile k has landed
      const int64_t base = k * tile;
      S P[ITEMS], H[ITEMS], F[ITEMS];
      if (is_full(base)) {
        consume(std::true_type{}, base, st, P, H, F);
        scan_tile(std::true_type{}, base, P, H, F, buf);
      } else {
        consume(std::false_type{}, base, st, P, H, F);
        scan_tile(std::false_type{}, base, P, H, F, buf);
      }
      buf ^= 1;
      st = st + 1 == STAGES ? 0 : st + 1;
    }
  } else {
    // The tile's inputs are loaded one tile ahead (registers Pn / Hn / Fn, raw: RawE), so the
    // DRAM latency of tile k+1 overlaps the scan, barrier and stores of tile k.  The adjoint
    // reads three streams; it prefetches only when they stay packed (half-precision channel
    // pairs, 8 items: 24 32-bit registers; with 16 items it spilled), else it would need ~160
    // registers (one block per SM) and loads in place (the ring kernels above prefetch those).
    using RW = RawE<T, S>;
    using RT = typename RW::type;
    constexpr bool kPrefetch = !BWD || (std::is_same<S, F2>::value && sizeof(T) == 2 && ITEMS <= 8);
    auto load_t = [&](auto fullc, int64_t base, S (&P)[ITEMS], S (&H)[ITEMS], S (&F)[ITEMS]) {
      constexpr bool full = decltype(fullc)::value;
      const int64_t q0 = base + (int64_t)w * ITEMS;
      const T* pa = a + first(arow0, base);
      const T* pb = has_b ? b + first(row0, base) : nullptr;
      const T* pf = has_ga ? hf + first(row0, base) : nullptr;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const bool ok = full || (dok && q0 + i < len);
        if (!BWD) {
          P[i] = ok ? E::ld(pa, 0) : S(R(1));
        } else {
          // multiplier of position q: conj(a) of the position scanned just before (1 at q = 0)
          P[i] = (ok && (full || q0 + i > 0)) ? conj_(E::ld(pa - sT, 0)) : S(R(1));
          // grad_a_t = g_t * conj(forward state before t) = position q + 1 in this order
          F[i] = (has_ga && ok && (full || q0 + i + 1 < len)) ? E::ld(pf + sT, 0) : hinit;
        }
        H[i] = (has_b && ok) ? E::ld(pb, 0) : S(R(0));
        pa += sT;
        if (has_b) pb += sT;
        if (has_ga) pf += sT;
      }
    };
    auto load = [&](int64_t base, S (&P)[ITEMS], S (&H)[ITEMS], S (&F)[ITEMS]) {
      if (is_full(base)) load_t(std::true_type{}, base, P, H, F);
      else load_t(std::false_type{}, base, P, H, F);
    };
    // The prefetch: the same predicates as load_t; an adjoint forward state outside the
    // sequence is raw zero here and becomes hinit (fp32, not representable raw) at conversion.
    auto load_raw_t = [&](auto fullc, int64_t base, RT (&P)[ITEMS], RT (&H)[ITEMS],
                          RT (&F)[ITEMS]) {
      constexpr bool full = decltype(fullc)::value;
      const int64_t q0 = base + (int64_t)w * ITEMS;
      const T* pa = a + first(arow0, base);
      const T* pb = has_b ? b + first(row0, base) : nullptr;
      const T* pf = has_ga ? hf + first(row0, base) : nullptr;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const bool ok = full || (dok && q0 + i < len);
        if (!BWD) {
          P[i] = ok ? RW::ld(pa) : RW::one();
        } else {  // real data only (kPrefetch): no conjugate
          P[i] = (ok && (full || q0 + i > 0)) ? RW::ld(pa - sT) : RW::one();
          F[i] = (has_ga && ok && (full || q0 + i + 1 < len)) ? RW::ld(pf + sT) : RW::zero();
        }
        H[i] = (has_b && ok) ? RW::ld(pb) : RW::zero();
        pa += sT;
        if (has_b) pb += sT;
        if (has_ga) pf += sT;
      }
    };
    auto load_raw = [&](int64_t base, RT (&P)[ITEMS], RT (&H)[ITEMS], RT (&F)[ITEMS]) {
      if (is_full(base)) load_raw_t(std::true_type{}, base, P, H, F);
      else load_raw_t(std::false_type{}, base, P, H, F);
    };
    RT Pn[ITEMS], Hn[ITEMS], Fn[ITEMS];  // Fn: adjoint only
    if constexpr (kPrefetch) {
      if (len > 0) load_raw(0, Pn, Hn, Fn);
    }
    int buf = 0;
    for (int64_t base = 0; base < len; base += tile) {
      S P[ITEMS], H[ITEMS], F[ITEMS];
      const bool full = is_full(base);
      if constexpr (!kPrefetch) {
        load(base, P, H, F);
      } else {
        const int64_t q0 = base + (int64_t)w * ITEMS;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
          P[i] = RW::cvt(Pn[i]);
          H[i] = RW::cvt(Hn[i]);
          if (BWD) F[i] = (full || (has_ga && dok && q0 + i + 1 < len)) ? RW::cvt(Fn[i]) : hinit;
        }
        if (base + tile < len) load_raw(base + tile, Pn, Hn, Fn);
      }
      if (full) scan_tile(std::true_type{}, base, P, H, F, buf);
      else scan_tile(std::false_type{}, base, P, H, F, buf);
      buf ^= 1;
    }
  }
  if (dok) {
    S res = carry;
    if (BWD && len > 0) {
      // grad_h0 = conj(a at the first forward token) * g there
      res = conj_(E::ld(a, arowE)) * carry;
    }
    if (!BWD && p.last_store) E::st(static_cast<T*>(p.last), s * D + d, res);
    else EC::st(static_cast<R*>(p.last), s * D + d, res);
  }
}

// Warps per block: 8 (LRNNX_DIAG_WARPS caps it, read per call for kernel comparisons), fewer
// for short sequences.
static int diag_warps(const DiagParams& p, int items) {
  const int64_t per_seq = p.cu != nullptr ? (p.L + p.nseq - 1) / (p.nseq > 0 ? p.nseq : 1) : p.L;
  int W = kMaxWarps;
  if (const char* v = std::getenv("LRNNX_DIAG_WARPS")) {
    const int cap = std::atoi(v);
    if (cap == 1 || cap == 2 || cap == 4) W = cap;
  }
  while (W > 1 && (int64_t)(W / 2) * items >= per_seq) W /= 2;
  return W;
}

template <typename T, typename S, int ITEMS, bool BWD, int STAGES>
static void launch_kernel(const DiagParams& p, int W, int dev, cudaStream_t stream) {
  dim3 block(32, W);
  dim3 grid((unsigned)((p.D + 31) / 32), (unsigned)p.nseq);
  size_t smem = 0;
  auto kern = diag_scan_kernel<T, S, ITEMS, BWD, STAGES>;
  if constexpr (STAGES >= 2) {
    // Dynamic shared memory above 48 KiB needs the opt-in (once per kernel and device).
    smem = (size_t)STAGES * (BWD ? 3 : 2) * ITEMS * 32 * W * elem_bytes<T, S>();
    set_dynamic_smem(reinterpret_cast<const void*>(kern), smem, dev);
  }
  kern<<<grid, block, smem, stream>>>(p);
}

// Ring depth: LRNNX_DIAG_STAGES (read per call, so a test or benchmark can compare them in one
// process) or the measured default; shrunk while the ring does not fit the block's shared memory.
template <typename T, typename S, int ITEMS, bool BWD>
static void launch_dir(const DiagParams& p, int stages, cudaStream_t stream) {
  const int W = diag_warps(p, ITEMS);
  if (const char* v = std::getenv("LRNNX_DIAG_STAGES")) stages = std::atoi(v);
  if (stages != 0 && stages != 2 && stages != 3 && stages != 4) stages = 0;
  const int dev = current_device();
  const size_t optin = smem_optin_cached(dev);
  const size_t stat = 2 * 2 * kMaxWarps * 32 * sizeof(S);  // sP, sH
  while (stages > 2 &&
         stat + (size_t)stages * (BWD ? 3 : 2) * ITEMS * 32 * W * elem_bytes<T, S>() > (size_t)optin)
    --stages;
  if (stages == 2 && stat + (size_t)2 * (BWD ? 3 : 2) * ITEMS * 32 * W * elem_bytes<T, S>() > (size_t)optin)
    stages = 0;
  switch (stages) {
    case 2: launch_kernel<T, S, ITEMS, BWD, 2>(p, W, dev, stream); break;
    case 3: launch_kernel<T, S, ITEMS, BWD, 3>(p, W, dev, stream); break;
    case 4: launch_kernel<T, S, ITEMS, BWD, 4>(p, W, dev, stream); break;
    default: launch_kernel<T, S, ITEMS, BWD, 0>(p, W, dev, stream); break;
  }
}

// STAGED instantiates the ring kernels (the measured types only, to bound the JIT build time).
// Element types of 2 bytes cannot go through cp.async (4, 8 or 16 bytes): register path only.
template <typename T, typename S, int ITEMS, bool STAGED = false>
static void launch_typed(const DiagParams& p, cudaStream_t stream, int fwd_stages = 0, int bwd_stages = 0) {
  if constexpr (STAGED && elem_bytes<T, S>() >= 4) {
    if (p.bwd) launch_dir<T, S, ITEMS, true>(p, bwd_stages, stream);
    else launch_dir<T, S, ITEMS, false>(p, fwd_stages, stream);
  } else {
    const int W = diag_warps(p, ITEMS);
    if (p.bwd) launch_kernel<T, S, ITEMS, true, 0>(p, W, -1, stream);
    else launch_kernel<T, S, ITEMS, false, 0>(p, W, -1, stream);
  }
}

// Channel groups: G consecutive real channels per lane move as one vector load, which keeps
// enough bytes in flight per thread (the kernel is otherwise latency-bound: measured on an H200,
// fp32 B16 L4096 D1024 fwd 0.231 ms with one channel per lane, 0.202 ms with pairs; bf16
// 0.385 ms -> 0.232 ms with pairs).  Only when D % G == 0 and every pointer is aligned to the
// vector (a tensor may be a view starting at any element), else one channel per lane.
static bool grouped(const DiagParams& p, int G, size_t store_bytes) {
  if (p.D % G != 0) return false;
  auto ok = [](const void* q, size_t bytes) {
    return q == nullptr || reinterpret_cast<uintptr_t>(q) % bytes == 0;
  };
  const size_t sv = G * store_bytes, cv = G * sizeof(float);
  return ok(p.a, sv) && ok(p.b, sv) && ok(p.out, sv) && ok(p.hf, sv) && ok(p.ga, sv) &&
         ok(p.h0, cv) && ok(p.last, p.last_store ? sv : cv) && ok(p.h0f, cv);
}

template <typename T, typename V, int ITEMS>
static void launch_grouped(const DiagParams& p, int G, cudaStream_t stream, int fs, int bs) {
  DiagParams q = p;
  q.D = p.D / G;
  launch_typed<T, V, ITEMS, true>(q, stream, fs, bs);
}

// Half-precision channel pairs.  Forward: 16 tokens per thread on the cp.async ring (half the
// barriers per token; H200 B16 L4096 D1024 bf16 0.1165 -> 0.1132 ms, B32 L1024 D256 0.0336 ->
// 0.0331 ms) or, with the register prefetch kept packed (RawE, session 9), 8 tokens per thread
// on the register path.  Which one is faster depends on how many blocks share an SM, not on L
// (H200, 132 SMs, session 10, fwd ms ring / register): 256 blocks (B16 L4096 D1024) 0.1127 /
// 0.1087; 128 blocks: B8 L2048 D1024 0.0309 / 0.0372, B32 L1024 D256 0.0242 / 0.0239 (session 9:
// 0.0317 / 0.0328).  With one block per SM the ring's 16 tokens keep more bytes in flight; so
// the register path when there are more blocks than SMs.  Adjoint: 8 tokens per thread (16 was
// slower: 0.1998 -> 0.2228 ms), on the register path with the packed prefetch (session 10; it
// measured faster at all four shapes: 0.1997 -> 0.1805 ms at B16 L4096 D1024 bf16, fp16 0.2005 ->
// 0.1829, 0.0322 -> 0.0303 at B32 L1024 D256, 0.0552 -> 0.0546 at B8 L2048 D1024).
// LRNNX_DIAG_ITEMS = 8 / 16 and LRNNX_DIAG_STAGES (read per call) force one layout for both
// directions, for comparisons.
template <typename T>
static void launch_half_pairs(const DiagParams& p, cudaStream_t stream) {
  const int64_t blocks = ((p.D / 2 + 31) / 32) * (int64_t)p.nseq;
  const bool reg_fwd = blocks > sm_count_cached(current_device());
  int items = p.bwd || reg_fwd ? 8 : 16;
  if (const char* v = std::getenv("LRNNX_DIAG_ITEMS")) {
    const int n = std::atoi(v);
    if (n == 8 || n == 16) items = n;
  }
  const int fs = reg_fwd ? 0 : 2;  // LRNNX_DIAG_STAGES still overrides (launch_dir)
  if (items == 16) launch_grouped<T, F2, 16>(p, 2, stream, fs, 0);
  else launch_grouped<T, F2, 8>(p, 2, stream, fs, 0);
}

// Ring depths (forward, adjoint) per storage type, from one H200 run of every depth (B16 L4096,
// fwd / fwd+bwd ms; benchmarks/NOTES.md): bf16 pairs 0: 0.156 / 0.693, 2: 0.119 / 0.415,
// 3: 0.119 / 0.468, 4: 0.119 / 0.458; fp32 pairs 0: 0.202 / 0.545, 2: 0.205 / 0.560 (at B32
// L1024 D256 the adjoint gains 25-35% from depth 2); complex64 (D512) 0: 0.203 / 0.532,
// 4: 0.198 / 0.571.
void launch_diag_scan(const DiagParams& p, cudaStream_t stream) {
  if (p.nseq == 0 || p.D == 0) return;
  switch (p.dtype) {
    case DType::F32:
      if (p.cplx) launch_typed<float, Cx<float>, 8, true>(p, stream, 4, 0);
      else if (grouped(p, 2, 4)) launch_grouped<float, F2, 8>(p, 2, stream, 0, 2);
      else launch_typed<float, float, 8>(p, stream);
      break;
    case DType::F64:
      if (p.cplx) launch_typed<double, Cx<double>, 4>(p, stream);
      else launch_typed<double, double, 8>(p, stream);
      break;
    // complex32 is not accepted (ops.cpp), so half precisions are real here.  Earlier register
    // path layouts (session 2): pairs, 8 items 0.232 / 0.807 ms (bf16 fwd / fwd+bwd); four
    // channels per lane 0.332 / 0.911 ms; pairs with 16 items 0.237 / 1.12.
    case DType::F16:
      if (grouped(p, 2, 2)) launch_half_pairs<__half>(p, stream);
      else launch_typed<__half, float, 16>(p, stream);
      break;
    case DType::BF16:
      if (grouped(p, 2, 2)) launch_half_pairs<__nv_bfloat16>(p, stream);
      else launch_typed<__nv_bfloat16, float, 16>(p, stream);
      break;
  }
}

// ---------------------------------------------------------------- one step
template <typename T, typename S>
__global__ void diag_step_kernel(const DiagStepParams p) {
  using R = typename RealOf<S>::type;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.B * p.D) return;
  const int64_t ia = p.a_bcast ? i % p.D : i;
  const S a = Elem<T, S>::ld(static_cast<const T*>(p.a), ia);
  const S b = Elem<T, S>::ld(static_cast<const T*>(p.b), i);
  S h = S(R(0));
  if (p.h != nullptr) h = Elem<R, S>::ld(static_cast<const R*>(p.h), i);
  Elem<R, S>::st(static_cast<R*>(p.out), i, a * h + b);
}

template <typename T, typename S>
static void step_typed(const DiagStepParams& p, cudaStream_t stream) {
  const int64_t n = p.B * p.D;
  const int threads = 256;
  diag_step_kernel<T, S><<<(unsigned)((n + threads - 1) / threads), threads, 0, stream>>>(p);
}

void launch_diag_step(const DiagStepParams& p, cudaStream_t stream) {
  if (p.B * p.D == 0) return;
  switch (p.dtype) {
    case DType::F32: p.cplx ? step_typed<float, Cx<float>>(p, stream) : step_typed<float, float>(p, stream); break;
    case DType::F64: p.cplx ? step_typed<double, Cx<double>>(p, stream) : step_typed<double, double>(p, stream); break;
    case DType::F16: step_typed<__half, float>(p, stream); break;
    case DType::BF16: step_typed<__nv_bfloat16, float>(p, stream); break;
  }
}

}  // namespace lrnnx_cuda
