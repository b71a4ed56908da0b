//! Render-only caps for the eye and mouth openings of open face meshes (the ICT-FaceKit face
//! region has holes where its separate eyeball and teeth meshes would sit). Without them the
//! background would show through the face. Each hole is closed by a fan to a recessed centre
//! vertex whose colour is dark, so the opening reads as an eye or a mouth cavity. The caps are
//! used only for the image; the ground-truth mesh, landmarks and visibility labels are the
//! model's own.

use crate::face_model::FaceModel;
use std::collections::BTreeMap;

/// Colour of an eye opening's centre (iris and sclera in shadow, averaged).
pub const EYE_COLOUR: [f32; 3] = [0.28, 0.24, 0.22];
/// Colour of a mouth opening's centre (the dark oral cavity).
pub const MOUTH_COLOUR: [f32; 3] = [0.18, 0.06, 0.05];

/// One hole: its boundary edges in mesh winding order and the colour of its centre.
#[derive(Clone, Debug, PartialEq)]
pub struct Hole {
    pub edges: Vec<[u32; 2]>,
    pub colour: [f32; 3],
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// The eye and mouth holes of `model`: boundary loops other than the outer one whose centre
/// lies near an eye (landmarks 36..41, 42..47) or the inner mouth (60..67) of the mean face and
/// whose size is below an inter-ocular distance. A closed or hole-free model gives none.
pub fn find_holes(model: &FaceModel) -> Vec<Hole> {
    let v = crate::face_model::to_vec3(&model.mean_shape);
    // Boundary edges: directed edges whose reverse no triangle has.
    let mut count: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    for t in &model.triangles {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            *count.entry((a.min(b), a.max(b))).or_insert(0) += 1;
        }
    }
    let mut boundary = Vec::new();
    for t in &model.triangles {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            if count[&(a.min(b), a.max(b))] == 1 {
                boundary.push([a, b]);
            }
        }
    }
    // Group boundary edges into connected loops (union-find tolerates non-manifold corners).
    let mut parent: Vec<usize> = (0..v.len()).collect();
    for e in &boundary {
        let (ra, rb) = (find(&mut parent, e[0] as usize), find(&mut parent, e[1] as usize));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut loops: BTreeMap<usize, Vec<[u32; 2]>> = BTreeMap::new();
    for e in boundary {
        let root = find(&mut parent, e[0] as usize);
        loops.entry(root).or_default().push(e);
    }
    let Some(outer) = loops.iter().max_by_key(|(root, l)| (l.len(), std::cmp::Reverse(**root))).map(|(r, _)| *r) else {
        return Vec::new();
    };
    let lm = |range: std::ops::Range<usize>| -> [f32; 2] {
        let n = range.len() as f32;
        let (x, y) = range.fold((0.0, 0.0), |(x, y), i| {
            let p = v[model.landmarks[i] as usize];
            (x + p[0], y + p[1])
        });
        [x / n, y / n]
    };
    let (eye_r, eye_l, mouth) = (lm(36..42), lm(42..48), lm(60..68));
    let s = ((eye_l[0] - eye_r[0]).powi(2) + (eye_l[1] - eye_r[1]).powi(2)).sqrt().max(1e-6);
    let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let mut holes = Vec::new();
    for (root, edges) in loops {
        if root == outer || edges.len() < 3 {
            continue;
        }
        let c = centre(&v, &edges);
        let c2 = [c[0], c[1]];
        let radius = edges.iter().map(|e| d([v[e[0] as usize][0], v[e[0] as usize][1]], c2)).fold(0.0, f32::max);
        if radius > s {
            continue;
        }
        let colour = if d(c2, mouth) < 0.6 * s {
            MOUTH_COLOUR
        } else if d(c2, eye_r) < 0.6 * s || d(c2, eye_l) < 0.6 * s {
            EYE_COLOUR
        } else {
            continue;
        };
        holes.push(Hole { edges, colour });
    }
    holes
}

/// Mean of a loop's vertices.
fn centre(v: &[[f32; 3]], edges: &[[u32; 2]]) -> [f32; 3] {
    let n = edges.len() as f32;
    let mut c = [0.0f32; 3];
    for e in edges {
        for k in 0..3 {
            c[k] += v[e[0] as usize][k] / n;
        }
    }
    c
}

/// Cap geometry for the current face: extra vertices (one recessed centre per hole, model frame)
/// with their normals and colours, and fan triangles indexing the model's vertices followed by
/// the extra ones (`first_extra` = the model's vertex count).
///
/// # Shapes
/// `vertices`: `[N, 3]`; returns `[H, 3]` positions, `[H, 3]` normals, `[H, 3]` colours and
/// `[E, 3]` triangles, H holes with E boundary edges in all.
#[allow(clippy::type_complexity)]
pub fn caps(holes: &[Hole], vertices: &[[f32; 3]]) -> (Vec<[f32; 3]>, Vec<[f32; 3]>, Vec<[f32; 3]>, Vec<[u32; 3]>) {
    let first_extra = vertices.len() as u32;
    let (mut pos, mut nrm, mut col, mut tris) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (h, hole) in holes.iter().enumerate() {
        let mut c = centre(vertices, &hole.edges);
        let radius = hole
            .edges
            .iter()
            .map(|e| {
                let p = vertices[e[0] as usize];
                ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)).sqrt()
            })
            .fold(0.0, f32::max);
        // Recess the centre into the head (-z in the model frame) so the cap reads as a cavity.
        c[2] -= 0.4 * radius;
        pos.push(c);
        nrm.push([0.0, 0.0, 1.0]);
        col.push(hole.colour);
        let ci = first_extra + h as u32;
        // The shared edge runs a -> b in the face's triangle, so b -> a in the cap's: same winding.
        tris.extend(hole.edges.iter().map(|e| [e[1], e[0], ci]));
    }
    (pos, nrm, col, tris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_punched_hole_near_an_eye_is_found_and_capped() {
        let mut model = crate::face_model::demo::demo_model();
        assert!(find_holes(&model).is_empty(), "the demo grid has only its outer boundary");
        // Remove the triangles around the right eye's centre vertex (landmarks 36..41).
        let v = crate::face_model::to_vec3(&model.mean_shape);
        let eye: Vec<u32> = model.landmarks[36..42].to_vec();
        let cx = eye.iter().map(|&i| v[i as usize][0]).sum::<f32>() / 6.0;
        let cy = eye.iter().map(|&i| v[i as usize][1]).sum::<f32>() / 6.0;
        let before = model.triangles.len();
        model
            .triangles
            .retain(|t| !t.iter().any(|&i| (v[i as usize][0] - cx).powi(2) + (v[i as usize][1] - cy).powi(2) < 36.0));
        assert!(model.triangles.len() < before);
        let holes = find_holes(&model);
        assert_eq!(holes.len(), 1);
        assert_eq!(holes[0].colour, EYE_COLOUR);
        let (pos, _, col, tris) = caps(&holes, &v);
        assert_eq!(pos.len(), 1);
        assert_eq!(col[0], EYE_COLOUR);
        assert_eq!(tris.len(), holes[0].edges.len());
        assert!(pos[0][2] < v[holes[0].edges[0][0] as usize][2]);
        // The caps close the hole: every edge is now shared by exactly two triangles.
        let mut all = model.triangles.clone();
        all.extend(&tris);
        let mut count = BTreeMap::new();
        for t in &all {
            for k in 0..3 {
                let (a, b) = (t[k], t[(k + 1) % 3]);
                *count.entry((a, b)).or_insert(0) += 1;
                assert!(a != b);
            }
        }
        for t in &tris {
            // The rim edge b -> a of a cap is matched once by a -> b in the face.
            assert_eq!(count.get(&(t[1], t[0])), Some(&1), "rim edge {}-{}", t[0], t[1]);
        }
    }
}
