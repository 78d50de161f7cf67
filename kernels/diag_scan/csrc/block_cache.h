// Output allocation for the diag_scan CPU kernel (included by
// diag_scan_cpu.cpp only; internal linkage).
#pragma once

#include <torch/extension.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

// Output allocation. A fresh multi-MB tensor is page-faulted on first touch
// (the kernel zeroes every page), which on small machines costs as much as
// the scan itself. Large outputs therefore come from a small cache of
// 2 MiB-aligned, MADV_HUGEPAGE blocks: a block freed by PyTorch goes back to
// the cache (up to $LRNNX_CPU_POOL_MB, default 256 MiB, kept resident) and
// the next output of the same size reuses it without any page fault. This is
// what a caching allocator does; PyTorch has none for CPU tensors.
constexpr size_t kHuge = size_t(2) << 20;

struct BlockCache {
  std::mutex mu;
  std::unordered_multimap<size_t, void*> blocks;  // length -> free block
  size_t cached = 0;
  size_t cap = 0;

  BlockCache() {
    const char* env = std::getenv("LRNNX_CPU_POOL_MB");
    cap = (env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) : size_t(256)) << 20;
  }
  void* get(size_t len) {
    std::lock_guard<std::mutex> g(mu);
    auto it = blocks.find(len);
    if (it == blocks.end()) return nullptr;
    void* p = it->second;
    blocks.erase(it);
    cached -= len;
    return p;
  }
  void put(void* p, size_t len) {
    {
      std::lock_guard<std::mutex> g(mu);
      if (cached + len <= cap) {
        blocks.emplace(len, p);
        cached += len;
        return;
      }
    }
    std::free(p);
  }
};

// Leaked on purpose: blocks may be returned by tensors destroyed at exit.
BlockCache& block_cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}

at::Tensor empty_out(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  const size_t nbytes = static_cast<size_t>(c10::multiply_integers(sizes)) * opt.dtype().itemsize();
  if (nbytes >= 2 * kHuge) {
    const size_t len = (nbytes + kHuge - 1) / kHuge * kHuge;
    void* p = block_cache().get(len);
    if (!p) {
      p = std::aligned_alloc(kHuge, len);
#ifdef __linux__
      if (p) madvise(p, len, MADV_HUGEPAGE);
#endif
    }
    if (p) {
      return at::from_blob(p, sizes, [len](void* q) { block_cache().put(q, len); }, opt);
    }
  }
  return at::empty(sizes, opt);
}

}  // namespace
