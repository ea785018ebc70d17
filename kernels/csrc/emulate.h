// CPU emulation of the CUDA execution model, so the device code in the .cuh
// headers compiles with g++ -std=c++20 and runs on a CPU (the test harness).
//
// A launch runs one std::thread per CUDA thread of a block; the threads walk
// the grid's blocks in order, one block at a time (so `__shared__` can be a
// function-local static). `__syncthreads` is a block-wide std::barrier; warp
// shuffles exchange values through a per-warp slot array between two
// warp-wide barriers, with CUDA's out-of-range rules. Only full-warp masks
// are supported (anything else aborts), as in the kernels that use them.
#pragma once
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid configuration"; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

// Half types on the host: _Float16 is IEEE binary16 in g++ 12; bfloat16 is
// kept as its bit pattern with round-to-nearest-even conversion (as CUDA's).
using __half = _Float16;
inline float __half2float(__half v) { return static_cast<float>(v); }
inline __half __float2half_rn(float v) { return static_cast<_Float16>(v); }

struct __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {uint16_t(0x7fc0)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}

inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline int min(int a, int b) { return a < b ? a : b; }

namespace emu {

constexpr int kWarp = 32;

struct Block {
  explicit Block(int threads) : sync(threads) {
    for (int first = 0; first < threads; first += kWarp) {
      int n = threads - first < kWarp ? threads - first : kWarp;
      warps.push_back(std::make_unique<std::barrier<>>(n));
    }
    slots.resize(warps.size() * kWarp);
  }
  std::barrier<> sync;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint64_t> slots;  // one exchange slot per thread
};

inline thread_local Block* block = nullptr;
inline thread_local int thread_rank = 0;
inline std::atomic<uint64_t> progress{0};  // barrier arrivals, watched for deadlocks

template <typename Barrier>
void arrive_and_wait(Barrier& barrier) {
  progress.fetch_add(1, std::memory_order_relaxed);
  barrier.arrive_and_wait();
}

inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

// Every lane publishes `v`, then reads lane `src`'s value.
template <typename T>
T exchange(T v, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 8 bytes");
  int warp = thread_rank / kWarp, lane = thread_rank % kWarp;
  uint64_t* slot = &block->slots[warp * kWarp];
  std::memcpy(&slot[lane], &v, sizeof(T));
  arrive_and_wait(*block->warps[warp]);
  T out;
  std::memcpy(&out, &slot[src], sizeof(T));
  arrive_and_wait(*block->warps[warp]);  // nobody overwrites a slot before all have read
  return out;
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 threads, cudaStream_t /*stream: launches run synchronously*/, Kernel kernel, Args... args) {
  int n = int(threads.x * threads.y * threads.z);
  if (n <= 0 || n > 1024) fail("block size must be 1..1024 threads");
  blockDim = threads;
  gridDim = grid;
  Block shared(n);
  std::atomic<int> finished{0};
  std::vector<std::thread> pool;
  pool.reserve(n);
  for (int rank = 0; rank < n; ++rank) {
    pool.emplace_back([&, rank] {
      block = &shared;
      thread_rank = rank;
      threadIdx = dim3(rank % threads.x, (rank / threads.x) % threads.y, rank / (threads.x * threads.y));
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = dim3(x, y, z);
            kernel(args...);
            arrive_and_wait(shared.sync);  // the next block reuses the static shared memory
          }
      finished.fetch_add(1);
    });
  }
  // A thread that skips a __syncthreads or shuffle its block-mates reach
  // (undefined behaviour on a GPU) leaves them waiting forever: report it.
  const char* limit_env = std::getenv("BERTSPEED_EMULATION_DEADLOCK_SECONDS");
  const auto limit = std::chrono::seconds(limit_env ? std::atoi(limit_env) : 30);
  uint64_t last = progress.load();
  auto stalled_since = std::chrono::steady_clock::now();
  while (finished.load() < n) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (uint64_t now = progress.load(); now != last) {
      last = now;
      stalled_since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - stalled_since > limit) {
      fail("deadlock: threads wait at a __syncthreads/shuffle that others of their block never reach");
    }
  }
  for (auto& t : pool) t.join();
}

}  // namespace emu

inline cudaError_t cudaGetLastError() { return cudaSuccess; }

inline void __syncthreads() { emu::arrive_and_wait(emu::block->sync); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = emu::kWarp) {
  if (mask != 0xffffffffu) emu::fail("only full-warp shuffles are emulated");
  int lane = emu::thread_rank % emu::kWarp;
  int src = lane ^ lane_mask;
  if (src >= (lane / width + 1) * width) src = lane;  // outside this lane's segment: own value
  return emu::exchange(v, src);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = emu::kWarp) {
  if (mask != 0xffffffffu) emu::fail("only full-warp shuffles are emulated");
  int lane = emu::thread_rank % emu::kWarp;
  int src = (lane % width) + int(delta) < width ? lane + int(delta) : lane;
  return emu::exchange(v, src);
}
