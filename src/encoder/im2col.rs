//! Convolution as im2col + matrix product (the Caffe formulation the paper was trained with), as
//! a pair of custom ops: `unfold` (im2col) and its adjoint `fold` (col2im), with CPU twins and
//! CUDA kernels in `kernels/im2col.cu`. The matrix products run on the BLAS (gemm on CPU, cuBLAS
//! on GPU), which makes the backward pass as fast as the forward one; candle's own CPU
//! convolution backward (a direct transposed convolution) is an order of magnitude slower.
//!
//! Activations are channel-major `[C, B, H, W]` so that `W [O, C k k] x cols [C k k, B Ho Wo]`
//! is already the next layer's `[O, B, Ho, Wo]` without a transpose.

use crate::kernel::{CPU_BLOCK, cpu_slice, with_cpu};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Parameters shared by the unfold and fold kernels (CPU and CUDA).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub channels: u32,
    pub batch: u32,
    pub height: u32,
    pub width: u32,
    pub kernel: u32,
    pub stride: u32,
    pub pad: u32,
    pub out_h: u32,
    pub out_w: u32,
}

impl ConvParams {
    /// Geometry of a `kernel`x`kernel` convolution with `stride` and `pad` over `[C, B, H, W]`.
    pub fn new(
        dims: (usize, usize, usize, usize),
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        let (c, b, h, w) = dims;
        if stride == 0 || h + 2 * pad < kernel || w + 2 * pad < kernel {
            candle_core::bail!("unfold: kernel {kernel} / stride {stride} / pad {pad} does not fit {h}x{w}");
        }
        let u = |x: usize| x as u32;
        Ok(ConvParams {
            channels: u(c),
            batch: u(b),
            height: u(h),
            width: u(w),
            kernel: u(kernel),
            stride: u(stride),
            pad: u(pad),
            out_h: u((h + 2 * pad - kernel) / stride + 1),
            out_w: u((w + 2 * pad - kernel) / stride + 1),
        })
    }

    /// Rows (C k k) and columns (B Ho Wo) of the column matrix.
    pub fn cols_shape(&self) -> (usize, usize) {
        let k = self.kernel as usize;
        (self.channels as usize * k * k, self.batch as usize * self.out_h as usize * self.out_w as usize)
    }
}

/// CPU im2col.
pub fn unfold_cpu(p: &ConvParams, x: &[f32]) -> Vec<f32> {
    let (rows, ncols) = p.cols_shape();
    let (k, s, pad) = (p.kernel as usize, p.stride as usize, p.pad as i64);
    let (h, w, b_n) = (p.height as usize, p.width as usize, p.batch as usize);
    let (oh, ow) = (p.out_h as usize, p.out_w as usize);
    let mut cols = vec![0f32; rows * ncols];
    cols.par_chunks_mut(ncols).enumerate().for_each(|(row, out)| {
        let (kx, ky, c) = (row % k, (row / k) % k, row / (k * k));
        for b in 0..b_n {
            let plane = &x[(c * b_n + b) * h * w..(c * b_n + b + 1) * h * w];
            for oy in 0..oh {
                let y = (oy * s + ky) as i64 - pad;
                let dst = &mut out[(b * oh + oy) * ow..(b * oh + oy + 1) * ow];
                if y < 0 || y >= h as i64 {
                    continue; // stays 0
                }
                let src = &plane[y as usize * w..(y as usize + 1) * w];
                for (ox, d) in dst.iter_mut().enumerate() {
                    let xx = (ox * s + kx) as i64 - pad;
                    if xx >= 0 && xx < w as i64 {
                        *d = src[xx as usize];
                    }
                }
            }
        }
    });
    cols
}

/// CPU col2im (the adjoint of [`unfold_cpu`]): gathers, per input pixel, every column entry it
/// was copied to.
pub fn fold_cpu(p: &ConvParams, g: &[f32]) -> Vec<f32> {
    let (_, ncols) = p.cols_shape();
    let (k, s, pad) = (p.kernel as i64, p.stride as i64, p.pad as i64);
    let (h, w, b_n) = (p.height as usize, p.width as usize, p.batch as usize);
    let (oh, ow) = (p.out_h as i64, p.out_w as i64);
    let mut dx = vec![0f32; p.channels as usize * b_n * h * w];
    dx.par_chunks_mut(CPU_BLOCK.max(w)).enumerate().for_each(|(blk, out)| {
        let chunk = CPU_BLOCK.max(w);
        for (j, d) in out.iter_mut().enumerate() {
            let i = blk * chunk + j;
            let (x, y) = ((i % w) as i64, ((i / w) % h) as i64);
            let (b, c) = ((i / (w * h)) % b_n, i / (w * h * b_n));
            let mut acc = 0f32;
            for ky in 0..k {
                let ty = y + pad - ky;
                if ty < 0 || ty % s != 0 || ty / s >= oh {
                    continue;
                }
                for kx in 0..k {
                    let tx = x + pad - kx;
                    if tx < 0 || tx % s != 0 || tx / s >= ow {
                        continue;
                    }
                    let row = (c as i64 * k + ky) * k + kx;
                    acc += g[row as usize * ncols + ((b as i64 * oh + ty / s) * ow + tx / s) as usize];
                }
            }
            *d = acc;
        }
    });
    dx
}

struct Unfold {
    p: ConvParams,
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "fml-unfold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s, l, "unfold")?;
        Ok((CpuStorage::F32(unfold_cpu(&self.p, x)), Shape::from(self.p.cols_shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cuda::unfold(&self.p, s, l)?, Shape::from(self.p.cols_shape())))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(fold(&grad.contiguous()?, &self.p)?))
    }
}

/// col2im of a column-matrix gradient back to `[C, B, H, W]`: every input pixel sums the column
/// entries it was copied to by [`unfold`].
///
/// # Shapes
/// - `grad`: `[C k k, B Ho Wo]` (f32, contiguous; [`ConvParams::cols_shape`])
/// - returns: `[C, B, H, W]` (the geometry in `p`)
pub fn fold(grad: &Tensor, p: &ConvParams) -> candle_core::Result<Tensor> {
    let shape = (p.channels as usize, p.batch as usize, p.height as usize, p.width as usize); // [C, B, H, W]
    let (rows, cols) = p.cols_shape();
    crate::kernel::expect_dims(grad, &[rows, cols], "fold", "grad")?;
    #[cfg(feature = "cuda")]
    if grad.device().is_cuda() {
        return super::cuda::fold(p, grad, shape);
    }
    with_cpu::<f32, _>(grad, "fold", |g| crate::kernel::cpu_tensor(fold_cpu(p, g), shape))
}

/// im2col of channel-major activations.
///
/// # Shapes
/// `x`: `[C, B, H, W]` (f32) -> `[C k k, B Ho Wo]`.
pub fn unfold(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> candle_core::Result<(Tensor, ConvParams)> {
    if x.dtype() != candle_core::DType::F32 {
        candle_core::bail!("unfold: expected f32, got {:?}", x.dtype());
    }
    let p = ConvParams::new(x.dims4()?, kernel, stride, pad)?;
    Ok((x.contiguous()?.apply_op1(Unfold { p })?, p)) // [C k k, B Ho Wo]
}

/// A convolution of channel-major activations: `[C, B, H, W]` -> `[O, B, Ho, Wo]`, with weights
/// `[O, C, k, k]` and bias `[O]` (candle-nn's conv layout, so checkpoints are interchangeable).
///
/// # Shapes
/// - `x`: `[C, B, H, W]` (f32)
/// - `weight`: `[O, C, k, k]`; `bias`: `[O]`
/// - returns: `[O, B, Ho, Wo]`, `Ho = (H + 2 pad - k) / stride + 1` (likewise `Wo`)
pub fn conv2d_cbhw(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
) -> candle_core::Result<Tensor> {
    let (o, c, k, _) = weight.dims4()?;
    let (cols, p) = unfold(x, k, stride, pad)?; // [C k k, B Ho Wo]
    let y = weight.reshape((o, c * k * k))?.matmul(&cols)?; // [O, C k k] x [C k k, B Ho Wo] -> [O, B Ho Wo]
    let y = y.broadcast_add(&bias.reshape((o, 1))?)?; // + [O, 1] -> [O, B Ho Wo]
    y.reshape((o, p.batch as usize, p.out_h as usize, p.out_w as usize)) // [O, B, Ho, Wo]
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| r.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_candle_conv_forward_and_backward() {
        for (c, b, h, w, o, k, s, p) in
            [(3, 2, 17, 15, 4, 5, 2, 2), (4, 3, 9, 9, 5, 3, 1, 1), (3, 1, 31, 31, 2, 11, 4, 0)]
        {
            let xv = Var::from_tensor(&rand(&[b, c, h, w], 1)).unwrap();
            let wv = Var::from_tensor(&rand(&[o, c, k, k], 2)).unwrap();
            let bias = Var::from_tensor(&rand(&[o], 3)).unwrap();
            let gy = rand(&[b, o, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1], 4);
            // Reference: candle's NCHW convolution.
            let ref_y = xv
                .as_tensor()
                .conv2d(wv.as_tensor(), p, s, 1, 1)
                .unwrap()
                .broadcast_add(&bias.as_tensor().reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let ref_g = (&ref_y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            // Ours, channel-major.
            let x_cbhw = xv.as_tensor().permute((1, 0, 2, 3)).unwrap();
            let y =
                conv2d_cbhw(&x_cbhw, wv.as_tensor(), bias.as_tensor(), s, p).unwrap().permute((1, 0, 2, 3)).unwrap();
            assert!(max_diff(&y, &ref_y) < 1e-4, "forward {c} {h}x{w} k{k} s{s}");
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &xv), ("weight", &wv), ("bias", &bias)] {
                let d = max_diff(g.get(v.as_tensor()).unwrap(), ref_g.get(v.as_tensor()).unwrap());
                assert!(d < 1e-3, "{name} gradient differs by {d} (k{k} s{s})");
            }
        }
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        // <unfold(x), g> == <x, fold(g)> for random x, g.
        let x = rand(&[2, 3, 8, 7], 5);
        let (cols, p) = unfold(&x, 3, 2, 1).unwrap();
        let g = rand(cols.dims(), 6);
        let lhs = (&cols * &g).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let rhs = (&x * fold(&g, &p).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
        // A gradient of another size is refused, not read past its end.
        let short = g.narrow(1, 0, g.dim(1).unwrap() - 1).unwrap().contiguous().unwrap();
        let e = fold(&short, &p).unwrap_err().to_string();
        assert!(e.contains("fold: grad has shape"), "{e}");
    }
}
