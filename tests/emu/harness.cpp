// fml: runs one launch of a kernel from kernels/*.cu on the CPU (cuda_emu.h), for
// tests/kernels_emulated.rs. Protocol on stdin (little-endian): u32 name length, name, u32 grid[3],
// u32 block[3], u32 argument count, then per argument a tag byte and its data:
//   0 parameter struct: u32 byte count, bytes (must equal the kernel's sizeof: a layout check)
//   1 u32 scalar
//   2 f32 input buffer: u32 count, data     3 u32 input buffer: u32 count, data
//   4 f32 output buffer: u32 count (zero-initialised)
// On stdout: every output buffer's data, in argument order. Errors go to stderr, exit status 1.
#include "cuda_emu.h"

#include "../../kernels/im2col.cu"
#include "../../kernels/render.cu"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

[[noreturn]] static void fail(const std::string& msg) {
    std::fprintf(stderr, "harness: %s\n", msg.c_str());
    std::exit(1);
}

static void read_exact(void* dst, size_t n) {
    if (n && std::fread(dst, 1, n, stdin) != n) fail("truncated input");
}
static uint32_t read_u32() { uint32_t v; read_exact(&v, 4); return v; }

struct Arg {
    uint8_t tag = 0;
    std::vector<char> bytes;
    unsigned scalar = 0;
    std::vector<float> f;
    std::vector<unsigned> u;
};

template <class T> struct Conv {
    static T get(Arg& a, size_t i) {
        static_assert(std::is_trivially_copyable_v<T>);
        if (a.tag != 0) fail("argument " + std::to_string(i) + ": the kernel takes a parameter struct");
        if (a.bytes.size() != sizeof(T))
            fail("argument " + std::to_string(i) + ": parameter struct of " + std::to_string(a.bytes.size()) +
                 " bytes, the kernel's has " + std::to_string(sizeof(T)));
        T t;
        std::memcpy(&t, a.bytes.data(), sizeof(T));
        return t;
    }
};
template <> struct Conv<unsigned> {
    static unsigned get(Arg& a, size_t i) {
        if (a.tag != 1) fail("argument " + std::to_string(i) + ": the kernel takes a u32 scalar");
        return a.scalar;
    }
};
template <> struct Conv<const float*> {
    static const float* get(Arg& a, size_t i) {
        if (a.tag != 2 && a.tag != 4) fail("argument " + std::to_string(i) + ": the kernel takes an f32 buffer");
        return a.f.data();
    }
};
template <> struct Conv<float*> {
    static float* get(Arg& a, size_t i) {
        if (a.tag != 4) fail("argument " + std::to_string(i) + ": the kernel writes an f32 output buffer");
        return a.f.data();
    }
};
template <> struct Conv<const unsigned*> {
    static const unsigned* get(Arg& a, size_t i) {
        if (a.tag != 3) fail("argument " + std::to_string(i) + ": the kernel takes a u32 buffer");
        return a.u.data();
    }
};

template <class... A, size_t... I>
static void call(void (*k)(A...), std::vector<Arg>& args, dim3 g, dim3 b, std::index_sequence<I...>) {
    auto tup = std::make_tuple(Conv<A>::get(args[I], I)...);
    emu_launch(g, b, [&] { std::apply(k, tup); });
}
template <class... A> static void call(void (*k)(A...), std::vector<Arg>& args, dim3 g, dim3 b) {
    if (args.size() != sizeof...(A))
        fail(std::to_string(args.size()) + " arguments, the kernel takes " + std::to_string(sizeof...(A)));
    call(k, args, g, b, std::index_sequence_for<A...>{});
}

using Launcher = void (*)(std::vector<Arg>&, dim3, dim3);
#define KERNEL(name) {#name, [](std::vector<Arg>& a, dim3 g, dim3 b) { call(name, a, g, b); }}

int main() {
    static const std::map<std::string, Launcher> kernels = {
        KERNEL(fml_normals_fwd),     KERNEL(fml_normals_bwd_acc), KERNEL(fml_normals_bwd_gather),
        KERNEL(fml_shade_fwd),       KERNEL(fml_shade_bwd),       KERNEL(fml_shade_bwd_reduce),
        KERNEL(fml_sample_fwd),      KERNEL(fml_sample_bwd),      KERNEL(fml_photo_partial),
        KERNEL(fml_photo_finish),    KERNEL(fml_photo_bwd),       KERNEL(fml_unfold),
        KERNEL(fml_fold),
    };
    std::string name(read_u32(), '\0');
    read_exact(name.data(), name.size());
    dim3 g{read_u32(), read_u32(), read_u32()};
    dim3 b{read_u32(), read_u32(), read_u32()};
    if (b.x * b.y * b.z > 1024) fail("more than 1024 threads per block");
    std::vector<Arg> args(read_u32());
    for (auto& a : args) {
        read_exact(&a.tag, 1);
        switch (a.tag) {
        case 0: a.bytes.resize(read_u32()); read_exact(a.bytes.data(), a.bytes.size()); break;
        case 1: a.scalar = read_u32(); break;
        case 2: a.f.resize(read_u32()); read_exact(a.f.data(), a.f.size() * 4); break;
        case 3: a.u.resize(read_u32()); read_exact(a.u.data(), a.u.size() * 4); break;
        // Outputs start as NaN: the CUDA path allocates them uninitialised, so a kernel that skips
        // an element shows up as a non-finite output in the comparison.
        case 4: a.f.assign(read_u32(), std::numeric_limits<float>::quiet_NaN()); break;
        default: fail("unknown argument tag " + std::to_string(a.tag));
        }
    }
    auto k = kernels.find(name);
    if (k == kernels.end()) fail("no kernel named " + name);
    k->second(args, g, b);
    for (auto& a : args)
        if (a.tag == 4 && !a.f.empty()) std::fwrite(a.f.data(), 4, a.f.size(), stdout);
    return 0;
}
