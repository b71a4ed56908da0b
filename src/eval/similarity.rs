//! Similarity transforms (rotation, isotropic scale, translation) and their least-squares
//! estimation from point correspondences (Umeyama 1991).

use super::linalg::{self, IDENTITY, Mat3, Vec3};
use crate::error::{Error, Result};
use crate::io::mesh::Mesh;
use serde::{Deserialize, Serialize};

/// `p -> scale * rotation * p + translation`, with `rotation` a proper rotation (det = +1),
/// row-major, and `scale > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Similarity {
    pub scale: f64,
    pub rotation: Mat3,
    pub translation: Vec3,
}

impl Default for Similarity {
    fn default() -> Self {
        Self::identity()
    }
}

impl Similarity {
    /// The identity transform.
    pub fn identity() -> Self {
        Similarity { scale: 1.0, rotation: IDENTITY, translation: [0.0; 3] }
    }

    /// Apply to a point.
    pub fn apply(&self, p: Vec3) -> Vec3 {
        linalg::add(linalg::scale(linalg::mat_vec(&self.rotation, p), self.scale), self.translation)
    }

    /// Apply to an `f32` point (computed in `f64`).
    pub fn apply_f32(&self, p: [f32; 3]) -> [f32; 3] {
        self.apply(linalg::to_f64(p)).map(|x| x as f32)
    }

    /// The mesh with every vertex transformed; triangles and colours are kept.
    pub fn apply_mesh(&self, mesh: &Mesh) -> Mesh {
        Mesh {
            vertices: mesh.vertices.iter().map(|&v| self.apply_f32(v)).collect(),
            triangles: mesh.triangles.clone(),
            colors: mesh.colors.clone(),
        }
    }

    /// `self ∘ inner`: apply `inner` first, then `self`.
    pub fn compose(&self, inner: &Similarity) -> Similarity {
        Similarity {
            scale: self.scale * inner.scale,
            rotation: linalg::mat_mul(&self.rotation, &inner.rotation),
            translation: self.apply(inner.translation),
        }
    }

    /// The inverse transform (requires `scale > 0`, which [`Similarity::validate`] checks).
    pub fn inverse(&self) -> Similarity {
        let rt = linalg::transpose(&self.rotation);
        let inv_s = 1.0 / self.scale;
        Similarity {
            scale: inv_s,
            rotation: rt,
            translation: linalg::scale(linalg::mat_vec(&rt, self.translation), -inv_s),
        }
    }

    /// The angle of the rotation, radians in [0, pi].
    pub fn rotation_angle(&self) -> f64 {
        let r = &self.rotation;
        ((r[0][0] + r[1][1] + r[2][2] - 1.0) * 0.5).clamp(-1.0, 1.0).acos()
    }

    /// The homogeneous 4x4 matrix, row-major: `[sR t; 0 0 0 1]`.
    pub fn matrix4(&self) -> [[f64; 4]; 4] {
        let mut m = [[0.0; 4]; 4];
        for (i, row) in m.iter_mut().take(3).enumerate() {
            for (j, x) in row.iter_mut().take(3).enumerate() {
                *x = self.scale * self.rotation[i][j];
            }
            row[3] = self.translation[i];
        }
        m[3][3] = 1.0;
        m
    }

    /// Replace the rotation by the nearest proper rotation, removing round-off drift that
    /// accumulates over many compositions.
    pub fn reorthonormalize(&mut self) {
        self.rotation = linalg::nearest_rotation(&self.rotation);
    }

    /// Check that the values are finite, `scale > 0` and `rotation` is a proper rotation
    /// (orthonormal to 1e-6, det = +1); `what` names the transform in the error.
    pub fn validate(&self, what: &str) -> Result<()> {
        let finite = self.scale.is_finite()
            && self.rotation.iter().flatten().all(|x| x.is_finite())
            && self.translation.iter().all(|x| x.is_finite());
        if !finite {
            return Err(Error::invalid(format!("{what}: similarity transform has non-finite values")));
        }
        if self.scale <= 0.0 {
            return Err(Error::invalid(format!("{what}: similarity scale {} is not positive", self.scale)));
        }
        let rtr = linalg::mat_mul(&linalg::transpose(&self.rotation), &self.rotation);
        let off = (0..3)
            .flat_map(|i| (0..3).map(move |j| (i, j)))
            .fold(0.0f64, |m, (i, j)| m.max((rtr[i][j] - if i == j { 1.0 } else { 0.0 }).abs()));
        if off > 1e-6 || linalg::det(&self.rotation) <= 0.0 {
            return Err(Error::invalid(format!(
                "{what}: rotation is not a proper rotation (|R^T R - I| = {off:.2e}, det = {:.6})",
                linalg::det(&self.rotation)
            )));
        }
        Ok(())
    }
}

/// Least-squares similarity (or rigid motion when `with_scale` is false) taking `src` onto `dst`:
/// minimises `sum_i w_i |dst_i - (s R src_i + t)|^2` (Umeyama, "Least-squares estimation of
/// transformation parameters between two point patterns", PAMI 1991).
///
/// # Shapes
/// `src`, `dst`: `[N, 3]` corresponding points; `weights`: `[N]`, non-negative (default all 1).
///
/// A reflection is never returned: when the best orthogonal map would have det = -1 (mirrored
/// point sets, or noise on nearly planar sets), the rotation flips the axis of the smallest
/// singular value, which is Umeyama's optimal proper rotation.
///
/// # Errors
/// Mismatched lengths, non-finite values, negative weights, fewer than 3 points with positive
/// weight, or points that are (numerically) collinear or coincident, for which the rotation is
/// not determined.
pub fn umeyama(src: &[Vec3], dst: &[Vec3], weights: Option<&[f64]>, with_scale: bool) -> Result<Similarity> {
    if src.len() != dst.len() {
        return Err(Error::invalid(format!("umeyama: {} source points but {} target points", src.len(), dst.len())));
    }
    if let Some(w) = weights {
        if w.len() != src.len() {
            return Err(Error::invalid(format!("umeyama: {} weights for {} points", w.len(), src.len())));
        }
        if let Some(i) = w.iter().position(|x| !x.is_finite() || *x < 0.0) {
            return Err(Error::invalid(format!("umeyama: weight {i} is {} (must be finite and >= 0)", w[i])));
        }
    }
    if let Some(i) = (0..src.len()).find(|&i| src[i].iter().chain(&dst[i]).any(|x| !x.is_finite())) {
        return Err(Error::invalid(format!("umeyama: point pair {i} is not finite")));
    }
    let w = |i: usize| weights.map_or(1.0, |w| w[i]);
    let used = (0..src.len()).filter(|&i| w(i) > 0.0).count();
    if used < 3 {
        return Err(Error::invalid(format!("umeyama: {used} point pairs with positive weight; at least 3 are needed")));
    }

    let total: f64 = (0..src.len()).map(w).sum();
    let mut mu_s = [0.0; 3];
    let mut mu_d = [0.0; 3];
    for i in 0..src.len() {
        mu_s = linalg::add(mu_s, linalg::scale(src[i], w(i)));
        mu_d = linalg::add(mu_d, linalg::scale(dst[i], w(i)));
    }
    mu_s = linalg::scale(mu_s, 1.0 / total);
    mu_d = linalg::scale(mu_d, 1.0 / total);

    // Cross-covariance Sigma = (1/W) sum_i w_i (d_i - mu_d)(s_i - mu_s)^T and the source variance.
    let mut sigma = [[0.0; 3]; 3]; // [3, 3]
    let mut var_s = 0.0;
    for i in 0..src.len() {
        let wi = w(i);
        if wi == 0.0 {
            continue;
        }
        let a = linalg::sub(src[i], mu_s);
        let b = linalg::sub(dst[i], mu_d);
        var_s += wi * linalg::norm_sq(a);
        for (r, row) in sigma.iter_mut().enumerate() {
            for (c, x) in row.iter_mut().enumerate() {
                *x += wi * b[r] * a[c];
            }
        }
    }
    var_s /= total;
    for x in sigma.iter_mut().flatten() {
        *x /= total;
    }

    let svd = linalg::svd3(&sigma);
    // Rank < 2 leaves the rotation about the points' common line (or everything) undetermined.
    // The threshold is relative (scale-free); singular values scale like squared lengths, so
    // 1e-10 corresponds to a point set 1e5 times longer than it is wide.
    if !(svd.s[0] > 0.0) || svd.s[1] <= 1e-10 * svd.s[0] || !(var_s > 0.0) {
        return Err(Error::invalid(format!(
            "umeyama: the {used} points are collinear or coincident (singular values {:.3e}, {:.3e}, {:.3e}); \
             the rotation is not determined",
            svd.s[0], svd.s[1], svd.s[2]
        )));
    }
    let flip = linalg::det(&svd.u) * linalg::det(&svd.v) < 0.0;
    let d = [1.0, 1.0, if flip { -1.0 } else { 1.0 }];
    // R = U D V^T
    let mut ud = svd.u;
    for row in ud.iter_mut() {
        for (j, x) in row.iter_mut().enumerate() {
            *x *= d[j];
        }
    }
    let rotation = linalg::mat_mul(&ud, &linalg::transpose(&svd.v));
    let scale = if with_scale { (svd.s[0] * d[0] + svd.s[1] * d[1] + svd.s[2] * d[2]) / var_s } else { 1.0 };
    if !(scale > 0.0) || !scale.is_finite() {
        return Err(Error::invalid(format!("umeyama: estimated scale {scale} is not positive")));
    }
    let translation = linalg::sub(mu_d, linalg::scale(linalg::mat_vec(&rotation, mu_s), scale));
    Ok(Similarity { scale, rotation, translation })
}

/// Mean distance (same units as the input) between the corresponding vertices `region` of
/// `pred` and `gt`, two meshes of one topology, after the least-squares similarity alignment of
/// `pred` onto `gt` over those vertices. Unlike point-to-surface distances it also counts sliding
/// along the surface (expression, feature positions).
pub fn aligned_vertex_error(pred: &[[f32; 3]], gt: &[[f32; 3]], region: &[u32]) -> Result<f64> {
    if pred.len() != gt.len() {
        return Err(Error::invalid(format!(
            "vertex error: {} predicted vertices vs {} ground-truth vertices",
            pred.len(),
            gt.len()
        )));
    }
    if let Some(&i) = region.iter().find(|&&i| i as usize >= gt.len()) {
        return Err(Error::invalid(format!("vertex error: region vertex {i} out of range for {} vertices", gt.len())));
    }
    let pick = |m: &[[f32; 3]]| -> Vec<Vec3> { region.iter().map(|&i| m[i as usize].map(f64::from)).collect() };
    let (p, g) = (pick(pred), pick(gt));
    let sim = umeyama(&p, &g, None, true)?;
    let sum: f64 = p.iter().zip(&g).map(|(a, b)| linalg::norm(linalg::sub(sim.apply(*a), *b))).sum();
    Ok(sum / p.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_points(rng: &mut Rng, n: usize, spread: f64) -> Vec<Vec3> {
        (0..n).map(|_| [rng.normal() * spread, rng.normal() * spread, rng.normal() * spread]).collect()
    }

    fn random_similarity(rng: &mut Rng, scale: f64) -> Similarity {
        let axis = [rng.normal(), rng.normal(), rng.normal()];
        let angle = rng.range(0.2, 3.0);
        Similarity {
            scale,
            rotation: linalg::axis_angle(axis, angle),
            translation: [rng.range(-50.0, 50.0), rng.range(-50.0, 50.0), rng.range(-50.0, 50.0)],
        }
    }

    fn assert_close(a: &Similarity, b: &Similarity, tol: f64) {
        assert!((a.scale - b.scale).abs() < tol, "scale {} vs {}", a.scale, b.scale);
        for i in 0..3 {
            assert!((a.translation[i] - b.translation[i]).abs() < tol * 100.0, "{a:?} vs {b:?}");
            for j in 0..3 {
                assert!((a.rotation[i][j] - b.rotation[i][j]).abs() < tol, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn aligned_vertex_error_ignores_similarity_and_sees_moved_vertices() {
        let mut rng = Rng::new(8);
        let gt: Vec<[f32; 3]> = random_points(&mut rng, 50, 40.0).iter().map(|p| p.map(|x| x as f32)).collect();
        let t = random_similarity(&mut rng, 1.3);
        let copy: Vec<[f32; 3]> = gt.iter().map(|&p| t.apply_f32(p)).collect();
        let region: Vec<u32> = (0..50).collect();
        assert!(aligned_vertex_error(&copy, &gt, &region).unwrap() < 1e-3);
        // Only the region counts: a vertex moved outside it changes nothing.
        let mut moved = gt.clone();
        moved[49][0] += 100.0;
        assert!(aligned_vertex_error(&moved, &gt, &region[..49]).unwrap() < 1e-4);
        assert!(aligned_vertex_error(&moved, &gt, &region).unwrap() > 1.0);
        assert!(aligned_vertex_error(&gt[..49], &gt, &region[..49]).is_err());
        assert!(aligned_vertex_error(&gt, &gt, &[0, 1, 50]).unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn recovers_a_known_similarity() {
        let mut rng = Rng::new(5);
        for trial in 0..20 {
            let src = random_points(&mut rng, 3 + trial * 5, 40.0);
            let truth = random_similarity(&mut rng, 1.7);
            let dst: Vec<Vec3> = src.iter().map(|&p| truth.apply(p)).collect();
            let est = umeyama(&src, &dst, None, true).unwrap();
            assert_close(&est, &truth, 1e-9);
            assert!((linalg::det(&est.rotation) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn rigid_mode_keeps_unit_scale_and_weights_select_points() {
        let mut rng = Rng::new(6);
        let src = random_points(&mut rng, 30, 20.0);
        let truth = random_similarity(&mut rng, 1.0);
        let mut dst: Vec<Vec3> = src.iter().map(|&p| truth.apply(p)).collect();
        // Corrupt points 0..5 and give them zero weight: the estimate must ignore them.
        for p in dst.iter_mut().take(5) {
            *p = linalg::add(*p, [100.0, -40.0, 7.0]);
        }
        let w: Vec<f64> = (0..30).map(|i| if i < 5 { 0.0 } else { 1.0 + i as f64 }).collect();
        let est = umeyama(&src, &dst, Some(&w), false).unwrap();
        assert_eq!(est.scale, 1.0);
        assert_close(&est, &truth, 1e-9);
        // Without the weights the outliers pull it off.
        let bad = umeyama(&src, &dst, None, false).unwrap();
        assert!((bad.translation[0] - truth.translation[0]).abs() > 1.0);
    }

    #[test]
    fn planar_points_are_fine() {
        let mut rng = Rng::new(8);
        let src: Vec<Vec3> = (0..10).map(|_| [rng.normal() * 10.0, rng.normal() * 10.0, 0.0]).collect();
        let truth = random_similarity(&mut rng, 0.6);
        let dst: Vec<Vec3> = src.iter().map(|&p| truth.apply(p)).collect();
        let est = umeyama(&src, &dst, None, true).unwrap();
        assert_close(&est, &truth, 1e-9);
    }

    #[test]
    fn mirrored_points_give_a_proper_rotation() {
        // dst is a mirror image of src: the best orthogonal map is a reflection, which Umeyama
        // must replace by the best proper rotation (det +1).
        let mut rng = Rng::new(9);
        let src = random_points(&mut rng, 50, 10.0);
        let dst: Vec<Vec3> = src.iter().map(|p| [-p[0], p[1], p[2]]).collect();
        let est = umeyama(&src, &dst, None, true).unwrap();
        assert!((linalg::det(&est.rotation) - 1.0).abs() < 1e-12, "det {}", linalg::det(&est.rotation));
        let rtr = linalg::mat_mul(&linalg::transpose(&est.rotation), &est.rotation);
        for i in 0..3 {
            for j in 0..3 {
                assert!((rtr[i][j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        // Umeyama's optimum: no proper rotation does better; compare with random rotations.
        let cost =
            |t: &Similarity| -> f64 { src.iter().zip(&dst).map(|(&s, &d)| linalg::dist_sq(t.apply(s), d)).sum() };
        let best = cost(&est);
        for _ in 0..200 {
            let mut t = random_similarity(&mut rng, est.scale);
            t.translation = est.translation;
            assert!(cost(&t) >= best - 1e-9);
        }
        // Slightly perturbed rotations around the optimum are not better either.
        for k in 0..3 {
            let mut axis = [0.0; 3];
            axis[k] = 1.0;
            for a in [-1e-3, 1e-3] {
                let t = Similarity { rotation: linalg::mat_mul(&linalg::axis_angle(axis, a), &est.rotation), ..est };
                assert!(cost(&t) >= best - 1e-9);
            }
        }
    }

    #[test]
    fn degenerate_input_is_an_error() {
        let line: Vec<Vec3> = (0..10).map(|i| [i as f64, 2.0 * i as f64, -(i as f64)]).collect();
        let e = umeyama(&line, &line, None, true).unwrap_err().to_string();
        assert!(e.contains("collinear"), "{e}");
        let same = vec![[1.0, 2.0, 3.0]; 5];
        assert!(umeyama(&same, &same, None, true).is_err());
        let two = vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]];
        assert!(umeyama(&two, &two, None, true).unwrap_err().to_string().contains("at least 3"));
        let tri = vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        assert!(umeyama(&tri, &tri, None, true).is_ok());
        let mut nan = tri.clone();
        nan[1][2] = f64::NAN;
        assert!(umeyama(&nan, &tri, None, true).unwrap_err().to_string().contains("pair 1"));
        assert!(umeyama(&tri, &tri[..2], None, true).is_err());
        assert!(umeyama(&tri, &tri, Some(&[1.0, -1.0, 1.0]), true).is_err());
        assert!(umeyama(&tri, &tri, Some(&[1.0, 1.0]), true).is_err());
        assert!(umeyama(&tri, &tri, Some(&[1.0, 0.0, 1.0]), true).is_err());
    }

    #[test]
    fn compose_inverse_and_matrix_agree() {
        let mut rng = Rng::new(10);
        let a = random_similarity(&mut rng, 1.3);
        let b = random_similarity(&mut rng, 0.4);
        let p = [3.0, -7.0, 11.0];
        let ab = a.compose(&b);
        let q = ab.apply(p);
        let q2 = a.apply(b.apply(p));
        for k in 0..3 {
            assert!((q[k] - q2[k]).abs() < 1e-10);
        }
        let back = ab.inverse().apply(q);
        for k in 0..3 {
            assert!((back[k] - p[k]).abs() < 1e-10);
        }
        let m = ab.matrix4();
        for k in 0..3 {
            let mk = m[k][0] * p[0] + m[k][1] * p[1] + m[k][2] * p[2] + m[k][3];
            assert!((mk - q[k]).abs() < 1e-10);
        }
        let id = a.compose(&a.inverse());
        assert!((id.scale - 1.0).abs() < 1e-12 && id.rotation_angle() < 1e-7);
        assert!(linalg::norm(id.translation) < 1e-10);
        ab.validate("ab").unwrap();
        assert!(Similarity { scale: -1.0, ..ab }.validate("x").is_err());
        let mut mirror = ab;
        mirror.rotation[0] = linalg::scale(mirror.rotation[0], -1.0);
        assert!(mirror.validate("mirror").unwrap_err().to_string().contains("proper rotation"));
    }
}
