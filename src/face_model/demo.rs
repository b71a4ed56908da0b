//! The built-in demo face model: a smooth closed-form head-and-face surface with a landmark
//! table, sliding-contour candidates, a skin mask and smooth identity, expression and albedo
//! bases. It is NOT a real face model (no scans behind it); it exists so that the whole system
//! builds, trains, runs and is tested without any licensed data. Generated deterministically.
//!
//! Construction: a warped (longitude, latitude) grid over the front of an ellipsoidal head,
//! displaced along the radial direction by closed-form features (nose, eye sockets, brow ridge,
//! cheekbones, lips, chin) and tapered toward the jaw. Identity modes are feature-specific
//! deformations followed by generic low-frequency displacement fields of decreasing amplitude
//! (ordered like a PCA, so truncation keeps the strongest); expression modes are localised
//! blendshape-like deformations (jaw open, smiles, pucker, brows, eyelids, cheeks, ...).

use super::FaceModel;
use std::collections::BTreeMap;
use std::f32::consts::PI;

/// Grid columns (longitude) and rows (latitude).
const COLS: usize = 80;
const ROWS: usize = 72;
const THETA_MAX: f32 = 1.75;
const PHI_MIN: f32 = -1.05;
const PHI_MAX: f32 = 1.2;
const PHI_CENTRE: f32 = -0.15;
/// Semi-axes of the head ellipsoid, mm.
const A: f32 = 78.0;
const B: f32 = 108.0;
const C: f32 = 92.0;

/// Number of identity, expression modes.
pub const NUM_SHAPE: usize = 40;
pub const NUM_EXPR: usize = 16;

fn theta_of(i: usize) -> f32 {
    let s = -1.0 + 2.0 * i as f32 / (COLS - 1) as f32;
    THETA_MAX * (0.5 * s + 0.5 * s * s * s)
}

fn phi_of(j: usize) -> f32 {
    let s = -1.0 + 2.0 * j as f32 / (ROWS - 1) as f32;
    let warp = 0.55 * s + 0.45 * s * s * s;
    if s < 0.0 { PHI_CENTRE + (PHI_CENTRE - PHI_MIN) * warp } else { PHI_CENTRE + (PHI_MAX - PHI_CENTRE) * warp }
}

fn g2(t: f32, p: f32, t0: f32, p0: f32, st: f32, sp: f32) -> f32 {
    (-((t - t0) / st).powi(2) - ((p - p0) / sp).powi(2)).exp()
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Radial relief of the mean face at (theta, phi), mm.
fn relief(t: f32, p: f32) -> f32 {
    let at = t.abs();
    // Nose: a ridge from the bridge to the tip, widening toward the nostrils.
    let u = ((0.26 - p) / 0.30).clamp(0.0, 1.0);
    let nose_h = if p > -0.04 {
        (4.0 + 22.0 * u.powf(1.5)) * (1.0 - smoothstep(0.24, 0.34, p))
    } else {
        26.0 * (-((p + 0.04) / 0.05).powi(2)).exp()
    };
    let nose_w = 0.05 + 0.07 * u;
    let nose = nose_h * (-(t / nose_w).powi(2)).exp();
    let alae = 7.0 * (g2(t, p, 0.1, -0.085, 0.045, 0.035) + g2(t, p, -0.1, -0.085, 0.045, 0.035));
    let sockets = -9.0 * (g2(at, p, 0.42, 0.17, 0.13, 0.09));
    let eyeballs = 4.0 * g2(at, p, 0.42, 0.18, 0.07, 0.04);
    let brow_ridge = 5.0 * g2(at, p, 0.4, 0.30, 0.25, 0.05);
    let cheekbones = 6.0 * g2(at, p, 0.55, 0.0, 0.15, 0.1);
    let upper_lip = 7.0 * g2(t, p, 0.0, -0.32, 0.2, 0.04);
    let lower_lip = 6.0 * g2(t, p, 0.0, -0.41, 0.17, 0.045);
    let crease = -3.0 * g2(t, p, 0.0, -0.365, 0.22, 0.012);
    let chin = 9.0 * g2(t, p, 0.0, -0.62, 0.22, 0.09);
    nose + alae + sockets + eyeballs + brow_ridge + cheekbones + upper_lip + lower_lip + crease + chin
}

/// Point on the mean face for parameters (theta, phi).
fn mean_point(t: f32, p: f32) -> [f32; 3] {
    let jaw_taper = 1.0 - 0.22 * smoothstep(0.0, -0.8, p);
    let forehead_flat = 1.0 - 0.08 * smoothstep(0.5, 1.2, p);
    let dir = [p.cos() * t.sin(), p.sin(), p.cos() * t.cos()];
    let base = [A * jaw_taper * dir[0], B * dir[1], C * forehead_flat * dir[2]];
    let r = relief(t, p);
    [base[0] + r * dir[0], base[1] + r * dir[1], base[2] + r * dir[2]]
}

/// (theta, phi) of the 68 iBUG landmarks on the demo face.
fn landmark_params() -> Vec<(f32, f32)> {
    let mut lm = Vec::with_capacity(68);
    // Jaw 0..16: from the subject's right ear level around the chin to the left.
    for k in 0..17 {
        let u = (k as f32 - 8.0) / 8.0;
        let t = 1.42 * u.signum() * u.abs().powf(0.85);
        let p = 0.1 - 0.85 * (1.0 - u.abs().powf(1.7));
        lm.push((t, p));
    }
    // Brows 17..21 (right, outer to inner) and 22..26 (left, inner to outer).
    let brow = |s: f32| -> (f32, f32) {
        let a = s.abs();
        (s, 0.285 + 0.05 * (1.0 - ((a - 0.4) / 0.25).powi(2)).max(0.0))
    };
    for k in 0..5 {
        lm.push(brow(-0.66 + 0.12 * k as f32));
    }
    for k in 0..5 {
        lm.push(brow(0.18 + 0.12 * k as f32));
    }
    // Nose bridge 27..30 down to the tip.
    for k in 0..4 {
        lm.push((0.0, 0.2 - 0.08 * k as f32));
    }
    // Nostrils 31..35.
    for k in 0..5 {
        let t = -0.12 + 0.06 * k as f32;
        lm.push((t, -0.115 - 0.015 * (1.0 - (t / 0.12).powi(2))));
    }
    // Eyes: 36..41 right (outer, upper x2, inner, lower x2), 42..47 left (inner, upper x2, outer, lower x2).
    // Both eyes list their points with increasing theta along the top (iBUG goes clockwise in the
    // image), so the first corner is the outer one of the right eye and the inner one of the left.
    let eye = |c: f32| -> Vec<(f32, f32)> {
        let (o, i) = (c - 0.11, c + 0.11);
        let pc = 0.175;
        vec![
            (o, pc),
            (c - 0.04, pc + 0.035),
            (c + 0.04, pc + 0.035),
            (i, pc),
            (c + 0.04, pc - 0.03),
            (c - 0.04, pc - 0.03),
        ]
    };
    lm.extend(eye(-0.42));
    lm.extend(eye(0.42));
    // Outer lips 48..59: right corner, upper lip to the left corner, lower lip back.
    let (mc, pm) = (0.26, -0.36);
    lm.push((-mc, pm));
    lm.push((-0.17, -0.325));
    lm.push((-0.07, -0.305));
    lm.push((0.0, -0.31));
    lm.push((0.07, -0.305));
    lm.push((0.17, -0.325));
    lm.push((mc, pm));
    lm.push((0.16, -0.405));
    lm.push((0.08, -0.435));
    lm.push((0.0, -0.44));
    lm.push((-0.08, -0.435));
    lm.push((-0.16, -0.405));
    // Inner lips 60..67.
    lm.push((-0.21, -0.362));
    lm.push((-0.08, -0.345));
    lm.push((0.0, -0.343));
    lm.push((0.08, -0.345));
    lm.push((0.21, -0.362));
    lm.push((0.08, -0.38));
    lm.push((0.0, -0.383));
    lm.push((-0.08, -0.38));
    lm
}

fn nearest_vertex(params: &[(f32, f32)], t: f32, p: f32) -> u32 {
    let mut best = (f32::INFINITY, 0usize);
    for (i, &(a, b)) in params.iter().enumerate() {
        let d = (a - t).powi(2) + (b - p).powi(2);
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1 as u32
}

/// Generate the demo model (deterministic; a few thousand vertices).
pub fn demo_model() -> FaceModel {
    let mut params = Vec::with_capacity(COLS * ROWS);
    for j in 0..ROWS {
        for i in 0..COLS {
            params.push((theta_of(i), phi_of(j)));
        }
    }
    let n = params.len();
    let mean: Vec<[f32; 3]> = params.iter().map(|&(t, p)| mean_point(t, p)).collect();
    let mut triangles = Vec::with_capacity(2 * (COLS - 1) * (ROWS - 1));
    for j in 0..ROWS - 1 {
        for i in 0..COLS - 1 {
            let a = (j * COLS + i) as u32;
            let b = a + 1;
            let c = a + COLS as u32 + 1;
            let d = a + COLS as u32;
            triangles.push([a, b, c]);
            triangles.push([a, c, d]);
        }
    }
    let lm_params = landmark_params();
    let landmarks: Vec<u32> = lm_params.iter().map(|&(t, p)| nearest_vertex(&params, t, p)).collect();

    // Contour candidates: the jaw curve and four curves inside it, sampled densely, so a sliding
    // point can move onto the cheek when the head turns.
    let contour = |side: f32| -> Vec<u32> {
        let mut out = Vec::new();
        for layer in 0..5 {
            let shrink = 1.0 - 0.1 * layer as f32;
            for k in 0..33 {
                let u = side * k as f32 / 32.0; // 0 at the chin, +-1 at the ear
                let t = 1.42 * shrink * u.signum() * u.abs().powf(0.85);
                let p = 0.1 - 0.85 * (1.0 - u.abs().powf(1.7)) * (0.8 + 0.2 * shrink);
                out.push(nearest_vertex(&params, t, p));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    };
    let contour_right = contour(-1.0);
    let contour_left = contour(1.0);

    let face_region: Vec<u32> = (0..n).filter(|&i| params[i].0.abs() < 1.35).map(|i| i as u32).collect();

    let shape = identity_modes(&params, &mean);
    let expr = expression_modes(&params, &mean);
    debug_assert_eq!(shape.len(), NUM_SHAPE);
    debug_assert_eq!(expr.len(), NUM_EXPR);
    let flat = |modes: Vec<Vec<[f32; 3]>>| -> Vec<f32> { modes.into_iter().flatten().flatten().collect() };

    let mut metadata = BTreeMap::new();
    metadata.insert("name".into(), "fml-demo".into());
    metadata.insert("note".into(), "procedural demo model: NOT a real face, not learned from scans".into());
    metadata.insert("source".into(), "generated by `fml model demo` (closed-form surface)".into());
    metadata.insert("license".into(), "MIT (generated by fml's own code)".into());
    metadata.insert("units".into(), "mm".into());
    metadata.insert("landmark_scheme".into(), "ibug68".into());

    let mut model = FaceModel {
        mean_shape: mean.iter().flatten().copied().collect(),
        shape_basis: flat(shape),
        shape_std: vec![1.0; NUM_SHAPE],
        expr_basis: flat(expr),
        expr_std: vec![1.0; NUM_EXPR],
        mean_albedo: Vec::new(),
        albedo_basis: Vec::new(),
        albedo_std: Vec::new(),
        triangles,
        landmarks,
        contour_right,
        contour_left,
        skin_mask: Vec::new(),
        face_region,
        metadata,
    };
    super::albedo::apply_procedural_prior(&mut model);
    model.metadata.insert("albedo".into(), "procedural prior".into());
    model.skin_mask = super::regions::derive_skin_mask(&model);
    model
}

/// Unit radial direction at (theta, phi).
fn radial(t: f32, p: f32) -> [f32; 3] {
    [p.cos() * t.sin(), p.sin(), p.cos() * t.cos()]
}

fn along(dir: [f32; 3], s: f32) -> [f32; 3] {
    [dir[0] * s, dir[1] * s, dir[2] * s]
}

/// Identity modes `[K_s][N]`, mm per unit coefficient, strongest first.
fn identity_modes(params: &[(f32, f32)], mean: &[[f32; 3]]) -> Vec<Vec<[f32; 3]>> {
    let front = |t: f32, p: f32| (1.0 - smoothstep(1.0, 1.6, t.abs())) * (1.0 - smoothstep(0.9, 1.2, p));
    type F = Box<dyn Fn(usize) -> [f32; 3]>;
    let pm: Vec<(f32, f32)> = params.to_vec();
    let mv: Vec<[f32; 3]> = mean.to_vec();
    let mut fields: Vec<F> = Vec::new();
    macro_rules! field {
        ($f:expr) => {{
            let pm = pm.clone();
            let mv = mv.clone();
            let f = $f;
            fields.push(Box::new(move |i| f(pm[i].0, pm[i].1, mv[i])));
        }};
    }
    // Feature-specific modes first (the largest variation between faces).
    field!(move |_t: f32, _p: f32, v: [f32; 3]| [v[0] * 0.06, 0.0, 0.0]); // face width
    field!(move |_t: f32, _p: f32, v: [f32; 3]| [0.0, v[1] * 0.05, 0.0]); // face height
    field!(move |_t: f32, _p: f32, v: [f32; 3]| [0.0, 0.0, v[2] * 0.05]); // depth
    field!(move |t: f32, p: f32, _v: [f32; 3]| along(radial(t, p), 5.0 * g2(t, p, 0.0, 0.0, 0.09, 0.12))); // nose size
    field!(move |t: f32, p: f32, v: [f32; 3]| [v[0] * 0.25 * g2(t, p, 0.0, -0.06, 0.14, 0.08), 0.0, 0.0]); // nose width
    field!(move |t: f32, p: f32, _v: [f32; 3]| along(radial(t, p), 4.0 * g2(t, p, 0.0, -0.62, 0.25, 0.12))); // chin
    field!(move |t: f32, p: f32, v: [f32; 3]| [v[0] * 0.08 * smoothstep(-0.1, -0.7, p) * front(t, p), 0.0, 0.0]); // jaw width
    field!(move |t: f32, p: f32, _v: [f32; 3]| along(radial(t, p), 3.5 * g2(t.abs(), p, 0.55, 0.0, 0.15, 0.1))); // cheekbones
    field!(move |t: f32, p: f32, _v: [f32; 3]| along(radial(t, p), -3.0 * g2(t.abs(), p, 0.42, 0.17, 0.12, 0.08))); // eye depth
    field!(move |t: f32, p: f32, _v: [f32; 3]| along(radial(t, p), 3.0 * g2(t.abs(), p, 0.4, 0.3, 0.25, 0.06))); // brow ridge
    field!(move |t: f32, p: f32, _v: [f32; 3]| along(radial(t, p), 2.5 * g2(t, p, 0.0, -0.37, 0.22, 0.06))); // lip fullness
    field!(move |t: f32, p: f32, v: [f32; 3]| [v[0] * 0.12 * g2(t, p, 0.0, -0.37, 0.3, 0.08), 0.0, 0.0]); // mouth width
    field!(move |t: f32, p: f32, _v: [f32; 3]| [t.signum() * 2.5 * g2(t.abs(), p, 0.42, 0.17, 0.15, 0.1), 0.0, 0.0]); // eye spacing
    field!(move |t: f32, p: f32, _v: [f32; 3]| along(radial(t, p), 3.0 * smoothstep(0.4, 1.0, p) * front(t, p))); // forehead slope
    field!(move |t: f32, p: f32, _v: [f32; 3]| [0.0, 2.5 * g2(t, p, 0.0, -0.1, 0.3, 0.35), 0.0]); // nose/mouth height
    // Generic smooth fields: products of low-order cosines over the face, decreasing amplitude.
    let mut k = 0usize;
    'outer: for order in 1..10 {
        for m in 0..=order {
            let nn = order - m;
            for phase in [0.0f32, 0.5] {
                if fields.len() >= NUM_SHAPE {
                    break 'outer;
                }
                let amp = 3.0 / (1.0 + 0.35 * order as f32);
                let (mf, nf) = (m as f32, nn as f32);
                let ph = phase + 0.13 * k as f32;
                k += 1;
                field!(move |t: f32, p: f32, _v: [f32; 3]| {
                    let tt = t / THETA_MAX;
                    let pp = (p - PHI_CENTRE) / 1.1;
                    let w = (PI * mf * 0.5 * tt + PI * ph).cos() * (PI * nf * 0.5 * pp + PI * ph * 0.7).cos();
                    along(radial(t, p), amp * w * front(t, p))
                });
            }
        }
    }
    let n = params.len();
    fields.iter().map(|f| (0..n).map(f).collect()).collect()
}

/// Expression modes `[K_e][N]`, mm at weight 1.
fn expression_modes(params: &[(f32, f32)], mean: &[[f32; 3]]) -> Vec<Vec<[f32; 3]>> {
    let n = params.len();
    let jaw_w = |t: f32, p: f32| smoothstep(-0.30, -0.45, p) * (1.0 - smoothstep(1.0, 1.45, t.abs()));
    let lips = |t: f32, p: f32| g2(t, p, 0.0, -0.37, 0.28, 0.09);
    let corner = |t: f32, p: f32, side: f32| g2(t, p, 0.26 * side, -0.36, 0.1, 0.08);
    let brow = |t: f32, p: f32, side: f32| g2(t, p, 0.4 * side, 0.31, 0.2, 0.1);
    let lid = |t: f32, p: f32, side: f32| g2(t, p, 0.42 * side, 0.2, 0.1, 0.035);
    let cheek = |t: f32, p: f32| g2(t.abs(), p, 0.5, -0.2, 0.16, 0.15);
    let mut modes: Vec<Vec<[f32; 3]>> = Vec::new();
    let mut push = |f: &dyn Fn(f32, f32, [f32; 3]) -> [f32; 3]| {
        modes.push((0..n).map(|i| f(params[i].0, params[i].1, mean[i])).collect());
    };
    // Jaw open: rotate the lower face about a hinge near the ears.
    push(&|t, p, v| {
        let ang = 0.2 * jaw_w(t, p);
        let (py, pz) = (-20.0, -40.0);
        let (y, z) = (v[1] - py, v[2] - pz);
        [0.0, y * ang.cos() - z * ang.sin() + py - v[1], y * ang.sin() + z * ang.cos() + pz - v[2]]
    });
    push(&|t, p, _| {
        let w = corner(t, p, 1.0) + corner(t, p, -1.0);
        [3.0 * t.signum() * w, 4.0 * w, -w]
    }); // smile
    push(&|t, p, _| {
        let w = corner(t, p, -1.0);
        [-3.0 * w, 4.0 * w, -w]
    }); // smile right
    push(&|t, p, _| {
        let w = corner(t, p, 1.0);
        [3.0 * w, 4.0 * w, -w]
    }); // smile left
    push(&|t, p, v| {
        let w = lips(t, p);
        [-0.3 * v[0] * w, 0.0, 6.0 * w]
    }); // pucker
    push(&|t, p, _| {
        let w = lips(t, p);
        [0.0, -1.5 * (p + 0.365).signum() * w, -2.0 * w]
    }); // lip press
    push(&|t, p, _| {
        let w = brow(t, p, 1.0) + brow(t, p, -1.0);
        [0.0, 5.0 * w, 0.5 * w]
    }); // brow raise
    push(&|t, p, _| {
        let w = g2(t.abs(), p, 0.2, 0.29, 0.12, 0.08);
        [-2.0 * t.signum() * w, -3.0 * w, 0.0]
    }); // brow furrow
    push(&|t, p, _| {
        let w = lid(t, p, -1.0);
        [0.0, -3.5 * w, 0.5 * w]
    }); // right eye close
    push(&|t, p, _| {
        let w = lid(t, p, 1.0);
        [0.0, -3.5 * w, 0.5 * w]
    }); // left eye close
    push(&|t, p, _| along(radial(t, p), 5.0 * cheek(t, p))); // cheek puff
    push(&|t, p, _| {
        let w = g2(t.abs(), p, 0.12, -0.2, 0.1, 0.08);
        [0.0, 3.0 * w, 1.0 * w]
    }); // sneer
    push(&|t, p, _| [4.0 * lips(t, p), 0.0, 0.0]); // mouth left
    push(&|t, p, _| [-4.0 * lips(t, p), 0.0, 0.0]); // mouth right
    push(&|t, p, _| {
        let w = g2(t, p, 0.0, -0.43, 0.2, 0.05);
        [0.0, -3.0 * w, 1.0 * w]
    }); // lower lip down
    push(&|t, p, _| {
        let w = g2(t, p, 0.0, -0.31, 0.2, 0.04);
        [0.0, 2.5 * w, 1.0 * w]
    }); // upper lip up
    modes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face_model::topology::vertex_normals;

    #[test]
    fn demo_is_valid_and_deterministic() {
        let a = demo_model();
        a.validate(std::path::Path::new("demo")).unwrap();
        assert_eq!(a, demo_model());
        assert!(a.num_vertices() > 2000 && a.num_vertices() < 10000);
        assert_eq!(a.num_shape(), NUM_SHAPE);
        assert_eq!(a.num_expr(), NUM_EXPR);
        // All 68 landmarks on distinct vertices.
        let mut l = a.landmarks.clone();
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), 68);
        // Mode 0 is the face width: x scaled by 6 %, y and z untouched.
        let m0 = a.shape_mode(0).unwrap();
        assert_eq!(m0.len(), a.num_vertices() * 3);
        assert_eq!(m0[0], a.mean_shape[0] * 0.06);
        assert_eq!((m0[1], m0[2]), (0.0, 0.0));
        assert_eq!(a.shape_mode(NUM_SHAPE - 1).unwrap(), &a.shape_basis[(NUM_SHAPE - 1) * m0.len()..]);
        assert!(a.shape_mode(NUM_SHAPE).unwrap_err().to_string().contains("has 40"));
        assert_eq!(a.expr_mode(1).unwrap(), &a.expr_basis[m0.len()..2 * m0.len()]);
        assert!(a.expr_mode(NUM_EXPR).unwrap_err().to_string().contains("has 16"));
    }

    #[test]
    fn nose_points_at_viewer_and_normals_face_out() {
        let m = demo_model();
        let v = crate::face_model::to_vec3(&m.mean_shape);
        let nose = v[m.landmarks[30] as usize];
        let zmax = v.iter().map(|p| p[2]).fold(f32::MIN, f32::max);
        assert!(zmax - nose[2] < 3.0, "nose tip should be (near) the frontmost point");
        let n = vertex_normals(&v, &m.triangles);
        assert!(n[m.landmarks[30] as usize][2] > 0.8);
        // Subject's right eye (36..41) is at x < 0.
        assert!(v[m.landmarks[36] as usize][0] < 0.0 && v[m.landmarks[45] as usize][0] > 0.0);
        // Interocular distance is human-like (55-70 mm).
        let d = v[m.landmarks[45] as usize][0] - v[m.landmarks[36] as usize][0];
        assert!(d > 70.0 && d < 110.0, "outer eye corners {d} mm apart");
    }
}
