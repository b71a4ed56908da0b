//! Semantic face regions (lips, eyes, brows, nostrils, beard zone, cheeks) derived from the
//! 68 landmarks on a model's mean shape. They drive the skin mask of the global reflectance
//! constancy term (eq. 14, Fig. 2 right) and the procedural albedo prior, for models that come
//! without them (ICT-FaceKit, BFM) and for the built-in demo model.
//!
//! Everything is measured in the frontal projection (x, y) of the mean face, in units of the
//! inter-ocular distance `s`, so it works for any model of any size in the documented frame
//! (+y up, +z toward a frontal viewer).

use super::FaceModel;
use super::topology::vertex_normals;

/// Per-vertex weights in [0, 1] of each region.
#[derive(Clone, Debug)]
pub struct SoftRegions {
    pub lips: Vec<f32>,
    pub eyes: Vec<f32>,
    pub brows: Vec<f32>,
    pub nostrils: Vec<f32>,
    /// Below the nose base on the front of the face: where beards and stubble grow.
    pub beard: Vec<f32>,
    pub cheeks: Vec<f32>,
    /// Front-facing part of the face (normal toward +z, in front of the ears).
    pub front: Vec<f32>,
    /// Normalised frontal coordinates ((x - cx) / s, (y - cy) / s) of every vertex, with the
    /// centre between the eyes.
    pub coords: Vec<[f32; 2]>,
}

type P2 = [f32; 2];

fn centroid(points: &[P2]) -> P2 {
    let n = points.len() as f32;
    let (x, y) = points.iter().fold((0.0, 0.0), |(x, y), p| (x + p[0], y + p[1]));
    [x / n, y / n]
}

fn dist_segment(p: P2, a: P2, b: P2) -> f32 {
    let ab = [b[0] - a[0], b[1] - a[1]];
    let ap = [p[0] - a[0], p[1] - a[1]];
    let l2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if l2 > 0.0 { ((ap[0] * ab[0] + ap[1] * ab[1]) / l2).clamp(0.0, 1.0) } else { 0.0 };
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1]];
    (d[0] * d[0] + d[1] * d[1]).sqrt()
}

fn dist_polyline(p: P2, pts: &[P2], closed: bool) -> f32 {
    let mut d = f32::INFINITY;
    for w in pts.windows(2) {
        d = d.min(dist_segment(p, w[0], w[1]));
    }
    if closed && pts.len() > 2 {
        d = d.min(dist_segment(p, pts[pts.len() - 1], pts[0]));
    }
    d
}

fn inside_polygon(p: P2, poly: &[P2]) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (a, b) = (poly[i], poly[j]);
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Distance outside a closed polygon (0 inside).
fn dist_outside(p: P2, poly: &[P2]) -> f32 {
    if inside_polygon(p, poly) { 0.0 } else { dist_polyline(p, poly, true) }
}

fn falloff(d: f32, sigma: f32) -> f32 {
    (-(d / sigma).powi(2)).exp()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl SoftRegions {
    /// Regions of `model`'s mean face.
    pub fn of_model(model: &FaceModel) -> SoftRegions {
        let v = super::to_vec3(&model.mean_shape);
        Self::compute(&v, &model.triangles, &model.landmarks)
    }

    /// Regions of a mesh with its iBUG-68 landmark vertices.
    pub fn compute(vertices: &[[f32; 3]], triangles: &[[u32; 3]], landmarks: &[u32]) -> SoftRegions {
        let normals = vertex_normals(vertices, triangles);
        let lm3: Vec<[f32; 3]> = landmarks.iter().map(|&i| vertices[i as usize]).collect();
        let lm: Vec<P2> = lm3.iter().map(|p| [p[0], p[1]]).collect();
        let eye_r = centroid(&lm[36..42]);
        let eye_l = centroid(&lm[42..48]);
        let s = ((eye_l[0] - eye_r[0]).powi(2) + (eye_l[1] - eye_r[1]).powi(2)).sqrt().max(1e-6);
        let c = [(eye_r[0] + eye_l[0]) * 0.5, (eye_r[1] + eye_l[1]) * 0.5];
        let eye_z = (lm3[36][2] + lm3[39][2] + lm3[42][2] + lm3[45][2]) * 0.25;
        let nose_base_y = lm[33][1];
        let mouth_l = lm[54];
        let mouth_r = lm[48];
        let cheek_r = [eye_r[0] * 0.5 + mouth_r[0] * 0.5 - 0.12 * s, lm[41][1] * 0.45 + mouth_r[1] * 0.55];
        let cheek_l = [eye_l[0] * 0.5 + mouth_l[0] * 0.5 + 0.12 * s, lm[46][1] * 0.45 + mouth_l[1] * 0.55];
        let jaw_half_width = 0.5 * (lm[16][0] - lm[0][0]).abs().max(s);

        let n = vertices.len();
        let mut r = SoftRegions {
            lips: vec![0.0; n],
            eyes: vec![0.0; n],
            brows: vec![0.0; n],
            nostrils: vec![0.0; n],
            beard: vec![0.0; n],
            cheeks: vec![0.0; n],
            front: vec![0.0; n],
            coords: vec![[0.0; 2]; n],
        };
        for i in 0..n {
            let p = [vertices[i][0], vertices[i][1]];
            r.coords[i] = [(p[0] - c[0]) / s, (p[1] - c[1]) / s];
            // Front of the face: facing the viewer, not far behind the eyes, inside the jaw width.
            let facing = ((normals[i][2] - 0.15) / 0.25).clamp(0.0, 1.0);
            let depth = sigmoid((vertices[i][2] - (eye_z - 0.9 * s)) / (0.08 * s));
            let lateral = sigmoid((jaw_half_width * 1.05 - (p[0] - c[0]).abs()) / (0.05 * s));
            let front = facing * depth * lateral;
            r.front[i] = front;
            r.lips[i] = front * falloff(dist_outside(p, &lm[48..60]), 0.06 * s);
            r.eyes[i] = front * falloff(dist_outside(p, &lm[36..42]).min(dist_outside(p, &lm[42..48])), 0.08 * s);
            let brow = dist_polyline(p, &lm[17..22], false).min(dist_polyline(p, &lm[22..27], false));
            r.brows[i] = front * falloff((brow - 0.06 * s).max(0.0), 0.05 * s);
            r.nostrils[i] = front * falloff((dist_polyline(p, &lm[31..36], false) - 0.03 * s).max(0.0), 0.06 * s);
            r.beard[i] = front * sigmoid((nose_base_y - 0.04 * s - p[1]) / (0.04 * s));
            let dc = |q: P2| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
            r.cheeks[i] = front * falloff(dc(cheek_r).min(dc(cheek_l)), 0.3 * s);
        }
        r
    }
}

/// The skin mask of eq. 14 (Fig. 2 right): front-facing face-region vertices above the beard
/// zone and away from eyes, brows, nostrils and lips. Never empty: if the rules leave fewer than
/// two vertices (a degenerate model), the most front-facing face-region vertices are used.
pub fn derive_skin_mask(model: &FaceModel) -> Vec<u32> {
    let r = SoftRegions::of_model(model);
    let in_region = region_flags(model);
    let mut mask: Vec<u32> = (0..model.num_vertices())
        .filter(|&i| {
            in_region[i]
                && r.front[i] > 0.5
                && r.beard[i] < 0.1
                && r.eyes[i] < 0.1
                && r.brows[i] < 0.1
                && r.nostrils[i] < 0.1
                && r.lips[i] < 0.1
                && r.coords[i][1] < 1.2 // not up into the hairline
        })
        .map(|i| i as u32)
        .collect();
    if mask.len() < 2 {
        let mut order: Vec<u32> = model.face_region.clone();
        order.sort_by(|&a, &b| r.front[b as usize].total_cmp(&r.front[a as usize]));
        order.truncate(order.len().clamp(2, 64));
        order.sort_unstable();
        mask = order;
    }
    mask
}

fn region_flags(model: &FaceModel) -> Vec<bool> {
    let mut f = vec![model.face_region.is_empty(); model.num_vertices()];
    for &i in &model.face_region {
        f[i as usize] = true;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_helpers() {
        let sq = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        assert!(inside_polygon([0.5, 0.5], &sq));
        assert!(!inside_polygon([1.5, 0.5], &sq));
        assert_eq!(dist_outside([0.5, 0.5], &sq), 0.0);
        assert!((dist_outside([2.0, 0.5], &sq) - 1.0).abs() < 1e-6);
        assert!((dist_segment([0.5, 1.0], [0.0, 0.0], [1.0, 0.0]) - 1.0).abs() < 1e-6);
    }
}
