//! SH shading (eq. 5) as a custom op: `c_i = r_i ⊙ sum_b gamma_b H_b(n_i)` per colour channel,
//! with gradients to normals, reflectance and the 27 illumination coefficients.

use super::{CPU_BLOCK, Real, cpu_slice, cpu_tensor, dims_bn3, expect_dims, float_dtype, with_cpu};
use crate::render::sh::{C0, C1, C2, C3, C4};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Parameters shared by the forward and backward kernels (CPU and CUDA).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShadeParams {
    pub batch: u32,
    pub num_vertices: u32,
}

#[inline]
fn basis<T: Real>(n: [T; 3]) -> [T; 9] {
    let c = |x: f32| T::from_f64(x as f64);
    let [x, y, z] = n;
    [
        c(C0),
        c(C1) * y,
        c(C1) * z,
        c(C1) * x,
        c(C2) * x * y,
        c(C2) * y * z,
        c(C3) * (T::from_f64(3.0) * z * z - T::one()),
        c(C2) * x * z,
        c(C4) * (x * x - y * y),
    ]
}

/// `sum_b w[b] dH_b/dn` for a weight vector over the 9 bands.
#[inline]
fn basis_grad_dot<T: Real>(n: [T; 3], w: [T; 9]) -> [T; 3] {
    let c = |x: f32| T::from_f64(x as f64);
    let [x, y, z] = n;
    let two = T::from_f64(2.0);
    let gx = w[3] * c(C1) + w[4] * c(C2) * y + w[7] * c(C2) * z + w[8] * two * c(C4) * x;
    let gy = w[1] * c(C1) + w[4] * c(C2) * x + w[5] * c(C2) * z - w[8] * two * c(C4) * y;
    let gz = w[2] * c(C1) + w[5] * c(C2) * y + w[6] * T::from_f64(6.0) * c(C3) * z + w[7] * c(C2) * x;
    [gx, gy, gz]
}

/// CPU forward.
pub fn shade_fwd_cpu<T: Real>(p: &ShadeParams, n: &[T], r: &[T], gamma: &[T]) -> Vec<T> {
    let nv = p.num_vertices as usize;
    let mut out = vec![T::zero(); p.batch as usize * nv * 3];
    out.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let gi = blk * CPU_BLOCK + j;
            let b = gi / nv;
            let h = basis([n[gi * 3], n[gi * 3 + 1], n[gi * 3 + 2]]);
            for c in 0..3 {
                let g = &gamma[b * 27 + c * 9..b * 27 + c * 9 + 9];
                let e = (0..9).fold(T::zero(), |s, k| s + g[k] * h[k]);
                dst[c] = r[gi * 3 + c] * e;
            }
        }
    });
    out
}

/// CPU backward: (d normals `[B,N,3]`, d reflectance `[B,N,3]`, d gamma `[B,27]`).
pub fn shade_bwd_cpu<T: Real>(p: &ShadeParams, n: &[T], r: &[T], gamma: &[T], g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let nv = p.num_vertices as usize;
    let total = p.batch as usize * nv;
    let mut gn = vec![T::zero(); total * 3];
    let mut gr = vec![T::zero(); total * 3];
    gn.par_chunks_mut(CPU_BLOCK * 3).zip(gr.par_chunks_mut(CPU_BLOCK * 3)).enumerate().for_each(|(blk, (on, or))| {
        for j in 0..on.len() / 3 {
            let gi = blk * CPU_BLOCK + j;
            let b = gi / nv;
            let nn = [n[gi * 3], n[gi * 3 + 1], n[gi * 3 + 2]];
            let h = basis(nn);
            // w[b] = sum_c g_c r_c gamma_{c,b}: the weight of band b in dL/dn.
            let mut w = [T::zero(); 9];
            for c in 0..3 {
                let gam = &gamma[b * 27 + c * 9..b * 27 + c * 9 + 9];
                let e = (0..9).fold(T::zero(), |s, k| s + gam[k] * h[k]);
                or[j * 3 + c] = g[gi * 3 + c] * e;
                let gr_c = g[gi * 3 + c] * r[gi * 3 + c];
                for k in 0..9 {
                    w[k] += gr_c * gam[k];
                }
            }
            let d = basis_grad_dot(nn, w);
            on[j * 3..j * 3 + 3].copy_from_slice(&d);
        }
    });
    // d gamma_{c,b} = sum_i g_ic r_ic H_b(n_i): fixed-size blocks reduced in order, so the
    // result does not depend on the thread count.
    let mut ggamma = vec![T::zero(); p.batch as usize * 27];
    for b in 0..p.batch as usize {
        let partial: Vec<[T; 27]> = (0..nv.div_ceil(CPU_BLOCK))
            .into_par_iter()
            .map(|blk| {
                let mut acc = [T::zero(); 27];
                for i in blk * CPU_BLOCK..((blk + 1) * CPU_BLOCK).min(nv) {
                    let gi = b * nv + i;
                    let h = basis([n[gi * 3], n[gi * 3 + 1], n[gi * 3 + 2]]);
                    for c in 0..3 {
                        let s = g[gi * 3 + c] * r[gi * 3 + c];
                        for k in 0..9 {
                            acc[c * 9 + k] += s * h[k];
                        }
                    }
                }
                acc
            })
            .collect();
        for acc in partial {
            for k in 0..27 {
                ggamma[b * 27 + k] += acc[k];
            }
        }
    }
    (gn, gr, ggamma)
}

struct ShadeOp;

impl CustomOp3 for ShadeOp {
    fn name(&self) -> &'static str {
        "fml-sh-shade"
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
        let p = ShadeParams { batch: d[0] as u32, num_vertices: d[1] as u32 };
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(shade_fwd_cpu(
                &p,
                cpu_slice(s1, l1, "shade")?,
                cpu_slice(s2, l2, "shade")?,
                cpu_slice(s3, l3, "shade")?,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(shade_fwd_cpu(
                &p,
                cpu_slice(s1, l1, "shade")?,
                cpu_slice(s2, l2, "shade")?,
                cpu_slice(s3, l3, "shade")?,
            )),
            _ => candle_core::bail!("shade: expected f32 or f64"),
        };
        Ok((out, l1.shape().clone()))
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
        let p = ShadeParams { batch: d[0] as u32, num_vertices: d[1] as u32 };
        Ok((super::cuda::shade_fwd(&p, s1, l1, s2, l2, s3, l3)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        n: &Tensor,
        r: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gn, gr, gg) = shade_backward(n, r, gamma, &grad.contiguous()?)?;
        Ok((Some(gn), Some(gr), Some(gg)))
    }
}

/// Gradients of the shading op: (d normals, d reflectance, d gamma).
///
/// # Shapes
/// `normals`, `reflectance`, `grad`: `[B, N, 3]`; `gamma`: `[B, 27]`.
pub fn shade_backward(
    normals: &Tensor,
    reflectance: &Tensor,
    gamma: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (b, nv) = dims_bn3(normals, "shade backward")?;
    expect_dims(reflectance, &[b, nv, 3], "shade backward", "reflectance")?;
    expect_dims(gamma, &[b, 27], "shade backward", "gamma")?;
    expect_dims(grad, &[b, nv, 3], "shade backward", "grad")?;
    let p = ShadeParams { batch: b as u32, num_vertices: nv as u32 };
    #[cfg(feature = "cuda")]
    if normals.device().is_cuda() {
        return super::cuda::shade_bwd(&p, normals, reflectance, gamma, grad);
    }
    macro_rules! run {
        ($t:ty) => {
            with_cpu::<$t, _>(normals, "shade", |n| {
                with_cpu::<$t, _>(reflectance, "shade", |r| {
                    with_cpu::<$t, _>(gamma, "shade", |gm| {
                        with_cpu::<$t, _>(grad, "shade", |g| {
                            let (gn, gr, gg) = shade_bwd_cpu(&p, n, r, gm, g);
                            Ok((cpu_tensor(gn, (b, nv, 3))?, cpu_tensor(gr, (b, nv, 3))?, cpu_tensor(gg, (b, 27))?))
                        })
                    })
                })
            })
        };
    }
    match normals.dtype() {
        candle_core::DType::F32 => run!(f32),
        _ => run!(f64),
    }
}

/// Shaded colours of a batch (differentiable in all three inputs).
///
/// # Shapes
/// `normals`: `[B, N, 3]` (camera space, unit), `reflectance`: `[B, N, 3]`, `gamma`: `[B, 27]`
/// -> `[B, N, 3]`.
pub fn shade(normals: &Tensor, reflectance: &Tensor, gamma: &Tensor) -> candle_core::Result<Tensor> {
    let (b, n) = dims_bn3(normals, "shade")?;
    float_dtype(normals, "shade")?;
    if reflectance.dims() != [b, n, 3] || gamma.dims() != [b, 27] {
        candle_core::bail!(
            "shade: reflectance {:?} / gamma {:?} do not match normals [{b}, {n}, 3] / [{b}, 27]",
            reflectance.dims(),
            gamma.dims()
        );
    }
    normals.contiguous()?.apply_op3(&reflectance.contiguous()?, &gamma.contiguous()?, ShadeOp)
}
