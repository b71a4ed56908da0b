//! Perspective projection of camera-space vertices and bilinear sampling of the input image at
//! the projected positions u_i (Sec. 5), as a custom op. The gradient flows to the vertices
//! through the image gradient of the bilinear interpolant and the projection Jacobian.
//!
//! Points that cannot be sampled (behind the near plane, or whose 2x2 pixel neighbourhood leaves
//! the image) return colour 0 and zero gradient; the visibility mask excludes them from losses.

use super::{CPU_BLOCK, Real, cpu_slice, cpu_tensor, dims_bn3, expect_dims, float_dtype, with_cpu};
use crate::render::camera::Intrinsics;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Parameters shared by the forward and backward kernels (CPU and CUDA).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleParams {
    pub batch: u32,
    pub num_vertices: u32,
    pub width: u32,
    pub height: u32,
    pub focal: f32,
    pub cx: f32,
    pub cy: f32,
    pub near: f32,
}

impl SampleParams {
    pub fn new(batch: usize, num_vertices: usize, k: &Intrinsics) -> Self {
        let [cx, cy] = k.centre();
        SampleParams {
            batch: batch as u32,
            num_vertices: num_vertices as u32,
            width: k.width as u32,
            height: k.height as u32,
            focal: k.focal,
            cx,
            cy,
            near: k.near,
        }
    }
}

/// Where a point samples: pixel-index coordinates of the top-left neighbour and the weights,
/// plus the projection Jacobian pieces.
struct Footprint<T> {
    x0: usize,
    y0: usize,
    wx: T,
    wy: T,
    inv_d: T,
    u: T,
    v: T,
}

#[inline]
fn footprint<T: Real>(p: &SampleParams, x: T, y: T, z: T) -> Option<Footprint<T>> {
    let d = -z;
    if !(d > T::from_f64(p.near as f64)) {
        return None;
    }
    let inv_d = d.recip();
    let f = T::from_f64(p.focal as f64);
    let u = T::from_f64(p.cx as f64) + f * x * inv_d;
    let v = T::from_f64(p.cy as f64) - f * y * inv_d;
    let half = T::from_f64(0.5);
    let (xi, yi) = (u - half, v - half);
    let (wmax, hmax) = (T::from_f64(p.width as f64 - 1.0), T::from_f64(p.height as f64 - 1.0));
    if !(xi >= T::zero() && yi >= T::zero() && xi <= wmax && yi <= hmax) {
        return None;
    }
    // The last row/column samples with weight 1 on the far neighbour of the previous cell.
    let x0 = xi.floor().to_f64().min(p.width as f64 - 2.0).max(0.0) as usize;
    let y0 = yi.floor().to_f64().min(p.height as f64 - 2.0).max(0.0) as usize;
    Some(Footprint { x0, y0, wx: xi - T::from_f64(x0 as f64), wy: yi - T::from_f64(y0 as f64), inv_d, u, v })
}

#[inline]
fn texel<T: Real>(img: &[T], p: &SampleParams, b: usize, x: usize, y: usize) -> [T; 3] {
    let o = ((b * p.height as usize + y) * p.width as usize + x) * 3;
    [img[o], img[o + 1], img[o + 2]]
}

/// CPU forward: sampled colours `[B, N, 3]`.
pub fn sample_fwd_cpu<T: Real>(p: &SampleParams, v: &[T], img: &[T]) -> Vec<T> {
    let n = p.num_vertices as usize;
    let mut out = vec![T::zero(); p.batch as usize * n * 3];
    out.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let gi = blk * CPU_BLOCK + j;
            let b = gi / n;
            let Some(fp) = footprint(p, v[gi * 3], v[gi * 3 + 1], v[gi * 3 + 2]) else { continue };
            let (i00, i10) = (texel(img, p, b, fp.x0, fp.y0), texel(img, p, b, fp.x0 + 1, fp.y0));
            let (i01, i11) = (texel(img, p, b, fp.x0, fp.y0 + 1), texel(img, p, b, fp.x0 + 1, fp.y0 + 1));
            let (wx, wy) = (fp.wx, fp.wy);
            let one = T::one();
            for c in 0..3 {
                dst[c] = (one - wx) * (one - wy) * i00[c]
                    + wx * (one - wy) * i10[c]
                    + (one - wx) * wy * i01[c]
                    + wx * wy * i11[c];
            }
        }
    });
    out
}

/// CPU backward: gradient with respect to the camera-space vertices.
pub fn sample_bwd_cpu<T: Real>(p: &SampleParams, v: &[T], img: &[T], g: &[T]) -> Vec<T> {
    let n = p.num_vertices as usize;
    let mut out = vec![T::zero(); p.batch as usize * n * 3];
    out.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let gi = blk * CPU_BLOCK + j;
            let b = gi / n;
            let (x, y, z) = (v[gi * 3], v[gi * 3 + 1], v[gi * 3 + 2]);
            let Some(fp) = footprint(p, x, y, z) else { continue };
            let (i00, i10) = (texel(img, p, b, fp.x0, fp.y0), texel(img, p, b, fp.x0 + 1, fp.y0));
            let (i01, i11) = (texel(img, p, b, fp.x0, fp.y0 + 1), texel(img, p, b, fp.x0 + 1, fp.y0 + 1));
            let one = T::one();
            let (mut gu, mut gv) = (T::zero(), T::zero());
            for c in 0..3 {
                let didx = (one - fp.wy) * (i10[c] - i00[c]) + fp.wy * (i11[c] - i01[c]);
                let didy = (one - fp.wx) * (i01[c] - i00[c]) + fp.wx * (i11[c] - i10[c]);
                gu += g[gi * 3 + c] * didx;
                gv += g[gi * 3 + c] * didy;
            }
            // u = cx + f x / d, v = cy - f y / d with d = -z:
            // du/dx = f/d, du/dz = (u - cx)/d; dv/dy = -f/d, dv/dz = (v - cy)/d.
            let f = T::from_f64(p.focal as f64);
            let du_dz = (fp.u - T::from_f64(p.cx as f64)) * fp.inv_d;
            let dv_dz = (fp.v - T::from_f64(p.cy as f64)) * fp.inv_d;
            dst[0] = gu * f * fp.inv_d;
            dst[1] = -gv * f * fp.inv_d;
            dst[2] = gu * du_dz + gv * dv_dz;
        }
    });
    out
}

struct SampleOp {
    image: Tensor,
    params_k: Intrinsics,
}

impl CustomOp1 for SampleOp {
    fn name(&self) -> &'static str {
        "fml-project-sample"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l.shape().dims();
        let p = SampleParams::new(d[0], d[1], &self.params_k);
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(with_cpu::<f32, _>(&self.image, "sample", |img| {
                Ok(sample_fwd_cpu(&p, cpu_slice(s, l, "sample")?, img))
            })?),
            CpuStorage::F64(_) => CpuStorage::F64(with_cpu::<f64, _>(&self.image, "sample", |img| {
                Ok(sample_fwd_cpu(&p, cpu_slice(s, l, "sample")?, img))
            })?),
            _ => candle_core::bail!("sample: expected f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = l.shape().dims();
        let p = SampleParams::new(d[0], d[1], &self.params_k);
        Ok((super::cuda::sample_fwd(&p, s, l, &self.image)?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(sample_backward(arg, &self.image, &self.params_k, &grad.contiguous()?)?))
    }
}

/// Gradient of the sampling op with respect to the camera-space vertices.
///
/// # Shapes
/// `vertices`, `grad`: `[B, N, 3]`; `image`: `[B, H, W, 3]` -> `[B, N, 3]`.
pub fn sample_backward(
    vertices: &Tensor,
    image: &Tensor,
    k: &Intrinsics,
    grad: &Tensor,
) -> candle_core::Result<Tensor> {
    let (b, n) = dims_bn3(vertices, "sample backward")?;
    if k.width < 2 || k.height < 2 {
        candle_core::bail!("sample backward: image must be at least 2x2");
    }
    expect_dims(image, &[b, k.height, k.width, 3], "sample backward", "image")?;
    expect_dims(grad, &[b, n, 3], "sample backward", "grad")?;
    let p = SampleParams::new(b, n, k);
    #[cfg(feature = "cuda")]
    if vertices.device().is_cuda() {
        return super::cuda::sample_bwd(&p, vertices, image, grad);
    }
    macro_rules! run {
        ($t:ty) => {
            with_cpu::<$t, _>(vertices, "sample", |v| {
                with_cpu::<$t, _>(image, "sample", |img| {
                    with_cpu::<$t, _>(grad, "sample", |g| cpu_tensor(sample_bwd_cpu(&p, v, img, g), (b, n, 3)))
                })
            })
        };
    }
    match vertices.dtype() {
        candle_core::DType::F32 => run!(f32),
        _ => run!(f64),
    }
}

/// Project camera-space vertices and sample `image` bilinearly there (differentiable in the
/// vertices; the image is data).
///
/// # Shapes
/// `vertices`: `[B, N, 3]` camera space; `image`: `[B, H, W, 3]` -> `[B, N, 3]`.
pub fn project_and_sample(vertices: &Tensor, image: &Tensor, k: &Intrinsics) -> candle_core::Result<Tensor> {
    let (b, _) = dims_bn3(vertices, "project_and_sample")?;
    float_dtype(vertices, "project_and_sample")?;
    if image.dims() != [b, k.height, k.width, 3] {
        candle_core::bail!(
            "project_and_sample: image {:?}, expected [{b}, {}, {}, 3]",
            image.dims(),
            k.height,
            k.width
        );
    }
    if k.width < 2 || k.height < 2 {
        candle_core::bail!("project_and_sample: image must be at least 2x2");
    }
    let image = image.detach().to_dtype(vertices.dtype())?.contiguous()?;
    vertices.contiguous()?.apply_op1(SampleOp { image, params_k: *k })
}
