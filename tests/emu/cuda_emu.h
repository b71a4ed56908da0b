// fml: just enough of CUDA's device-side C++ to compile kernels/*.cu as ordinary host C++ and run
// each launch on CPU threads (tests/kernels_emulated.rs). One OS thread per CUDA thread of a
// block; blocks run one after the other, so `__shared__` arrays can be function-local statics,
// and `__syncthreads()` is a barrier over the block's threads. This checks a kernel's indexing,
// its reductions and its formulas against the CPU twins on machines without a GPU. It does not
// check what only a GPU has: warp scheduling, memory coalescing, nvcc's FMA contraction.
#pragma once

#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct float3 { float x, y, z; };
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }

struct dim3 { unsigned x = 1, y = 1, z = 1; };

// Per CUDA thread (each runs on its own OS thread).
thread_local dim3 threadIdx, blockIdx;
// Per launch (read-only while the kernel runs).
dim3 blockDim, gridDim;
thread_local std::barrier<>* emu_block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
// One block runs at a time: a static is the block's shared memory. (Not `extern __shared__`.)
#define __shared__ static

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

// Run `kernel` over the grid: blocks in order, each block's threads concurrently.
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar(threads);
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned t = 0; t < threads; ++t)
                    pool.emplace_back([&, t] {
                        blockIdx = dim3{bx, by, bz};
                        threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        emu_block_barrier = &bar;
                        kernel();
                        // An exited thread no longer holds the others at a barrier.
                        bar.arrive_and_drop();
                    });
                for (auto& th : pool) th.join();
            }
}
