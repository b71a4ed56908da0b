//! AlexNet's overlapping 3x3/2 max-pooling as one custom op on a CPU (forward and backward).
//!
//! The tensor formulation ([`super::max_pool_3x3_s2_tensor_ops`]) builds each pass from about
//! twenty small ops (pads, narrows, reshapes, two `maximum`s per axis) whose backward passes pad,
//! concatenate and mask full-size tensors; in the tiny configuration that made the encoder's
//! backward pass several times slower than its forward pass. This op computes exactly the same
//! numbers, including candle's gradient rule for ties (`maximum`'s backward splits the gradient
//! of equal inputs in halves: `lhs_grad = mask_lhs * g / (mask_rhs + 1)`), applied in the same
//! order (3-wide along W, then along H; per axis `max(max(x[2i], x[2i+1]), x[2i+2])`), so values
//! and gradients are bit-identical. Other devices use the tensor formulation.

use crate::kernel::{Real, cpu_slice, cpu_tensor, with_cpu};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// candle's `maximum`: `if a < b { b } else { a }` (keeps `a` when either is NaN).
#[inline]
fn maximum<T: Real>(a: T, b: T) -> T {
    if a < b { b } else { a }
}

#[inline]
fn mask<T: Real>(eq: bool) -> T {
    if eq { T::one() } else { T::zero() }
}

/// One axis of the pooling inside a plane: `lines` independent lines, line `k` starting at
/// `k * line_in` in the input and `k * line_out` in the output, samples `stride` apart; each line
/// of `2m + 1` (or more) samples gives `m` outputs. Along W the lines are rows (`stride` 1);
/// along H they are columns (`stride` = the row length, lines 1 apart).
#[derive(Clone, Copy)]
struct Axis {
    m: usize,
    lines: usize,
    line_in: usize,
    line_out: usize,
    stride: usize,
}

/// `y[i] = max(max(x[2i], x[2i+1]), x[2i+2])` along every line.
fn pool_lines<T: Real>(x: &[T], y: &mut [T], ax: Axis) {
    for k in 0..ax.lines {
        let (bi, bo) = (k * ax.line_in, k * ax.line_out);
        for i in 0..ax.m {
            let a = x[bi + 2 * i * ax.stride];
            let b = x[bi + (2 * i + 1) * ax.stride];
            let c = x[bi + (2 * i + 2) * ax.stride];
            y[bo + i * ax.stride] = maximum(maximum(a, b), c);
        }
    }
}

/// The adjoint of [`pool_lines`] with candle's tie rule, accumulated into `gx` (zero at first).
fn pool_lines_bwd<T: Real>(x: &[T], gy: &[T], gx: &mut [T], ax: Axis) {
    let one = T::one();
    for k in 0..ax.lines {
        let (bi, bo) = (k * ax.line_in, k * ax.line_out);
        for i in 0..ax.m {
            let (ia, ib, ic) = (bi + 2 * i * ax.stride, bi + (2 * i + 1) * ax.stride, bi + (2 * i + 2) * ax.stride);
            let (a, b, c) = (x[ia], x[ib], x[ic]);
            let m = maximum(a, b);
            let y = maximum(m, c);
            let g = gy[bo + i * ax.stride];
            // The graph is y = maximum(m, c), m = maximum(a, b); each maximum's backward is
            // `mask_lhs * g / (mask_rhs * 1 + 1)` (and the mirror), masks from equality with
            // its output, exactly as candle computes it.
            let (mm, mc) = (mask::<T>(y == m), mask::<T>(y == c));
            let gm = (mm * g) / (mc * one + one);
            let gc = (mc * g) / (mm * one + one);
            let (ma, mb) = (mask::<T>(m == a), mask::<T>(m == b));
            gx[ia] += (ma * gm) / (mb * one + one);
            gx[ib] += (mb * gm) / (ma * one + one);
            gx[ic] += gc;
        }
    }
}

/// Geometry of one call: `planes` planes of `h x w`, output `ho x wo`.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn of(dims: &[usize]) -> candle_core::Result<Self> {
        let r = dims.len();
        if r < 2 || dims[r - 1] < 3 || dims[r - 2] < 3 {
            candle_core::bail!("3x3/2 max-pooling needs at least 3 samples along each axis, got {dims:?}");
        }
        let (h, w) = (dims[r - 2], dims[r - 1]);
        Ok(Geometry { planes: dims[..r - 2].iter().product(), h, w, ho: (h - 1) / 2, wo: (w - 1) / 2 })
    }

    fn out_dims(&self, dims: &[usize]) -> Vec<usize> {
        let mut d = dims.to_vec();
        let r = d.len();
        d[r - 2] = self.ho;
        d[r - 1] = self.wo;
        d
    }
}

impl Geometry {
    /// Along W inside a plane: `[h, w] -> [h, wo]`.
    fn along_w(&self) -> Axis {
        Axis { m: self.wo, lines: self.h, line_in: self.w, line_out: self.wo, stride: 1 }
    }
    /// Then along H: `[h, wo] -> [ho, wo]`.
    fn along_h(&self) -> Axis {
        Axis { m: self.ho, lines: self.wo, line_in: 1, line_out: 1, stride: self.wo }
    }
}

/// Along W, then along H, plane by plane.
fn fwd_cpu<T: Real>(g: Geometry, x: &[T]) -> Vec<T> {
    let (h, w, ho, wo) = (g.h, g.w, g.ho, g.wo);
    let mut y = vec![T::zero(); g.planes * ho * wo];
    y.par_chunks_mut(ho * wo).enumerate().for_each(|(p, yp)| {
        let mut t = vec![T::zero(); h * wo];
        pool_lines(&x[p * h * w..(p + 1) * h * w], &mut t, g.along_w());
        pool_lines(&t, yp, g.along_h());
    });
    y
}

/// The gradient of [`fwd_cpu`] (the intermediate W-pooled plane is recomputed).
fn bwd_cpu<T: Real>(g: Geometry, x: &[T], gy: &[T]) -> Vec<T> {
    let (h, w, ho, wo) = (g.h, g.w, g.ho, g.wo);
    let mut gx = vec![T::zero(); g.planes * h * w];
    gx.par_chunks_mut(h * w).enumerate().for_each(|(p, gxp)| {
        let xp = &x[p * h * w..(p + 1) * h * w];
        let mut t = vec![T::zero(); h * wo];
        pool_lines(xp, &mut t, g.along_w());
        let mut gt = vec![T::zero(); h * wo];
        pool_lines_bwd(&t, &gy[p * ho * wo..(p + 1) * ho * wo], &mut gt, g.along_h());
        pool_lines_bwd(xp, &gt, gxp, g.along_w());
    });
    gx
}

struct MaxPool3x3s2;

impl CustomOp1 for MaxPool3x3s2 {
    fn name(&self) -> &'static str {
        "fml-max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let g = Geometry::of(dims)?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(fwd_cpu(g, cpu_slice::<f32>(s, l, "max pool")?)),
            CpuStorage::F64(_) => CpuStorage::F64(fwd_cpu(g, cpu_slice::<f64>(s, l, "max pool")?)),
            _ => candle_core::bail!("max pool: expected f32 or f64"),
        };
        Ok((out, Shape::from(g.out_dims(dims))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = Geometry::of(arg.dims())?;
        let grad = grad.contiguous()?;
        let shape = arg.shape().clone();
        let out = match arg.dtype() {
            DType::F32 => with_cpu::<f32, _>(arg, "max pool", |x| {
                with_cpu::<f32, _>(&grad, "max pool", |gy| cpu_tensor(bwd_cpu(g, x, gy), shape.clone()))
            })?,
            _ => with_cpu::<f64, _>(arg, "max pool", |x| {
                with_cpu::<f64, _>(&grad, "max pool", |gy| cpu_tensor(bwd_cpu(g, x, gy), shape.clone()))
            })?,
        };
        Ok(Some(out))
    }
}

/// 3x3/2 max-pooling of a CPU tensor as one op.
///
/// # Shapes
/// `[.., H, W]` -> `[.., (H - 1) / 2, (W - 1) / 2]`.
pub fn max_pool_3x3_s2_cpu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool3x3s2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values with many ties (ReLU zeros and repeated levels), like real activations.
    fn tied(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| ((r.normal() * 3.0).round() as f32 * 0.5).max(0.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn bit_identical_to_the_tensor_formulation_with_ties() {
        for (h, w) in [(3, 3), (7, 8), (8, 7), (13, 13), (15, 31)] {
            let x = Var::from_tensor(&tied(&[3, 2, h, w], h as u64 * 100 + w as u64)).unwrap();
            let gy = tied(&[3, 2, (h - 1) / 2, (w - 1) / 2], 7).affine(1.0, -0.7).unwrap();
            let ours = max_pool_3x3_s2_cpu(x.as_tensor()).unwrap();
            let theirs = super::super::max_pool_3x3_s2_tensor_ops(x.as_tensor()).unwrap();
            assert_eq!(bits(&ours), bits(&theirs), "forward {h}x{w}");
            let g1 = (&ours * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
            // Compared as values: the tensor path adds zeros (turning -0 into +0).
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(a, b, "backward {h}x{w}");
            assert!(a.iter().any(|&v| v != 0.0));
        }
        // A constant 3x3 plane: every maximum is a tie. Along each axis the unit gradient splits
        // (1/4, 1/4, 1/2) (halved at max(a, b), then again at max(m, c)), so the plane gets the
        // outer product of that split with itself.
        let x = Var::from_tensor(&Tensor::ones((1, 3, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let g = max_pool_3x3_s2_cpu(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let split = [0.25f32, 0.25, 0.5];
        let expect: Vec<f32> = split.iter().flat_map(|a| split.iter().map(move |b| a * b)).collect();
        assert_eq!(gx, expect);
        assert!(max_pool_3x3_s2_cpu(&Tensor::zeros((1, 2, 5), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
