//! The reference image formation, built only from candle tensor ops so that autograd supplies
//! its gradients. It is the oracle the fast custom ops are tested against (and works in f64 for
//! finite-difference checks); training uses the fast path.

use crate::render::camera::Intrinsics;
use crate::render::sh::{C0, C1, C2, C3, C4};
use candle_core::{D, DType, Tensor};

pub use crate::face_model::topology::{TopologyTensors, vertex_normals_tensor as normals};

/// SH basis values of unit normals.
///
/// # Shapes
/// `normals`: `[B, N, 3]` -> `[B, N, 9]`.
pub fn sh_basis(normals: &Tensor) -> candle_core::Result<Tensor> {
    let x = normals.narrow(D::Minus1, 0, 1)?; // [B, N, 1]
    let y = normals.narrow(D::Minus1, 1, 1)?; // [B, N, 1]
    let z = normals.narrow(D::Minus1, 2, 1)?; // [B, N, 1]
    let c = |t: Tensor, k: f32| t.affine(k as f64, 0.0);
    // Nine [B, N, 1] columns in the SH order of docs/conventions.md -> [B, N, 9].
    Tensor::cat(
        &[
            (x.ones_like()? * C0 as f64)?,
            c(y.clone(), C1)?,
            c(z.clone(), C1)?,
            c(x.clone(), C1)?,
            c((&x * &y)?, C2)?,
            c((&y * &z)?, C2)?,
            (z.sqr()?.affine(3.0, -1.0)? * C3 as f64)?,
            c((&x * &z)?, C2)?,
            c((x.sqr()? - y.sqr()?)?, C4)?,
        ],
        D::Minus1,
    )
}

/// Shaded colours (eq. 5).
///
/// # Shapes
/// `normals`, `reflectance`: `[B, N, 3]`; `gamma`: `[B, 27]` (channel-major) -> `[B, N, 3]`.
pub fn shade(normals: &Tensor, reflectance: &Tensor, gamma: &Tensor) -> candle_core::Result<Tensor> {
    let b = gamma.dim(0)?;
    let h = sh_basis(normals)?; // [B, N, 9]
    let g = gamma.reshape((b, 3, 9))?.transpose(1, 2)?.contiguous()?; // [B, 9, 3]
    let irradiance = h.matmul(&g)?; // [B, N, 3]
    reflectance * irradiance // [B, N, 3]
}

/// Pixel positions of camera-space points (full perspective, docs/conventions.md). Depths are
/// clamped at the near plane so points behind the camera stay finite (they are invisible).
///
/// # Shapes
/// `points`: `[B, K, 3]` -> `[B, K, 2]`.
pub fn project(points: &Tensor, k: &Intrinsics) -> candle_core::Result<Tensor> {
    let [cx, cy] = k.centre();
    let x = points.narrow(D::Minus1, 0, 1)?; // [B, K, 1]
    let y = points.narrow(D::Minus1, 1, 1)?; // [B, K, 1]
    let d = points.narrow(D::Minus1, 2, 1)?.neg()?.maximum(k.near as f64)?; // [B, K, 1] depth
    let u = (x / &d)?.affine(k.focal as f64, cx as f64)?; // [B, K, 1]
    let v = (y / &d)?.affine(-k.focal as f64, cy as f64)?; // [B, K, 1]
    Tensor::cat(&[u, v], D::Minus1) // [B, K, 2]
}

/// Mask of points whose bilinear footprint lies inside the image and in front of the near plane.
/// Written as "not outside" so that NaN positions count as sampleable: a NaN then reaches the
/// photometric loss instead of being masked into a silent zero.
///
/// # Shapes
/// `points`: `[B, N, 3]` -> `[B, N]` (same dtype, 0/1).
pub fn sampleable(points: &Tensor, k: &Intrinsics) -> candle_core::Result<Tensor> {
    let points = points.detach();
    let uv = project(&points, k)?; // [B, N, 2]
    let u = uv.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?; // [B, N]
    let v = uv.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?; // [B, N]
    let d = points.narrow(D::Minus1, 2, 1)?.squeeze(D::Minus1)?.neg()?; // [B, N]
    let dt = points.dtype();
    // Count of violated bounds per point: [B, N].
    let outside = (d.le(k.near as f64)?.to_dtype(dt)?
        + u.lt(0.5)?.to_dtype(dt)?
        + u.gt(k.width as f64 - 0.5)?.to_dtype(dt)?
        + v.lt(0.5)?.to_dtype(dt)?
        + v.gt(k.height as f64 - 0.5)?.to_dtype(dt)?)?;
    outside.eq(0.0)?.to_dtype(dt) // [B, N]
}

/// Bilinear sample of `image` at the projections of `points`; zero where not sampleable.
///
/// # Shapes
/// `points`: `[B, N, 3]`; `image`: `[B, H, W, 3]` -> `[B, N, 3]`.
pub fn sample(points: &Tensor, image: &Tensor, k: &Intrinsics) -> candle_core::Result<Tensor> {
    let (b, n, _) = points.dims3()?;
    let (w, h) = (k.width, k.height);
    let dt = points.dtype();
    let valid = sampleable(points, k)?; // [B, N]
    let uv = project(points, k)?; // [B, N, 2]
    let xi = uv.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?.affine(1.0, -0.5)?; // [B, N]
    let yi = uv.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?.affine(1.0, -0.5)?; // [B, N]
    // Integer cell (no gradient), clamped like the fast path: the last row/column uses the
    // previous cell with weight 1 on its far side.
    let x0 = xi.detach().floor()?.clamp(0.0, w as f64 - 2.0)?; // [B, N]
    let y0 = yi.detach().floor()?.clamp(0.0, h as f64 - 2.0)?; // [B, N]
    let wx = (&xi - &x0)?; // [B, N]
    let wy = (&yi - &y0)?; // [B, N]
    let flat = image.to_dtype(dt)?.reshape((b, h * w, 3))?; // [B, H, W, 3] -> [B, H W, 3]
    let idx = |dx: f64, dy: f64| -> candle_core::Result<Tensor> {
        let lin = ((&y0 + dy)? * w as f64)?.add(&(&x0 + dx)?)?; // [B, N]
        let lin = lin.to_dtype(DType::U32)?.unsqueeze(2)?.broadcast_as((b, n, 3))?.contiguous()?; // [B, N, 3]
        flat.gather(&lin, 1) // [B, N, 3]
    };
    let (i00, i10, i01, i11) = (idx(0.0, 0.0)?, idx(1.0, 0.0)?, idx(0.0, 1.0)?, idx(1.0, 1.0)?);
    let wx = wx.unsqueeze(2)?; // [B, N, 1]
    let wy = wy.unsqueeze(2)?; // [B, N, 1]
    let one_x = wx.affine(-1.0, 1.0)?; // [B, N, 1]
    let one_y = wy.affine(-1.0, 1.0)?; // [B, N, 1]
    let top = (i00.broadcast_mul(&one_x)? + i10.broadcast_mul(&wx)?)?; // [B, N, 3]
    let bottom = (i01.broadcast_mul(&one_x)? + i11.broadcast_mul(&wx)?)?; // [B, N, 3]
    let c = (top.broadcast_mul(&one_y)? + bottom.broadcast_mul(&wy)?)?; // [B, N, 3]
    c.broadcast_mul(&valid.unsqueeze(2)?) // [B, N, 3] * [B, N, 1] -> [B, N, 3]
}

/// Photometric l2,1 error per image (eq. 9).
///
/// # Shapes
/// `sampled`, `shaded`: `[B, N, 3]`; `mask`: `[B, N]` -> `[B]`.
pub fn photometric_l21(sampled: &Tensor, shaded: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.detach().to_dtype(sampled.dtype())?; // [B, N]
    // Smoothed per-vertex colour distance: [B, N, 3] -> [B, N].
    let norm = ((sampled - shaded)?.sqr()?.sum(D::Minus1)? + crate::render::ops::photo::PHOTO_EPS as f64)?.sqrt()?;
    let count = mask.sum(D::Minus1)?; // [B]
    // Images with no visible vertex contribute 0 (count clamped to 1 to avoid 0/0).
    (norm * &mask)?.sum(D::Minus1)? / count.maximum(1.0)? // [B, N] -> [B]
}
