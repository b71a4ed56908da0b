//! The full perspective camera of Sec. 5: rigid transform `v_cam = R v + t` with Euler-angle
//! rotation, and pinhole projection with the intrinsics of the face crop (docs/conventions.md).

use serde::{Deserialize, Serialize};

/// Pinhole intrinsics of the (square or rectangular) crop.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intrinsics {
    /// Focal length, pixels.
    pub focal: f32,
    /// Image size, pixels.
    pub width: usize,
    pub height: usize,
    /// Near plane distance (mm): points closer to the camera are invisible.
    pub near: f32,
}

impl Intrinsics {
    /// Principal point (the image centre).
    pub fn centre(&self) -> [f32; 2] {
        [self.width as f32 * 0.5, self.height as f32 * 0.5]
    }

    /// Project a camera-space point; None when it is not in front of the near plane or its
    /// projection is not finite (a NaN or infinite coordinate).
    #[inline]
    pub fn project(&self, p: [f32; 3]) -> Option<[f32; 2]> {
        let d = -p[2];
        if !(d > self.near) {
            return None;
        }
        let [cx, cy] = self.centre();
        let uv = [cx + self.focal * p[0] / d, cy - self.focal * p[1] / d];
        uv.iter().all(|x| x.is_finite()).then_some(uv)
    }

    /// The camera distance at which an object `extent` mm wide spans `fill` of the image width.
    pub fn distance_for(&self, extent: f32, fill: f32) -> f32 {
        self.focal * extent / (fill * self.width as f32)
    }

    /// Camera-space ray direction through pixel position `uv` (not normalised; z = -1).
    pub fn ray(&self, uv: [f32; 2]) -> [f32; 3] {
        let [cx, cy] = self.centre();
        [(uv[0] - cx) / self.focal, -(uv[1] - cy) / self.focal, -1.0]
    }
}

/// Rotation matrix (row-major) from Euler angles `(pitch, yaw, roll)`:
/// `R = Rz(roll) * Ry(yaw) * Rx(pitch)`.
pub fn euler_to_matrix(angles: [f32; 3]) -> [[f32; 3]; 3] {
    let [p, y, r] = angles;
    let (sp, cp) = p.sin_cos();
    let (sy, cy) = y.sin_cos();
    let (sr, cr) = r.sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rz = [[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]];
    matmul3(&rz, &matmul3(&ry, &rx))
}

/// 3x3 matrix product.
pub fn matmul3(a: &[[f32; 3]; 3], b: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let mut c = [[0.0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

/// `R v + t`.
#[inline]
pub fn transform(r: &[[f32; 3]; 3], t: [f32; 3], v: [f32; 3]) -> [f32; 3] {
    [
        r[0][0] * v[0] + r[0][1] * v[1] + r[0][2] * v[2] + t[0],
        r[1][0] * v[0] + r[1][1] * v[1] + r[1][2] * v[2] + t[1],
        r[2][0] * v[0] + r[2][1] * v[1] + r[2][2] * v[2] + t[2],
    ]
}

/// `R v` (for normals).
#[inline]
pub fn rotate(r: &[[f32; 3]; 3], v: [f32; 3]) -> [f32; 3] {
    transform(r, [0.0; 3], v)
}

/// Differentiable rotation matrices from Euler angles `(pitch, yaw, roll)`,
/// `R = Rz(roll) * Ry(yaw) * Rx(pitch)` as in [`euler_to_matrix`].
///
/// # Shapes
/// `angles`: `[B, 3]` -> `[B, 3, 3]`.
pub fn euler_to_matrix_tensor(angles: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::Tensor;
    let b = angles.dim(0)?;
    let a = |k: usize| angles.narrow(1, k, 1); // [B, 1]
    let (p, y, r) = (a(0)?, a(1)?, a(2)?);
    let (sp, cp, sy, cy, sr, cr) = (p.sin()?, p.cos()?, y.sin()?, y.cos()?, r.sin()?, r.cos()?);
    let sy_sp = (&sy * &sp)?;
    let sy_cp = (&sy * &cp)?;
    let entries = [
        (&cr * &cy)?,
        ((&cr * &sy_sp)? - (&sr * &cp)?)?,
        ((&cr * &sy_cp)? + (&sr * &sp)?)?,
        (&sr * &cy)?,
        ((&sr * &sy_sp)? + (&cr * &cp)?)?,
        ((&sr * &sy_cp)? - (&cr * &sp)?)?,
        sy.neg()?,
        (&cy * &sp)?,
        (&cy * &cp)?,
    ];
    Tensor::cat(&entries, 1)?.reshape((b, 3, 3))
}

/// Rigid transform of a batch of point sets: `v_cam = R v + t`.
///
/// # Shapes
/// `points`: `[B, N, 3]`, `rotation`: `[B, 3, 3]`, `translation`: `[B, 3]` -> `[B, N, 3]`.
pub fn rigid_transform(
    points: &candle_core::Tensor,
    rotation: &candle_core::Tensor,
    translation: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    points.matmul(&rotation.t()?)?.broadcast_add(&translation.unsqueeze(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaw_turns_the_face_toward_its_left() {
        // Positive yaw rotates +z (the face's forward direction) toward +x.
        let r = euler_to_matrix([0.0, 0.3, 0.0]);
        let f = rotate(&r, [0.0, 0.0, 1.0]);
        assert!(f[0] > 0.0 && (f[0] - 0.3f32.sin()).abs() < 1e-6);
        // Orthonormal.
        let rt = [[r[0][0], r[1][0], r[2][0]], [r[0][1], r[1][1], r[2][1]], [r[0][2], r[1][2], r[2][2]]];
        let i = matmul3(&r, &rt);
        for a in 0..3 {
            for b in 0..3 {
                assert!((i[a][b] - if a == b { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn projection_and_ray_are_inverse() {
        let k = Intrinsics { focal: 800.0, width: 240, height: 240, near: 1.0 };
        let p = [12.0, -7.0, -600.0];
        let uv = k.project(p).unwrap();
        let d = k.ray(uv);
        let s = -p[2];
        for a in 0..3 {
            assert!((d[a] * s - p[a]).abs() < 1e-3);
        }
        assert!(k.project([0.0, 0.0, 5.0]).is_none());
        // Up in the camera is up (smaller v) in the image.
        assert!(k.project([0.0, 10.0, -500.0]).unwrap()[1] < 120.0);
    }
}
