//! The closest point on a triangle to a query point (Ericson, "Real-Time Collision Detection",
//! sec. 5.1.5), with its barycentric coordinates.

use super::linalg::{self, Vec3, add, dot, scale, sub};

/// The closest point of triangle `(a, b, c)` to `p` and its barycentric coordinates
/// `(u, v, w)`, `point = u a + v b + w c`, `u + v + w = 1`, all in [0, 1].
///
/// Ericson's Voronoi-region tests; degenerate (zero-area) triangles fall back to the closest
/// of the three edges, so the result is always finite for finite input.
pub fn closest_point_on_triangle(p: Vec3, a: Vec3, b: Vec3, c: Vec3) -> (Vec3, Vec3) {
    let ab = sub(b, a);
    let ac = sub(c, a);
    // Zero area first: with `a == b` the edge test below would divide 0 by 0 (its denominator
    // is |ab|²), and the sum test at the end would never be reached.
    let n = linalg::cross(ab, ac);
    if !(dot(n, n) > 0.0) {
        return degenerate(p, a, b, c);
    }
    let ap = sub(p, a);
    let d1 = dot(ab, ap);
    let d2 = dot(ac, ap);
    if d1 <= 0.0 && d2 <= 0.0 {
        return (a, [1.0, 0.0, 0.0]);
    }
    let bp = sub(p, b);
    let d3 = dot(ab, bp);
    let d4 = dot(ac, bp);
    if d3 >= 0.0 && d4 <= d3 {
        return (b, [0.0, 1.0, 0.0]);
    }
    let vc = d1 * d4 - d3 * d2;
    if vc <= 0.0 && d1 >= 0.0 && d3 <= 0.0 {
        let v = d1 / (d1 - d3);
        return (add(a, scale(ab, v)), [1.0 - v, v, 0.0]);
    }
    let cp = sub(p, c);
    let d5 = dot(ab, cp);
    let d6 = dot(ac, cp);
    if d6 >= 0.0 && d5 <= d6 {
        return (c, [0.0, 0.0, 1.0]);
    }
    let vb = d5 * d2 - d1 * d6;
    if vb <= 0.0 && d2 >= 0.0 && d6 <= 0.0 {
        let w = d2 / (d2 - d6);
        return (add(a, scale(ac, w)), [1.0 - w, 0.0, w]);
    }
    let va = d3 * d6 - d5 * d4;
    if va <= 0.0 && (d4 - d3) >= 0.0 && (d5 - d6) >= 0.0 {
        let w = (d4 - d3) / ((d4 - d3) + (d5 - d6));
        return (add(b, scale(sub(c, b), w)), [0.0, 1.0 - w, w]);
    }
    let sum = va + vb + vc;
    if !(sum > 0.0) || !sum.is_finite() {
        return degenerate(p, a, b, c);
    }
    let v = vb / sum;
    let w = vc / sum;
    (add(a, add(scale(ab, v), scale(ac, w))), [1.0 - v - w, v, w])
}

/// Closest point on segment `a..b` and its parameter `t` (`a + t (b - a)`).
fn closest_on_segment(p: Vec3, a: Vec3, b: Vec3) -> (Vec3, f64) {
    let ab = sub(b, a);
    let len2 = dot(ab, ab);
    let t = if len2 > 0.0 { (dot(sub(p, a), ab) / len2).clamp(0.0, 1.0) } else { 0.0 };
    (add(a, scale(ab, t)), t)
}

/// A zero-area triangle is the union of its edges.
fn degenerate(p: Vec3, a: Vec3, b: Vec3, c: Vec3) -> (Vec3, Vec3) {
    let (q0, t0) = closest_on_segment(p, a, b);
    let (q1, t1) = closest_on_segment(p, b, c);
    let (q2, t2) = closest_on_segment(p, c, a);
    let cands = [(q0, [1.0 - t0, t0, 0.0]), (q1, [0.0, 1.0 - t1, t1]), (q2, [t2, 0.0, 1.0 - t2])];
    let mut best = cands[0];
    for cand in &cands[1..] {
        if linalg::dist_sq(p, cand.0) < linalg::dist_sq(p, best.0) {
            best = *cand;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Reference: the minimum over a dense barycentric grid, refined by the three edges.
    fn brute_dist_sq(p: Vec3, a: Vec3, b: Vec3, c: Vec3) -> f64 {
        let n = 200;
        let mut best = f64::INFINITY;
        for i in 0..=n {
            for j in 0..=(n - i) {
                let v = i as f64 / n as f64;
                let w = j as f64 / n as f64;
                let q = add(a, add(scale(sub(b, a), v), scale(sub(c, a), w)));
                best = best.min(linalg::dist_sq(p, q));
            }
        }
        for (x, y) in [(a, b), (b, c), (c, a)] {
            best = best.min(linalg::dist_sq(p, closest_on_segment(p, x, y).0));
        }
        best
    }

    #[test]
    fn matches_brute_force_in_every_region() {
        let mut rng = Rng::new(21);
        let mut r3 = |s: f64| [rng.normal() * s, rng.normal() * s, rng.normal() * s];
        for _ in 0..300 {
            let (a, b, c, p) = (r3(1.0), r3(1.0), r3(1.0), r3(2.0));
            let (q, bary) = closest_point_on_triangle(p, a, b, c);
            let d = linalg::dist_sq(p, q);
            let reference = brute_dist_sq(p, a, b, c);
            // The grid is an upper bound; the exact answer may be slightly smaller, never larger.
            assert!(d <= reference + 1e-12, "{d} > {reference}");
            assert!(reference - d < 1e-3 * (1.0 + reference), "{d} vs {reference}");
            let from_bary = add(add(scale(a, bary[0]), scale(b, bary[1])), scale(c, bary[2]));
            assert!(linalg::dist_sq(from_bary, q) < 1e-20 + 1e-24 * linalg::norm_sq(q));
            assert!(bary.iter().all(|&x| (-1e-12..=1.0 + 1e-12).contains(&x)));
            assert!((bary.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn interior_projection_and_degenerate_triangles() {
        let (q, bary) = closest_point_on_triangle([0.25, 0.25, 3.0], [0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]);
        assert_eq!(q, [0.25, 0.25, 0.0]);
        assert!((bary[0] - 0.5).abs() < 1e-15);
        // Collinear and coincident corners.
        let (q, _) = closest_point_on_triangle([1.0, 1.0, 0.0], [0.0; 3], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]);
        assert!(linalg::dist_sq(q, [1.0, 0.0, 0.0]) < 1e-24);
        let (q, _) = closest_point_on_triangle([1.0, 1.0, 1.0], [0.5; 3], [0.5; 3], [0.5; 3]);
        assert_eq!(q, [0.5; 3]);
        // Two corners coincident, in each position (a == b used to give NaN).
        let (o, x, p) = ([0.0; 3], [1.0, 0.0, 0.0], [0.5, 1.0, 0.0]);
        for (a, b, c) in [(o, o, x), (o, x, o), (x, o, o)] {
            let (q, bary) = closest_point_on_triangle(p, a, b, c);
            assert!(linalg::dist_sq(q, [0.5, 0.0, 0.0]) < 1e-24, "{a:?} {b:?} {c:?}: {q:?}");
            assert!(bary.iter().all(|w| w.is_finite() && (0.0..=1.0).contains(w)), "{bary:?}");
        }
    }
}
