// fml: im2col ("unfold") and its adjoint col2im ("fold") for the encoder's convolutions, the
// Caffe way (the paper's framework): conv = weights [O, C*k*k] x columns [C*k*k, B*Ho*Wo].
// Activations are channel-major [C, B, H, W], so the matrix product lands directly in the next
// layer's layout. Both kernels take the same parameter struct (mirrors ConvParams in
// src/encoder/im2col.rs); fold gathers per input pixel (no atomics), like the CPU twin.

struct ConvParams { unsigned channels, batch, height, width, kernel, stride, pad, out_h, out_w; };

// cols[(c*k + ky)*k + kx, (b*Ho + oy)*Wo + ox] = x[c, b, oy*s - p + ky, ox*s - p + kx] (0 outside).
extern "C" __global__ void fml_unfold(ConvParams p, const float* x, float* cols) {
    size_t n_cols = (size_t)p.batch * p.out_h * p.out_w;
    size_t total = (size_t)p.channels * p.kernel * p.kernel * n_cols;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t col = i % n_cols, row = i / n_cols;
    unsigned kx = row % p.kernel, ky = (row / p.kernel) % p.kernel, c = row / (p.kernel * p.kernel);
    unsigned ox = col % p.out_w, oy = (col / p.out_w) % p.out_h, b = col / (p.out_w * p.out_h);
    int y = (int)(oy * p.stride + ky) - (int)p.pad, xx = (int)(ox * p.stride + kx) - (int)p.pad;
    float v = 0.f;
    if (y >= 0 && y < (int)p.height && xx >= 0 && xx < (int)p.width)
        v = x[(((size_t)c * p.batch + b) * p.height + y) * p.width + xx];
    cols[i] = v;
}

// dx[c, b, y, x] = sum over (ky, kx) with (y + p - ky) and (x + p - kx) divisible by s and the
// output position in range of g[(c*k + ky)*k + kx, (b*Ho + oy)*Wo + ox].
extern "C" __global__ void fml_fold(ConvParams p, const float* g, float* dx) {
    size_t total = (size_t)p.channels * p.batch * p.height * p.width;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    unsigned x = i % p.width, y = (i / p.width) % p.height;
    unsigned b = (i / ((size_t)p.width * p.height)) % p.batch, c = i / ((size_t)p.width * p.height * p.batch);
    size_t n_cols = (size_t)p.batch * p.out_h * p.out_w;
    float acc = 0.f;
    for (unsigned ky = 0; ky < p.kernel; ++ky) {
        int ty = (int)y + (int)p.pad - (int)ky;
        if (ty < 0 || ty % (int)p.stride != 0) continue;
        unsigned oy = ty / p.stride;
        if (oy >= p.out_h) continue;
        for (unsigned kx = 0; kx < p.kernel; ++kx) {
            int tx = (int)x + (int)p.pad - (int)kx;
            if (tx < 0 || tx % (int)p.stride != 0) continue;
            unsigned ox = tx / p.stride;
            if (ox >= p.out_w) continue;
            size_t row = ((size_t)c * p.kernel + ky) * p.kernel + kx;
            acc += g[row * n_cols + ((size_t)b * p.out_h + oy) * p.out_w + ox];
        }
    }
    dx[i] = acc;
}
