//! The sparse landmark term (eq. 10) with fixed and sliding feature points (Sec. 6.1, Fig. 2).
//!
//! Fixed points use their model vertex. Each sliding contour point (iBUG 0..7 and 9..16)
//! re-picks, every step, the candidate vertex closest to the camera ray through its detected 2D
//! position, on the base level with the current pose (an alternation: the choice itself is not
//! differentiated).

use crate::error::Result;
use crate::face_model::FaceModel;
use crate::render::camera::Intrinsics;
use crate::render::reference::project;
use candle_core::{D, DType, Device, Tensor};

/// iBUG indices of the sliding points on the subject's right and left jaw.
pub const SLIDING_RIGHT: std::ops::Range<usize> = 0..8;
pub const SLIDING_LEFT: std::ops::Range<usize> = 9..17;

/// Landmark vertex tables on a device.
#[derive(Clone, Debug)]
pub struct SparseLandmarks {
    /// `[68]` u32 fixed vertex of every landmark.
    fixed: Tensor,
    /// Candidate vertices `[K_r]`, `[K_l]` (u32).
    cand_right: Tensor,
    cand_left: Tensor,
    /// Re-pick sliding points (false: every landmark uses its fixed vertex).
    pub sliding: bool,
}

impl SparseLandmarks {
    pub fn new(model: &FaceModel, sliding: bool, device: &Device) -> Result<Self> {
        Ok(SparseLandmarks {
            fixed: Tensor::from_slice(&model.landmarks, 68, device)?,
            cand_right: Tensor::from_slice(&model.contour_right, model.contour_right.len(), device)?,
            cand_left: Tensor::from_slice(&model.contour_left, model.contour_left.len(), device)?,
            sliding,
        })
    }

    /// For each sliding point, the candidate closest to its camera ray.
    ///
    /// # Shapes
    /// `camera [B, N, 3]`, `targets [B, 68, 2]` -> `[B, len(range)]` u32 vertex indices.
    fn pick(
        &self,
        camera: &Tensor,
        targets: &Tensor,
        range: std::ops::Range<usize>,
        cand: &Tensor,
        k: &Intrinsics,
    ) -> Result<Tensor> {
        let b = camera.dim(0)?;
        let m = range.len();
        let [cx, cy] = k.centre();
        let t = targets.narrow(1, range.start, m)?; // [B, m, 2]
        // Camera ray through each target pixel (inverse of `project`, depth -1).
        let dx = t.narrow(D::Minus1, 0, 1)?.affine(1.0 / k.focal as f64, -(cx as f64) / k.focal as f64)?; // [B, m, 1]
        let dy = t.narrow(D::Minus1, 1, 1)?.affine(-1.0 / k.focal as f64, cy as f64 / k.focal as f64)?; // [B, m, 1]
        let dz = dx.ones_like()?.neg()?; // [B, m, 1]
        let dir = Tensor::cat(&[dx, dy, dz], D::Minus1)?; // [B, m, 3]
        let dir = dir.broadcast_div(&dir.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?; // [B, m, 3] unit
        let p = camera.detach().index_select(cand, 1)?; // [B, K, 3]
        let kc = p.dim(1)?;
        // Squared distance of p to the ray through the origin: |p x d|^2 (the cross product keeps
        // precision at ~1 m depth, where |p|^2 - (p . d)^2 cancels catastrophically in f32).
        let pe = p.unsqueeze(2)?.broadcast_as((b, kc, m, 3))?.contiguous()?; // [B, K, m, 3]
        let de = dir.unsqueeze(1)?.broadcast_as((b, kc, m, 3))?.contiguous()?; // [B, K, m, 3]
        let dist = crate::face_model::topology::cross_tensor(&pe, &de)?.sqr()?.sum(D::Minus1)?; // [B, K, m]
        let best = dist.argmin(1)?; // [B, m] indices into cand
        Ok(cand.index_select(&best.flatten_all()?, 0)?.reshape((b, m))?) // [B m] -> [B, m] vertex ids
    }

    /// Landmark vertex of every point of every image.
    ///
    /// # Shapes
    /// `camera [B, N, 3]` (base level, camera space), `targets [B, 68, 2]` -> `[B, 68]` u32.
    pub fn vertex_indices(&self, camera: &Tensor, targets: &Tensor, k: &Intrinsics) -> Result<Tensor> {
        let b = camera.dim(0)?;
        let fixed = self.fixed.unsqueeze(0)?.broadcast_as((b, 68))?.contiguous()?; // [68] -> [B, 68]
        if !self.sliding {
            return Ok(fixed);
        }
        let right = self.pick(camera, targets, SLIDING_RIGHT, &self.cand_right, k)?; // [B, 8]
        let left = self.pick(camera, targets, SLIDING_LEFT, &self.cand_left, k)?; // [B, 8]
        // Jaw 0-7 (sliding), chin 8 (fixed), jaw 9-16 (sliding), 17-67 (fixed): [B, 8 + 1 + 8 + 51] = [B, 68].
        Ok(Tensor::cat(&[right, fixed.narrow(1, 8, 1)?, left, fixed.narrow(1, 17, 51)?], 1)?)
    }

    /// Projected landmark positions.
    ///
    /// # Shapes
    /// `camera [B, N, 3]`, `indices [B, 68]` -> `[B, 68, 2]`.
    pub fn project(&self, camera: &Tensor, indices: &Tensor, k: &Intrinsics) -> Result<Tensor> {
        let (b, n) = indices.dims2()?;
        let idx = indices.unsqueeze(2)?.broadcast_as((b, n, 3))?.contiguous()?; // [B, 68, 3]
        Ok(project(&camera.gather(&idx, 1)?, k)?) // [B, N, 3] -> [B, 68, 3] -> [B, 68, 2]
    }

    /// E_sparse (eq. 10) per image: `sum_f c_f ||f - u_f||^2 / |F|`, |F| the number of points
    /// with non-zero confidence; and the mean pixel distance per image (for logs).
    ///
    /// # Shapes
    /// `camera [B, N, 3]`, `targets [B, 68, 2]`, `confidence [B, 68]` -> (`[B]`, `[B]`).
    pub fn loss(
        &self,
        camera: &Tensor,
        targets: &Tensor,
        confidence: &Tensor,
        k: &Intrinsics,
    ) -> Result<(Tensor, Tensor)> {
        let idx = self.vertex_indices(camera, targets, k)?; // [B, 68] u32
        self.loss_at(camera, &idx, targets, confidence, k)
    }

    /// [`loss`](Self::loss) at given landmark vertices, e.g. the base level's picks (sliding
    /// contour points included) evaluated on the final level.
    ///
    /// # Shapes
    /// `camera [B, N, 3]`, `indices [B, 68]`, `targets [B, 68, 2]`, `confidence [B, 68]` ->
    /// (`[B]`, `[B]`).
    pub fn loss_at(
        &self,
        camera: &Tensor,
        idx: &Tensor,
        targets: &Tensor,
        confidence: &Tensor,
        k: &Intrinsics,
    ) -> Result<(Tensor, Tensor)> {
        let uv = self.project(camera, idx, k)?; // [B, 68, 2]
        let d2 = (uv - targets)?.sqr()?.sum(D::Minus1)?; // [B, 68]
        let present = confidence.gt(0.0)?.to_dtype(DType::F32)?; // [B, 68]
        let count = present.sum(D::Minus1)?.maximum(1.0)?; // [B]: points with confidence > 0
        let loss = (&d2 * confidence)?.sum(D::Minus1)?.div(&count)?; // [B]
        let px = (d2.detach().sqrt()? * &present)?.sum(D::Minus1)?.div(&count)?; // [B]
        Ok((loss, px))
    }
}
