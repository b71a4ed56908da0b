//! The dense photometric term (eq. 9) as a fused custom op: per image, the mean over visible
//! vertices of the l2 norm of the colour difference (the l2,1 norm), with its gradient.

use super::{CPU_BLOCK, Real, cpu_slice, cpu_tensor, dims_bn3, expect_dims, float_dtype, with_cpu};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Parameters shared by the forward and backward kernels (CPU and CUDA).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PhotoParams {
    pub batch: u32,
    pub num_vertices: u32,
    /// Added under the square root so the gradient of a zero residual is finite (and zero).
    pub eps: f32,
}

/// See [`PhotoParams::eps`].
pub const PHOTO_EPS: f32 = 1e-12;

/// Per-image (sum of norms, visible count), reduced in fixed blocks for determinism.
fn sums<T: Real>(p: &PhotoParams, a: &[T], c: &[T], m: &[T]) -> Vec<(T, T)> {
    let n = p.num_vertices as usize;
    let eps = T::from_f64(p.eps as f64);
    (0..p.batch as usize)
        .map(|b| {
            let parts: Vec<(T, T)> = (0..n.div_ceil(CPU_BLOCK))
                .into_par_iter()
                .map(|blk| {
                    let (mut s, mut k) = (T::zero(), T::zero());
                    for i in blk * CPU_BLOCK..((blk + 1) * CPU_BLOCK).min(n) {
                        let gi = b * n + i;
                        if m[gi] > T::zero() {
                            let d2 = (0..3).fold(T::zero(), |acc, q| acc + (a[gi * 3 + q] - c[gi * 3 + q]).powi(2));
                            s += m[gi] * (d2 + eps).sqrt();
                            k += m[gi];
                        }
                    }
                    (s, k)
                })
                .collect();
            parts.into_iter().fold((T::zero(), T::zero()), |(s, k), (s2, k2)| (s + s2, k + k2))
        })
        .collect()
}

/// CPU forward: `[B]` per-image photometric error (0 for an image with no visible vertex).
pub fn photo_fwd_cpu<T: Real>(p: &PhotoParams, sampled: &[T], shaded: &[T], mask: &[T]) -> Vec<T> {
    sums(p, sampled, shaded, mask).into_iter().map(|(s, k)| if k > T::zero() { s / k } else { T::zero() }).collect()
}

/// CPU backward: gradient with respect to `sampled` (that of `shaded` is its negative).
pub fn photo_bwd_cpu<T: Real>(p: &PhotoParams, sampled: &[T], shaded: &[T], mask: &[T], g: &[T]) -> Vec<T> {
    let n = p.num_vertices as usize;
    let counts: Vec<T> = sums(p, sampled, shaded, mask).into_iter().map(|(_, k)| k).collect();
    let eps = T::from_f64(p.eps as f64);
    let mut out = vec![T::zero(); p.batch as usize * n * 3];
    out.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let gi = blk * CPU_BLOCK + j;
            let b = gi / n;
            if !(mask[gi] > T::zero()) || !(counts[b] > T::zero()) {
                continue;
            }
            let d = [
                sampled[gi * 3] - shaded[gi * 3],
                sampled[gi * 3 + 1] - shaded[gi * 3 + 1],
                sampled[gi * 3 + 2] - shaded[gi * 3 + 2],
            ];
            let norm = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + eps).sqrt();
            let s = g[b] * mask[gi] / (counts[b] * norm);
            for q in 0..3 {
                dst[q] = s * d[q];
            }
        }
    });
    out
}

struct PhotoOp {
    eps: f32,
}

impl CustomOp3 for PhotoOp {
    fn name(&self) -> &'static str {
        "fml-photometric-l21"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l1.shape().dims();
        let p = PhotoParams { batch: d[0] as u32, num_vertices: d[1] as u32, eps: self.eps };
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(photo_fwd_cpu(
                &p,
                cpu_slice(s1, l1, "photo")?,
                cpu_slice(s2, l2, "photo")?,
                cpu_slice(s3, l3, "photo")?,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(photo_fwd_cpu(
                &p,
                cpu_slice(s1, l1, "photo")?,
                cpu_slice(s2, l2, "photo")?,
                cpu_slice(s3, l3, "photo")?,
            )),
            _ => candle_core::bail!("photo: expected f32 or f64"),
        };
        Ok((out, Shape::from(d[0])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = l1.shape().dims();
        let p = PhotoParams { batch: d[0] as u32, num_vertices: d[1] as u32, eps: self.eps };
        Ok((super::cuda::photo_fwd(&p, s1, l1, s2, l2, s3, l3)?, Shape::from(d[0])))
    }

    fn bwd(
        &self,
        a: &Tensor,
        c: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ga = photo_backward(a, c, m, &grad.contiguous()?, self.eps)?;
        let gc = ga.neg()?;
        Ok((Some(ga), Some(gc), None))
    }
}

/// Gradient of the photometric op with respect to `sampled`.
///
/// # Shapes
/// `sampled`, `shaded`: `[B, N, 3]`; `mask`: `[B, N]`; `grad`: `[B]` -> `[B, N, 3]`.
pub fn photo_backward(
    sampled: &Tensor,
    shaded: &Tensor,
    mask: &Tensor,
    grad: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    let (b, n) = dims_bn3(sampled, "photo backward")?;
    expect_dims(shaded, &[b, n, 3], "photo backward", "shaded")?;
    expect_dims(mask, &[b, n], "photo backward", "mask")?;
    expect_dims(grad, &[b], "photo backward", "grad")?;
    let p = PhotoParams { batch: b as u32, num_vertices: n as u32, eps };
    #[cfg(feature = "cuda")]
    if sampled.device().is_cuda() {
        return super::cuda::photo_bwd(&p, sampled, shaded, mask, grad);
    }
    macro_rules! run {
        ($t:ty) => {
            with_cpu::<$t, _>(sampled, "photo", |a| {
                with_cpu::<$t, _>(shaded, "photo", |c| {
                    with_cpu::<$t, _>(mask, "photo", |m| {
                        with_cpu::<$t, _>(grad, "photo", |g| cpu_tensor(photo_bwd_cpu(&p, a, c, m, g), (b, n, 3)))
                    })
                })
            })
        };
    }
    match sampled.dtype() {
        candle_core::DType::F32 => run!(f32),
        _ => run!(f64),
    }
}

/// Per-image photometric error (eq. 9): `sum_i m_i ||s_i - c_i||_2 / sum_i m_i`.
///
/// # Shapes
/// `sampled`, `shaded`: `[B, N, 3]`; `mask`: `[B, N]` (0/1, not differentiated) -> `[B]`.
pub fn photometric_l21(sampled: &Tensor, shaded: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, n) = dims_bn3(sampled, "photometric_l21")?;
    float_dtype(sampled, "photometric_l21")?;
    if shaded.dims() != [b, n, 3] || mask.dims() != [b, n] {
        candle_core::bail!(
            "photometric_l21: shaded {:?} / mask {:?} do not match [{b}, {n}, 3] / [{b}, {n}]",
            shaded.dims(),
            mask.dims()
        );
    }
    let mask = mask.detach().to_dtype(sampled.dtype())?.contiguous()?;
    sampled.contiguous()?.apply_op3(&shaded.contiguous()?, &mask, PhotoOp { eps: PHOTO_EPS })
}
