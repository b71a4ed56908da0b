// fml: CUDA kernels of the differentiable image formation layer (paper Sec. 5, eq. 5, eq. 9).
//
// Each op's forward and backward kernels take the same parameter struct by value; the structs
// mirror the #[repr(C)] structs in src/render/ops/*.rs field for field. Every kernel has a CPU
// twin in those files (same formulas, same clamping rules); tests compare them: tests/cuda.rs on a
// GPU, tests/kernels_emulated.rs everywhere (this file compiled as host C++, tests/emu/).
//
// Layouts: [B, N, 3] float arrays are contiguous (index (b * N + i) * 3 + c); images are
// [B, H, W, 3]; SH coefficients [B, 27], channel-major (c * 9 + band).
//
// Reductions (SH gradient, photometric sums) are two-stage: fixed-size per-block partial sums,
// then an in-order sum per image, so results are deterministic (no float atomics).

#define BLOCK 256

struct NormalsParams { unsigned batch, num_vertices, num_triangles; };
struct ShadeParams { unsigned batch, num_vertices; };
struct SampleParams { unsigned batch, num_vertices, width, height; float focal, cx, cy, near; };
struct PhotoParams { unsigned batch, num_vertices; float eps; };

#define NORMAL_EPS 1e-20f

__device__ __forceinline__ float3 ld3(const float* p, size_t i) { return make_float3(p[3 * i], p[3 * i + 1], p[3 * i + 2]); }
__device__ __forceinline__ void st3(float* p, size_t i, float3 v) { p[3 * i] = v.x; p[3 * i + 1] = v.y; p[3 * i + 2] = v.z; }
__device__ __forceinline__ float3 sub3(float3 a, float3 b) { return make_float3(a.x - b.x, a.y - b.y, a.z - b.z); }
__device__ __forceinline__ float3 add3(float3 a, float3 b) { return make_float3(a.x + b.x, a.y + b.y, a.z + b.z); }
__device__ __forceinline__ float3 cross3(float3 a, float3 b) {
    return make_float3(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x);
}
__device__ __forceinline__ float dot3(float3 a, float3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

// ---------------------------------------------------------------- vertex normals

__device__ float3 normal_acc(const NormalsParams& p, const float* v, size_t base, unsigned i,
                             const unsigned* tris, const unsigned* offs, const unsigned* vt) {
    float3 acc = make_float3(0.f, 0.f, 0.f);
    for (unsigned k = offs[i]; k < offs[i + 1]; ++k) {
        unsigned t = vt[k];
        float3 a = ld3(v, base + tris[3 * t]), b = ld3(v, base + tris[3 * t + 1]), c = ld3(v, base + tris[3 * t + 2]);
        acc = add3(acc, cross3(sub3(b, a), sub3(c, a)));
    }
    return acc;
}

extern "C" __global__ void fml_normals_fwd(NormalsParams p, const float* v, const unsigned* tris,
                                           const unsigned* offs, const unsigned* vt, float* out) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = p.num_vertices;
    if (gi >= (size_t)p.batch * n) return;
    size_t b = gi / n; unsigned i = (unsigned)(gi % n);
    float3 acc = normal_acc(p, v, b * n, i, tris, offs, vt);
    float inv = 1.0f / sqrtf(dot3(acc, acc) + NORMAL_EPS);  // as the CPU twin (rsqrtf is approximate)
    st3(out, gi, make_float3(acc.x * inv, acc.y * inv, acc.z * inv));
}

// Pass 1 of the backward: gradient with respect to each unnormalised normal.
extern "C" __global__ void fml_normals_bwd_acc(NormalsParams p, const float* v, const float* g, const unsigned* tris,
                                               const unsigned* offs, const unsigned* vt, float* gacc) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = p.num_vertices;
    if (gi >= (size_t)p.batch * n) return;
    size_t b = gi / n; unsigned i = (unsigned)(gi % n);
    float3 acc = normal_acc(p, v, b * n, i, tris, offs, vt);
    float l2 = dot3(acc, acc) + NORMAL_EPS;
    float inv = 1.0f / sqrtf(l2);
    float3 gg = ld3(g, gi);
    float d = dot3(acc, gg) * inv * inv;
    st3(gacc, gi, make_float3((gg.x - acc.x * d) * inv, (gg.y - acc.y * d) * inv, (gg.z - acc.z * d) * inv));
}

// Pass 2: gather d(face normal) back to each vertex over its incident triangles.
extern "C" __global__ void fml_normals_bwd_gather(NormalsParams p, const float* v, const float* gacc, const unsigned* tris,
                                                  const unsigned* offs, const unsigned* vt, float* out) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = p.num_vertices;
    if (gi >= (size_t)p.batch * n) return;
    size_t b = gi / n; unsigned k = (unsigned)(gi % n);
    size_t base = b * n;
    float3 acc = make_float3(0.f, 0.f, 0.f);
    for (unsigned q = offs[k]; q < offs[k + 1]; ++q) {
        unsigned t = vt[q];
        unsigned idx[3] = {tris[3 * t], tris[3 * t + 1], tris[3 * t + 2]};
        float3 a = ld3(v, base + idx[0]), bb = ld3(v, base + idx[1]), c = ld3(v, base + idx[2]);
        float3 e1 = sub3(bb, a), e2 = sub3(c, a);
        float3 gf = add3(add3(ld3(gacc, base + idx[0]), ld3(gacc, base + idx[1])), ld3(gacc, base + idx[2]));
        float3 d1 = cross3(e2, gf), d2 = cross3(gf, e1);
        if (idx[0] == k) acc = sub3(acc, add3(d1, d2));
        if (idx[1] == k) acc = add3(acc, d1);
        if (idx[2] == k) acc = add3(acc, d2);
    }
    st3(out, gi, acc);
}

// ---------------------------------------------------------------- SH shading

#define SH_C0 0.2820948f
#define SH_C1 0.4886025f
#define SH_C2 1.0925484f
#define SH_C3 0.31539157f
#define SH_C4 0.5462742f

__device__ __forceinline__ void sh_basis(float3 n, float h[9]) {
    h[0] = SH_C0; h[1] = SH_C1 * n.y; h[2] = SH_C1 * n.z; h[3] = SH_C1 * n.x;
    h[4] = SH_C2 * n.x * n.y; h[5] = SH_C2 * n.y * n.z; h[6] = SH_C3 * (3.f * n.z * n.z - 1.f);
    h[7] = SH_C2 * n.x * n.z; h[8] = SH_C4 * (n.x * n.x - n.y * n.y);
}

extern "C" __global__ void fml_shade_fwd(ShadeParams p, const float* nrm, const float* r, const float* gamma, float* out) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = p.num_vertices;
    if (gi >= (size_t)p.batch * n) return;
    size_t b = gi / n;
    float h[9];
    sh_basis(ld3(nrm, gi), h);
    for (int c = 0; c < 3; ++c) {
        const float* g = gamma + b * 27 + c * 9;
        float e = 0.f;
        for (int k = 0; k < 9; ++k) e += g[k] * h[k];
        out[3 * gi + c] = r[3 * gi + c] * e;
    }
}

// Per-vertex gradients, plus per-block partial sums of the SH gradient.
// Grid: (blocks_per_image, batch); partial: [batch, blocks_per_image, 27].
extern "C" __global__ void fml_shade_bwd(ShadeParams p, const float* nrm, const float* r, const float* gamma,
                                         const float* g, float* gn, float* gr, float* partial) {
    __shared__ float red[27][BLOCK];
    size_t n = p.num_vertices;
    size_t b = blockIdx.y;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    float contrib[27];
    for (int k = 0; k < 27; ++k) contrib[k] = 0.f;
    if (i < n) {
        size_t gi = b * n + i;
        float3 nn = ld3(nrm, gi);
        float h[9];
        sh_basis(nn, h);
        float w[9];
        for (int k = 0; k < 9; ++k) w[k] = 0.f;
        for (int c = 0; c < 3; ++c) {
            const float* gam = gamma + b * 27 + c * 9;
            float e = 0.f;
            for (int k = 0; k < 9; ++k) e += gam[k] * h[k];
            float gc = g[3 * gi + c];
            gr[3 * gi + c] = gc * e;
            float s = gc * r[3 * gi + c];
            for (int k = 0; k < 9; ++k) { w[k] += s * gam[k]; contrib[c * 9 + k] = s * h[k]; }
        }
        float gx = w[3] * SH_C1 + w[4] * SH_C2 * nn.y + w[7] * SH_C2 * nn.z + w[8] * 2.f * SH_C4 * nn.x;
        float gy = w[1] * SH_C1 + w[4] * SH_C2 * nn.x + w[5] * SH_C2 * nn.z - w[8] * 2.f * SH_C4 * nn.y;
        float gz = w[2] * SH_C1 + w[5] * SH_C2 * nn.y + w[6] * 6.f * SH_C3 * nn.z + w[7] * SH_C2 * nn.x;
        st3(gn, gi, make_float3(gx, gy, gz));
    }
    for (int k = 0; k < 27; ++k) red[k][threadIdx.x] = contrib[k];
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            for (int k = 0; k < 27; ++k) red[k][threadIdx.x] += red[k][threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x < 27) partial[(b * gridDim.x + blockIdx.x) * 27 + threadIdx.x] = red[threadIdx.x][0];
}

// In-order sum of the partials: one thread per (image, coefficient).
extern "C" __global__ void fml_shade_bwd_reduce(ShadeParams p, unsigned blocks, const float* partial, float* ggamma) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.batch * 27) return;
    unsigned b = t / 27, k = t % 27;
    float s = 0.f;
    for (unsigned q = 0; q < blocks; ++q) s += partial[((size_t)b * blocks + q) * 27 + k];
    ggamma[t] = s;
}

// ---------------------------------------------------------------- projection + bilinear sampling

struct Footprint { unsigned x0, y0; float wx, wy, inv_d, u, v; };

// Mirrors `footprint` in src/render/ops/sample.rs.
__device__ bool footprint(const SampleParams& p, float3 q, Footprint& fp) {
    float d = -q.z;
    if (!(d > p.near)) return false;
    fp.inv_d = 1.0f / d;
    fp.u = p.cx + p.focal * q.x * fp.inv_d;
    fp.v = p.cy - p.focal * q.y * fp.inv_d;
    float xi = fp.u - 0.5f, yi = fp.v - 0.5f;
    if (!(xi >= 0.f && yi >= 0.f && xi <= (float)p.width - 1.f && yi <= (float)p.height - 1.f)) return false;
    float fx = fminf(fmaxf(floorf(xi), 0.f), (float)p.width - 2.f);
    float fy = fminf(fmaxf(floorf(yi), 0.f), (float)p.height - 2.f);
    fp.x0 = (unsigned)fx; fp.y0 = (unsigned)fy;
    fp.wx = xi - fx; fp.wy = yi - fy;
    return true;
}

__device__ __forceinline__ float3 texel(const float* img, const SampleParams& p, size_t b, unsigned x, unsigned y) {
    return ld3(img, (b * p.height + y) * p.width + x);
}

extern "C" __global__ void fml_sample_fwd(SampleParams p, const float* v, const float* img, float* out) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = p.num_vertices;
    if (gi >= (size_t)p.batch * n) return;
    size_t b = gi / n;
    Footprint fp;
    if (!footprint(p, ld3(v, gi), fp)) { st3(out, gi, make_float3(0.f, 0.f, 0.f)); return; }
    float3 i00 = texel(img, p, b, fp.x0, fp.y0), i10 = texel(img, p, b, fp.x0 + 1, fp.y0);
    float3 i01 = texel(img, p, b, fp.x0, fp.y0 + 1), i11 = texel(img, p, b, fp.x0 + 1, fp.y0 + 1);
    float a = (1.f - fp.wx) * (1.f - fp.wy), bw = fp.wx * (1.f - fp.wy), c = (1.f - fp.wx) * fp.wy, d = fp.wx * fp.wy;
    st3(out, gi, make_float3(a * i00.x + bw * i10.x + c * i01.x + d * i11.x,
                             a * i00.y + bw * i10.y + c * i01.y + d * i11.y,
                             a * i00.z + bw * i10.z + c * i01.z + d * i11.z));
}

extern "C" __global__ void fml_sample_bwd(SampleParams p, const float* v, const float* img, const float* g, float* out) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = p.num_vertices;
    if (gi >= (size_t)p.batch * n) return;
    size_t b = gi / n;
    Footprint fp;
    if (!footprint(p, ld3(v, gi), fp)) { st3(out, gi, make_float3(0.f, 0.f, 0.f)); return; }
    float3 i00 = texel(img, p, b, fp.x0, fp.y0), i10 = texel(img, p, b, fp.x0 + 1, fp.y0);
    float3 i01 = texel(img, p, b, fp.x0, fp.y0 + 1), i11 = texel(img, p, b, fp.x0 + 1, fp.y0 + 1);
    float3 gg = ld3(g, gi);
    float wx = fp.wx, wy = fp.wy;
    float3 dx = add3(make_float3((1.f - wy) * (i10.x - i00.x), (1.f - wy) * (i10.y - i00.y), (1.f - wy) * (i10.z - i00.z)),
                     make_float3(wy * (i11.x - i01.x), wy * (i11.y - i01.y), wy * (i11.z - i01.z)));
    float3 dy = add3(make_float3((1.f - wx) * (i01.x - i00.x), (1.f - wx) * (i01.y - i00.y), (1.f - wx) * (i01.z - i00.z)),
                     make_float3(wx * (i11.x - i10.x), wx * (i11.y - i10.y), wx * (i11.z - i10.z)));
    float gu = dot3(gg, dx), gv = dot3(gg, dy);
    float du_dz = (fp.u - p.cx) * fp.inv_d, dv_dz = (fp.v - p.cy) * fp.inv_d;
    st3(out, gi, make_float3(gu * p.focal * fp.inv_d, -gv * p.focal * fp.inv_d, gu * du_dz + gv * dv_dz));
}

// ---------------------------------------------------------------- photometric l2,1 (eq. 9)

// Grid (blocks_per_image, batch); partial: [batch, blocks, 2] = (sum of masked norms, mask sum).
extern "C" __global__ void fml_photo_partial(PhotoParams p, const float* a, const float* c, const float* m, float* partial) {
    __shared__ float s_sum[BLOCK], s_cnt[BLOCK];
    size_t n = p.num_vertices;
    size_t b = blockIdx.y;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    float s = 0.f, k = 0.f;
    if (i < n) {
        size_t gi = b * n + i;
        float mi = m[gi];
        if (mi > 0.f) {
            float3 d = sub3(ld3(a, gi), ld3(c, gi));
            s = mi * sqrtf(dot3(d, d) + p.eps);
            k = mi;
        }
    }
    s_sum[threadIdx.x] = s; s_cnt[threadIdx.x] = k;
    __syncthreads();
    for (unsigned st = blockDim.x / 2; st > 0; st >>= 1) {
        if (threadIdx.x < st) { s_sum[threadIdx.x] += s_sum[threadIdx.x + st]; s_cnt[threadIdx.x] += s_cnt[threadIdx.x + st]; }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        size_t o = (b * gridDim.x + blockIdx.x) * 2;
        partial[o] = s_sum[0]; partial[o + 1] = s_cnt[0];
    }
}

// loss[b] = sum / count (0 when nothing is visible); counts[b] = count.
extern "C" __global__ void fml_photo_finish(PhotoParams p, unsigned blocks, const float* partial, float* loss, float* counts) {
    unsigned b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= p.batch) return;
    float s = 0.f, k = 0.f;
    for (unsigned q = 0; q < blocks; ++q) { s += partial[((size_t)b * blocks + q) * 2]; k += partial[((size_t)b * blocks + q) * 2 + 1]; }
    loss[b] = k > 0.f ? s / k : 0.f;
    counts[b] = k;
}

extern "C" __global__ void fml_photo_bwd(PhotoParams p, const float* a, const float* c, const float* m, const float* g,
                                         const float* counts, float* out) {
    size_t gi = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = p.num_vertices;
    if (gi >= (size_t)p.batch * n) return;
    size_t b = gi / n;
    float mi = m[gi], k = counts[b];
    if (!(mi > 0.f) || !(k > 0.f)) { st3(out, gi, make_float3(0.f, 0.f, 0.f)); return; }
    float3 d = sub3(ld3(a, gi), ld3(c, gi));
    float s = g[b] * mi / (k * sqrtf(dot3(d, d) + p.eps));
    st3(out, gi, make_float3(s * d.x, s * d.y, s * d.z));
}
