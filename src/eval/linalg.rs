//! Small dense 3-vector / 3x3-matrix helpers in `f64` and a one-sided Jacobi SVD of a 3x3 matrix,
//! which is all the evaluation geometry needs (no linear-algebra crate).
//!
//! Matrices are row-major `[[f64; 3]; 3]`: `m[row][col]`.

/// A 3-vector.
pub type Vec3 = [f64; 3];
/// A row-major 3x3 matrix.
pub type Mat3 = [[f64; 3]; 3];

/// The identity matrix.
pub const IDENTITY: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

#[inline]
pub fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

#[inline]
pub fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

#[inline]
pub fn scale(a: Vec3, s: f64) -> Vec3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

#[inline]
pub fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[inline]
pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

#[inline]
pub fn norm_sq(a: Vec3) -> f64 {
    dot(a, a)
}

#[inline]
pub fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

#[inline]
pub fn dist_sq(a: Vec3, b: Vec3) -> f64 {
    norm_sq(sub(a, b))
}

/// `[f32; 3]` to `[f64; 3]`.
#[inline]
pub fn to_f64(p: [f32; 3]) -> Vec3 {
    [p[0] as f64, p[1] as f64, p[2] as f64]
}

/// `m v`.
#[inline]
pub fn mat_vec(m: &Mat3, v: Vec3) -> Vec3 {
    [dot(m[0], v), dot(m[1], v), dot(m[2], v)]
}

/// `a b`.
pub fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    out
}

/// `m^T`.
pub fn transpose(m: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in m.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            out[j][i] = x;
        }
    }
    out
}

/// `det(m)`.
pub fn det(m: &Mat3) -> f64 {
    dot(m[0], cross(m[1], m[2]))
}

/// Rotation by `angle` radians about `axis` (need not be unit length; must be non-zero).
pub fn axis_angle(axis: Vec3, angle: f64) -> Mat3 {
    let k = scale(axis, 1.0 / norm(axis));
    let (s, c) = angle.sin_cos();
    let t = 1.0 - c;
    [
        [c + k[0] * k[0] * t, k[0] * k[1] * t - k[2] * s, k[0] * k[2] * t + k[1] * s],
        [k[1] * k[0] * t + k[2] * s, c + k[1] * k[1] * t, k[1] * k[2] * t - k[0] * s],
        [k[2] * k[0] * t - k[1] * s, k[2] * k[1] * t + k[0] * s, c + k[2] * k[2] * t],
    ]
}

/// The rotation `exp([w]_x)`: angle `|w|` about `w` (Rodrigues); identity for `w = 0`.
pub fn rotation_exp(w: Vec3) -> Mat3 {
    let angle = norm(w);
    if angle > 0.0 { axis_angle(w, angle) } else { IDENTITY }
}

/// The rotation vector `w` of a proper rotation (`rotation_exp(w) = r`, `|w|` in [0, pi]).
pub fn rotation_log(r: &Mat3) -> Vec3 {
    let cos = ((r[0][0] + r[1][1] + r[2][2] - 1.0) * 0.5).clamp(-1.0, 1.0);
    let angle = cos.acos();
    let vee = [r[2][1] - r[1][2], r[0][2] - r[2][0], r[1][0] - r[0][1]]; // 2 sin(angle) axis
    if angle < 1e-6 {
        // sin(angle) ~ angle: w ~ vee / 2 to second order.
        return scale(vee, 0.5);
    }
    if angle < std::f64::consts::PI - 1e-6 {
        return scale(vee, angle / (2.0 * angle.sin()));
    }
    // Near pi the skew part vanishes; the axis is the dominant column of (R + I) / 2 = a a^T.
    let b = [[r[0][0] + 1.0, r[0][1], r[0][2]], [r[1][0], r[1][1] + 1.0, r[1][2]], [r[2][0], r[2][1], r[2][2] + 1.0]];
    let cols = [[b[0][0], b[1][0], b[2][0]], [b[0][1], b[1][1], b[2][1]], [b[0][2], b[1][2], b[2][2]]];
    let k = (0..3).fold(0, |a, j| if norm_sq(cols[j]) > norm_sq(cols[a]) { j } else { a });
    let mut axis = scale(cols[k], 1.0 / norm(cols[k]));
    // Keep the sign the (tiny) skew part suggests, so the map is continuous just below pi.
    if dot(axis, vee) < 0.0 {
        axis = scale(axis, -1.0);
    }
    scale(axis, angle)
}

/// A unit vector orthogonal to the unit vector `u`.
fn any_orthogonal(u: Vec3) -> Vec3 {
    // Cross with the coordinate axis least aligned with u, which keeps the result well away from 0.
    let a = u.map(f64::abs);
    let e = if a[0] <= a[1] && a[0] <= a[2] {
        [1.0, 0.0, 0.0]
    } else if a[1] <= a[2] {
        [0.0, 1.0, 0.0]
    } else {
        [0.0, 0.0, 1.0]
    };
    let v = cross(u, e);
    scale(v, 1.0 / norm(v))
}

/// Singular value decomposition `a = U diag(s) V^T` of a 3x3 matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Svd3 {
    /// Orthogonal left factor (columns are the left singular vectors).
    pub u: Mat3,
    /// Singular values, non-negative, in decreasing order.
    pub s: Vec3,
    /// Orthogonal right factor (columns are the right singular vectors).
    pub v: Mat3,
}

/// SVD of a 3x3 matrix by one-sided (Hestenes) Jacobi rotations.
///
/// One-sided Jacobi works on `a` itself rather than on `a^T a`, so small singular values keep
/// their relative accuracy (eigen-decomposing `a^T a` would square the condition number), which
/// matters for nearly planar point sets in Umeyama. `U` and `V` are always orthogonal, also for
/// rank-deficient input: columns of `U` belonging to (numerically) zero singular values are
/// completed to an orthonormal basis. The input must be finite.
pub fn svd3(a: &Mat3) -> Svd3 {
    // Columns of `w` converge to U diag(s); `v` accumulates the right rotations.
    let mut w = *a;
    let mut v = IDENTITY;
    for _sweep in 0..64 {
        let mut rotated = false;
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            let mut alpha = 0.0;
            let mut beta = 0.0;
            let mut gamma = 0.0;
            for row in &w {
                alpha += row[p] * row[p];
                beta += row[q] * row[q];
                gamma += row[p] * row[q];
            }
            if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                continue;
            }
            rotated = true;
            let zeta = (beta - alpha) / (2.0 * gamma);
            let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
            let c = 1.0 / (1.0 + t * t).sqrt();
            let s = c * t;
            for m in [&mut w, &mut v] {
                for row in m.iter_mut() {
                    let (xp, xq) = (row[p], row[q]);
                    row[p] = c * xp - s * xq;
                    row[q] = s * xp + c * xq;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let col = |m: &Mat3, j: usize| -> Vec3 { [m[0][j], m[1][j], m[2][j]] };
    let mut order = [0usize, 1, 2];
    let norms = [norm(col(&w, 0)), norm(col(&w, 1)), norm(col(&w, 2))];
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let s = [norms[order[0]], norms[order[1]], norms[order[2]]];
    // Columns with a singular value below this are treated as zero and completed instead.
    let tiny = s[0] * 1e-13;
    let mut ucols = [[0.0; 3]; 3];
    let mut vcols = [[0.0; 3]; 3];
    for (k, &j) in order.iter().enumerate() {
        vcols[k] = col(&v, j);
        if s[k] > tiny && s[k] > 0.0 {
            ucols[k] = scale(col(&w, j), 1.0 / s[k]);
        }
    }
    if !(s[0] > 0.0) {
        ucols[0] = [1.0, 0.0, 0.0];
    }
    if !(s[1] > tiny && s[1] > 0.0) {
        ucols[1] = any_orthogonal(ucols[0]);
    }
    if !(s[2] > tiny && s[2] > 0.0) {
        ucols[2] = cross(ucols[0], ucols[1]);
    }
    let from_cols = |c: &[Vec3; 3]| -> Mat3 {
        [[c[0][0], c[1][0], c[2][0]], [c[0][1], c[1][1], c[2][1]], [c[0][2], c[1][2], c[2][2]]]
    };
    Svd3 { u: from_cols(&ucols), s, v: from_cols(&vcols) }
}

/// The rotation nearest to `m` in the Frobenius norm (polar decomposition with det = +1).
/// Used to remove round-off drift after many compositions.
pub fn nearest_rotation(m: &Mat3) -> Mat3 {
    let svd = svd3(m);
    let mut u = svd.u;
    if det(&u) * det(&svd.v) < 0.0 {
        for row in u.iter_mut() {
            row[2] = -row[2];
        }
    }
    mat_mul(&u, &transpose(&svd.v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn max_abs_diff(a: &Mat3, b: &Mat3) -> f64 {
        let mut m: f64 = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                m = m.max((a[i][j] - b[i][j]).abs());
            }
        }
        m
    }

    fn reconstruct(svd: &Svd3) -> Mat3 {
        let mut us = svd.u;
        for row in us.iter_mut() {
            for j in 0..3 {
                row[j] *= svd.s[j];
            }
        }
        mat_mul(&us, &transpose(&svd.v))
    }

    fn check(a: &Mat3) {
        let svd = svd3(a);
        let scale_a = a.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
        assert!(max_abs_diff(&reconstruct(&svd), a) <= 1e-12 * scale_a, "{a:?} -> {svd:?}");
        for m in [&svd.u, &svd.v] {
            assert!(max_abs_diff(&mat_mul(&transpose(m), m), &IDENTITY) < 1e-12, "not orthogonal: {m:?}");
        }
        assert!(svd.s[0] >= svd.s[1] && svd.s[1] >= svd.s[2] && svd.s[2] >= 0.0, "{:?}", svd.s);
    }

    #[test]
    fn svd_reconstructs_random_and_degenerate_matrices() {
        let mut rng = Rng::new(11);
        for _ in 0..500 {
            let mut a = [[0.0; 3]; 3];
            for x in a.iter_mut().flatten() {
                *x = rng.normal() * 10.0;
            }
            check(&a);
        }
        // Rank 2, rank 1, zero, repeated singular values, a reflection, a huge dynamic range.
        check(&[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]]);
        check(&[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [-1.0, -2.0, -3.0]]);
        check(&[[0.0; 3]; 3]);
        check(&IDENTITY);
        check(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]);
        check(&[[1e8, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1e-8]]);
    }

    #[test]
    fn svd_keeps_small_singular_values_accurate() {
        let r1 = axis_angle([1.0, 2.0, 3.0], 0.7);
        let r2 = axis_angle([-2.0, 0.5, 1.0], 1.9);
        let d = [[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1e-9]];
        let a = mat_mul(&mat_mul(&r1, &d), &transpose(&r2));
        let svd = svd3(&a);
        assert!((svd.s[0] - 3.0).abs() < 1e-14 * 3.0);
        assert!((svd.s[1] - 1.0).abs() < 1e-14);
        // Through `a^T a` the error would be around sqrt(eps) * 3 ~ 5e-8; Jacobi on `a` keeps it at
        // the level of eps * |a|.
        assert!((svd.s[2] - 1e-9).abs() < 1e-14, "{}", svd.s[2]);
    }

    #[test]
    fn rotation_log_inverts_exp() {
        let mut rng = Rng::new(12);
        for k in 0..300 {
            let axis = [rng.normal(), rng.normal(), rng.normal()];
            let angle = match k {
                0 => 0.0,
                1 => 1e-9,
                2 => std::f64::consts::PI - 1e-9,
                3 => std::f64::consts::PI,
                _ => rng.range(0.0, std::f64::consts::PI),
            };
            let w = scale(axis, angle / norm(axis));
            let r = rotation_exp(w);
            let back = rotation_exp(rotation_log(&r));
            assert!(max_abs_diff(&back, &r) < 1e-7, "angle {angle}: {back:?} vs {r:?}");
            if angle < 3.0 {
                assert!(norm(sub(rotation_log(&r), w)) < 1e-9 * (1.0 + angle), "angle {angle}");
            }
        }
    }

    #[test]
    fn nearest_rotation_of_a_perturbed_rotation() {
        let r = axis_angle([0.3, -1.0, 0.2], 2.5);
        let mut p = r;
        p[0][1] += 1e-7;
        p[2][2] -= 1e-7;
        let q = nearest_rotation(&p);
        assert!(max_abs_diff(&mat_mul(&transpose(&q), &q), &IDENTITY) < 1e-14);
        assert!((det(&q) - 1.0).abs() < 1e-14);
        assert!(max_abs_diff(&q, &r) < 2e-7);
    }
}
