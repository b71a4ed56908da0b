//! Restricting a ground-truth mesh to the face: a spherical crop around the nose tip.

use crate::io::mesh::Mesh;

/// Indices (ascending) of the vertices of `gt` within `radius_mm` of `centre` (inclusive).
///
/// The usual face crop when the ground truth has no face region of its own: a sphere around
/// the nose tip (radius around 95 mm in common benchmarks) keeps the face and drops ears,
/// neck and hair. Non-finite vertices are never inside; a non-finite or negative radius gives
/// no vertices.
pub fn face_region_by_radius(gt: &Mesh, centre: [f32; 3], radius_mm: f32) -> Vec<u32> {
    let c = centre.map(|x| x as f64);
    let r2 = (radius_mm as f64) * (radius_mm as f64);
    if !(radius_mm >= 0.0) || !radius_mm.is_finite() {
        return Vec::new();
    }
    gt.vertices
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            let d2: f64 = (0..3).map(|k| (v[k] as f64 - c[k]).powi(2)).sum();
            d2 <= r2
        })
        .map(|(i, _)| i as u32)
        .collect()
}

/// The vertex with the largest z among finite vertices, a nose-tip estimate for a mesh in the
/// model frame of `docs/conventions.md` (+z out of the face) and close to frontal; None for a
/// mesh without finite vertices. Prefer a landmark when the data set provides one.
pub fn nose_tip_by_max_z(mesh: &Mesh) -> Option<[f32; 3]> {
    mesh.vertices.iter().filter(|v| v.iter().all(|x| x.is_finite())).copied().max_by(|a, b| a[2].total_cmp(&b[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_keeps_exactly_the_ball() {
        let mut m = Mesh::default();
        for i in 0..10 {
            m.vertices.push([i as f32 * 10.0, 0.0, 0.0]);
        }
        m.vertices.push([f32::NAN, 0.0, 0.0]);
        m.vertices.push([0.0, 0.0, 95.0]);
        assert_eq!(face_region_by_radius(&m, [0.0, 0.0, 0.0], 30.0), vec![0, 1, 2, 3]);
        assert_eq!(face_region_by_radius(&m, [45.0, 0.0, 0.0], 10.0), vec![4, 5]);
        assert!(face_region_by_radius(&m, [0.0; 3], -1.0).is_empty());
        assert!(face_region_by_radius(&m, [0.0; 3], f32::NAN).is_empty());
        assert_eq!(nose_tip_by_max_z(&m), Some([0.0, 0.0, 95.0]));
        assert_eq!(nose_tip_by_max_z(&Mesh::default()), None);
    }
}
