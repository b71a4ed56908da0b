//! Similarity ICP: aligning a predicted mesh to a ground-truth mesh of any topology (rigid
//! transform plus isotropic scale, paper Table 1), and the per-vertex distances after it.

use super::bvh::TriangleBvh;
use super::linalg::{self, Vec3};
use super::similarity::{Similarity, umeyama};
use super::stats::distance_stats;
use crate::error::{Error, Result};
use crate::io::mesh::Mesh;
use serde::{Deserialize, Serialize};

/// ICP settings. Distances are in ground-truth units (mm).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IcpConfig {
    /// Upper bound on iterations.
    pub max_iterations: usize,
    /// Fraction of the ground-truth region's correspondences, the farthest ones, left out of
    /// each update (trimmed ICP), in [0, 1). 10 % by default: robust to the parts of a scan the
    /// prediction does not model (hair, open mouth, scanner holes) without biasing a good fit.
    pub trim_fraction: f64,
    /// Correspondences farther than this are also left out (None: no limit). Applied after
    /// trimming, so both limits hold.
    pub max_distance: Option<f64>,
    /// Estimate the isotropic scale (the paper's protocol) or only a rigid motion (the initial
    /// transform's scale is then kept).
    pub with_scale: bool,
    /// Stop when an update moves the inlier points by less than this RMS distance (mm).
    pub tolerance: f64,
    /// Anderson acceleration: how many past updates to extrapolate from (0: plain ICP).
    ///
    /// Point-to-point ICP converges only linearly, and very slowly where the surfaces can slide
    /// along each other (on the demo face, a 15 degree misalignment still leaves 0.2 mm after
    /// 100 plain iterations). Anderson acceleration of the transform parameters (as in AA-ICP,
    /// Pavlov et al. 2018, and Zhang et al., "Fast and Robust ICP", 2021) keeps the Umeyama
    /// update but extrapolates from the last few; the same case converges (1e-4 mm steps) in
    /// about 40 iterations. An extrapolated transform is kept only if it lowers the trimmed
    /// error, else ICP goes on from the plain update, so that error still decreases monotonically.
    pub anderson_history: usize,
}

impl Default for IcpConfig {
    fn default() -> Self {
        IcpConfig {
            max_iterations: 100,
            trim_fraction: 0.1,
            max_distance: None,
            with_scale: true,
            tolerance: 1e-4,
            anderson_history: 5,
        }
    }
}

impl IcpConfig {
    /// Check the values, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.max_iterations == 0 {
            return Err(Error::invalid("icp.max_iterations must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.trim_fraction) {
            return Err(Error::invalid(format!("icp.trim_fraction {} must be in [0, 1)", self.trim_fraction)));
        }
        if let Some(d) = self.max_distance
            && (!(d > 0.0) || !d.is_finite())
        {
            return Err(Error::invalid(format!("icp.max_distance {d} must be positive and finite")));
        }
        if self.anderson_history > 20 {
            return Err(Error::invalid(format!("icp.anderson_history {} must be at most 20", self.anderson_history)));
        }
        if !(self.tolerance >= 0.0) || !self.tolerance.is_finite() {
            return Err(Error::invalid(format!("icp.tolerance {} must be finite and >= 0", self.tolerance)));
        }
        Ok(())
    }
}

/// The result of [`align`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alignment {
    /// Maps the predicted mesh into the ground-truth frame.
    pub transform: Similarity,
    /// ICP iterations run.
    pub iterations: usize,
    /// Whether the last update moved less than the tolerance (else the iteration limit ended it).
    pub converged: bool,
    /// Correspondences used by the last update.
    pub inliers: usize,
    /// `[R]` distance from each ground-truth region vertex (in `gt_region` order) to the aligned
    /// predicted surface, ground-truth units (mm). All region vertices, trimmed ones included.
    pub distances: Vec<f32>,
    /// Mean of `distances` (mm).
    pub mean: f64,
    /// Population standard deviation of `distances` (mm).
    pub sd: f64,
    /// Median of `distances` (mm).
    pub median: f64,
    /// Root mean square of `distances` (mm).
    pub rmse: f64,
}

/// Initial alignment from corresponding 3D landmarks (predicted -> ground truth): Umeyama with
/// scale. A pair is skipped when either point is missing, i.e. has a non-finite coordinate
/// (write NaN for a landmark the ground truth does not provide).
///
/// # Shapes
/// `pred_lm`, `gt_lm`: `[L, 3]`, same order.
///
/// # Errors
/// Different lengths, or fewer than 3 usable pairs / collinear landmarks.
pub fn init_from_landmarks(pred_lm: &[[f32; 3]], gt_lm: &[[f32; 3]]) -> Result<Similarity> {
    if pred_lm.len() != gt_lm.len() {
        return Err(Error::invalid(format!(
            "landmark initialisation: {} predicted landmarks but {} ground-truth landmarks",
            pred_lm.len(),
            gt_lm.len()
        )));
    }
    let finite = |p: &[f32; 3]| p.iter().all(|x| x.is_finite());
    let (src, dst): (Vec<Vec3>, Vec<Vec3>) = pred_lm
        .iter()
        .zip(gt_lm)
        .filter(|(a, b)| finite(a) && finite(b))
        .map(|(a, b)| (linalg::to_f64(*a), linalg::to_f64(*b)))
        .unzip();
    umeyama(&src, &dst, None, true).map_err(|e| Error::invalid(format!("landmark initialisation: {e}")))
}

/// Initial alignment without landmarks: no rotation (both meshes are assumed to be in the model
/// frame of `docs/conventions.md`, roughly frontal), the centroid of the predicted surface's
/// vertices (those its triangles use: the face region, when the prediction carries only its
/// triangles, not the whole head a model may store) onto the centroid of the ground-truth
/// region, and (if `with_scale`) the RMS radii matched.
///
/// Choice: this assumes the predicted surface and the region cover about the same part of the
/// face; when the prediction is much larger than the crop (a full head against a face crop)
/// the scale starts too small and ICP must recover it. Prefer [`init_from_landmarks`].
///
/// # Errors
/// As [`align`] for bad meshes or region; a ground-truth region or predicted mesh with all
/// points coincident.
pub fn init_from_centroids(pred: &Mesh, gt: &Mesh, gt_region: &[u32], with_scale: bool) -> Result<Similarity> {
    check_vertices(pred, "predicted mesh")?;
    let gt_pts = region_points(gt, gt_region)?;
    // Vertices no triangle uses are not part of the surface ICP measures against.
    let mut used = vec![pred.triangles.is_empty(); pred.vertices.len()];
    for t in &pred.triangles {
        for &i in t {
            if let Some(u) = used.get_mut(i as usize) {
                *u = true;
            }
        }
    }
    let pred_pts: Vec<Vec3> =
        pred.vertices.iter().zip(&used).filter(|(_, u)| **u).map(|(&v, _)| linalg::to_f64(v)).collect();
    let (cp, rp) = centroid_and_rms(&pred_pts);
    let (cg, rg) = centroid_and_rms(&gt_pts);
    if !(rp > 0.0) || !(rg > 0.0) {
        return Err(Error::invalid(format!(
            "centroid initialisation: {} (RMS radius {rp} of the predicted mesh, {rg} of the ground-truth region)",
            "all points coincide"
        )));
    }
    let scale = if with_scale { rg / rp } else { 1.0 };
    Ok(Similarity { scale, rotation: linalg::IDENTITY, translation: linalg::sub(cg, linalg::scale(cp, scale)) })
}

fn centroid_and_rms(p: &[Vec3]) -> (Vec3, f64) {
    let n = p.len().max(1) as f64;
    let c = linalg::scale(p.iter().fold([0.0; 3], |a, &b| linalg::add(a, b)), 1.0 / n);
    let r = (p.iter().map(|&x| linalg::dist_sq(x, c)).sum::<f64>() / n).sqrt();
    (c, r)
}

fn check_vertices(mesh: &Mesh, what: &str) -> Result<()> {
    if mesh.vertices.is_empty() {
        return Err(Error::invalid(format!("{what}: no vertices")));
    }
    if let Some(i) = mesh.vertices.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
        return Err(Error::invalid(format!("{what}: vertex {i} is not finite")));
    }
    Ok(())
}

/// The ground-truth region's points `[R, 3]`, checking indices and values.
fn region_points(gt: &Mesh, gt_region: &[u32]) -> Result<Vec<Vec3>> {
    if gt_region.len() < 3 {
        return Err(Error::invalid(format!(
            "ground-truth region has {} vertices; at least 3 are needed for an alignment",
            gt_region.len()
        )));
    }
    let n = gt.vertices.len();
    gt_region
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let v = gt.vertices.get(i as usize).ok_or_else(|| {
                Error::invalid(format!(
                    "ground-truth region entry {k}: vertex {i} is past the {n} vertices of the mesh"
                ))
            })?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::invalid(format!("ground-truth mesh: region vertex {i} is not finite")));
            }
            Ok(linalg::to_f64(*v))
        })
        .collect()
}

/// Correspondences of the region points to the predicted surface under `t`: the closest
/// surface point, in the ground-truth frame, and its distance.
///
/// The tree is built once over the untransformed prediction: a similarity maps closest points
/// to closest points, so each ground-truth point is taken back by `t^-1`, matched, and the
/// match is carried forward by `t`.
fn correspond(bvh: &TriangleBvh, t: &Similarity, gt: &[Vec3]) -> Result<(Vec<Vec3>, Vec<f64>)> {
    let inv = t.inverse();
    let queries: Vec<Vec3> = gt.iter().map(|&g| inv.apply(g)).collect(); // [R, 3]
    let hits = bvh.closest_many(&queries);
    let mut points = Vec::with_capacity(gt.len());
    let mut dist = Vec::with_capacity(gt.len());
    for (i, h) in hits.iter().enumerate() {
        if !h.is_hit() {
            return Err(Error::invalid(format!(
                "ICP: no closest point for ground-truth region point {i} (transform {t:?} is degenerate)"
            )));
        }
        let p = t.apply(h.point);
        dist.push(linalg::dist_sq(p, gt[i]).sqrt());
        points.push(p);
    }
    Ok((points, dist))
}

/// The indices used by an update: the best `1 - trim_fraction` of the correspondences (at
/// least 3), then only those within `max_distance`. Ties are broken by index (deterministic).
/// Also returns the trimmed energy: the mean over the best-K of the squared distance, clamped at
/// `max_distance` (the objective that trimmed ICP decreases).
fn select_inliers(dist: &[f64], cfg: &IcpConfig) -> (Vec<usize>, f64) {
    let n = dist.len();
    let keep = (((1.0 - cfg.trim_fraction) * n as f64).ceil() as usize).clamp(3.min(n), n);
    let mut idx: Vec<usize> = (0..n).collect();
    if keep < n {
        idx.select_nth_unstable_by(keep, |&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)));
        idx.truncate(keep);
        idx.sort_unstable();
    }
    let clamp = cfg.max_distance.unwrap_or(f64::INFINITY);
    let energy = idx.iter().map(|&i| dist[i].min(clamp).powi(2)).sum::<f64>() / keep.max(1) as f64;
    idx.retain(|&i| dist[i] <= clamp);
    (idx, energy)
}

/// Transform parameters for Anderson acceleration: `[radius * rotation vector, radius * ln
/// scale, translation]`, all in mm so that one Euclidean norm weighs them sensibly (`radius`
/// is the RMS radius of the ground-truth region).
type Params = [f64; 7];

fn to_params(t: &Similarity, radius: f64) -> Params {
    let w = linalg::rotation_log(&t.rotation);
    let s = t.scale.ln();
    [radius * w[0], radius * w[1], radius * w[2], radius * s, t.translation[0], t.translation[1], t.translation[2]]
}

fn from_params(x: &Params, radius: f64) -> Similarity {
    Similarity {
        scale: (x[3] / radius).exp(),
        rotation: linalg::rotation_exp([x[0] / radius, x[1] / radius, x[2] / radius]),
        translation: [x[4], x[5], x[6]],
    }
}

/// Anderson mixing (type II) over the history of fixed-point updates `g_j = G(x_j)` and
/// residuals `f_j = g_j - x_j` (oldest first): `g_k - dG theta` with `theta` the least-squares
/// solution of `dF theta ~ f_k`, where `dF`, `dG` hold the successive differences.
/// Solved by modified Gram-Schmidt QR, dropping (nearly) dependent columns.
fn anderson(hist: &std::collections::VecDeque<(Params, Params)>) -> Params {
    let (g_k, f_k) = *hist.back().expect("called with at least two entries");
    let m = hist.len() - 1;
    let mut df: Vec<Params> = Vec::with_capacity(m);
    let mut dg: Vec<Params> = Vec::with_capacity(m);
    for j in 0..m {
        let (g0, f0) = hist[j];
        let (g1, f1) = hist[j + 1];
        df.push(std::array::from_fn(|i| f1[i] - f0[i]));
        dg.push(std::array::from_fn(|i| g1[i] - g0[i]));
    }
    let dot7 = |a: &Params, b: &Params| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    // QR of dF: q (orthonormal columns), r (upper triangular), over the kept columns.
    let mut q: Vec<Params> = Vec::new();
    let mut r: Vec<Vec<f64>> = Vec::new(); // r[col] = coefficients on q[0..=col]
    let mut kept: Vec<usize> = Vec::new();
    for (j, col) in df.iter().enumerate() {
        let mut v = *col;
        let mut coeffs = Vec::with_capacity(q.len() + 1);
        for qi in &q {
            let c = dot7(qi, &v);
            for (vi, qv) in v.iter_mut().zip(qi) {
                *vi -= c * qv;
            }
            coeffs.push(c);
        }
        let n = dot7(&v, &v).sqrt();
        if !(n > 1e-10 * dot7(col, col).sqrt().max(f64::MIN_POSITIVE)) {
            continue;
        }
        coeffs.push(n);
        q.push(v.map(|x| x / n));
        r.push(coeffs);
        kept.push(j);
    }
    if kept.is_empty() {
        return g_k;
    }
    // theta = R^-1 Q^T f_k by back substitution.
    let qtf: Vec<f64> = q.iter().map(|qi| dot7(qi, &f_k)).collect();
    let k = kept.len();
    let mut theta = vec![0.0; k];
    for i in (0..k).rev() {
        let mut acc = qtf[i];
        for jj in i + 1..k {
            acc -= r[jj][i] * theta[jj];
        }
        theta[i] = acc / r[i][i];
    }
    let mut x = g_k;
    for (t, &j) in theta.iter().zip(&kept) {
        for (xi, d) in x.iter_mut().zip(&dg[j]) {
            *xi -= t * d;
        }
    }
    if x.iter().all(|v| v.is_finite()) { x } else { g_k }
}

/// Align `pred` onto `gt` by similarity ICP and measure the per-vertex error.
///
/// Each iteration matches every vertex of `gt_region` to its closest point on the currently
/// transformed predicted surface, drops the worst `trim_fraction` and those beyond
/// `max_distance`, estimates the incremental similarity with [`umeyama`] (ground-truth point
/// <- predicted closest point) and composes it onto the transform; it stops when the update
/// moves the inliers by less than `tolerance` (RMS) or after `max_iterations`. The start is
/// `init` (e.g. from [`init_from_landmarks`]) or [`init_from_centroids`].
///
/// Matching ground-truth vertices to the predicted *surface* (not predicted vertices to the
/// ground truth) makes the error independent of the prediction's tessellation and lets the
/// prediction cover more than the ground-truth region. It does depend on the ground truth's:
/// every region vertex counts once (no area weights), so a ground-truth mesh denser in one
/// part of the face weights that part more, as for any per-vertex error over a scan.
///
/// # Shapes
/// `gt_region`: `[R]` vertex indices into `gt`; `Alignment::distances`: `[R]`.
///
/// # Errors
/// Invalid configuration, a predicted mesh without triangles or with bad indices or non-finite
/// vertices, a region with fewer than 3 vertices, out-of-range indices or non-finite vertices,
/// an invalid `init`, or an update with fewer than 3 usable (non-collinear) correspondences.
pub fn align(
    pred: &Mesh,
    gt: &Mesh,
    gt_region: &[u32],
    init: Option<Similarity>,
    cfg: &IcpConfig,
) -> Result<Alignment> {
    cfg.validate()?;
    check_vertices(pred, "predicted mesh")?;
    let bvh = TriangleBvh::new(pred).map_err(|e| Error::invalid(format!("predicted mesh: {e}")))?;
    let gt_pts = region_points(gt, gt_region)?; // [R, 3]
    let mut t = match init {
        Some(t) => {
            t.validate("initial alignment")?;
            t
        }
        None => init_from_centroids(pred, gt, gt_region, cfg.with_scale)?,
    };

    let (_, radius) = centroid_and_rms(&gt_pts);
    let radius = if radius > 0.0 { radius } else { 1.0 };
    let mut iterations = 0;
    let mut converged = false;
    let mut inliers = 0;
    // The transform at which correspondences are taken next (plain or extrapolated).
    let mut x = to_params(&t, radius);
    let mut trial = t;
    // Fallback after a rejected extrapolation: the last plain update and the energy before it.
    let mut last_plain: Params = x;
    let mut last_energy = f64::INFINITY;
    let mut extrapolated = false;
    let mut hist: std::collections::VecDeque<(Params, Params)> = std::collections::VecDeque::new();
    while iterations < cfg.max_iterations {
        let (points, dist) = correspond(&bvh, &trial, &gt_pts)?;
        let (sel, energy) = select_inliers(&dist, cfg);
        if extrapolated && !(energy < last_energy) {
            // The extrapolation did not help: continue from the plain update, afresh.
            extrapolated = false;
            hist.clear();
            x = last_plain;
            trial = from_params(&x, radius);
            continue;
        }
        let src: Vec<Vec3> = sel.iter().map(|&i| points[i]).collect(); // [I, 3]
        let dst: Vec<Vec3> = sel.iter().map(|&i| gt_pts[i]).collect(); // [I, 3]
        let step = umeyama(&src, &dst, None, cfg.with_scale).map_err(|e| {
            Error::invalid(format!(
                "ICP iteration {}: {} of {} correspondences kept: {e}",
                iterations + 1,
                sel.len(),
                dist.len()
            ))
        })?;
        let motion = (src.iter().map(|&p| linalg::dist_sq(step.apply(p), p)).sum::<f64>() / src.len() as f64).sqrt();
        t = step.compose(&trial);
        t.reorthonormalize();
        iterations += 1;
        inliers = sel.len();
        if motion < cfg.tolerance {
            converged = true;
            break;
        }
        let g = to_params(&t, radius);
        let f: Params = std::array::from_fn(|i| g[i] - x[i]);
        hist.push_back((g, f));
        while hist.len() > cfg.anderson_history + 1 {
            hist.pop_front();
        }
        last_plain = g;
        last_energy = energy;
        if hist.len() >= 2 {
            x = anderson(&hist);
            extrapolated = true;
        } else {
            x = g;
            extrapolated = false;
        }
        trial = from_params(&x, radius);
    }

    let (_, dist) = correspond(&bvh, &t, &gt_pts)?;
    let distances: Vec<f32> = dist.iter().map(|&d| d as f32).collect();
    let s = distance_stats(&distances);
    Ok(Alignment {
        transform: t,
        iterations,
        converged,
        inliers,
        distances,
        mean: s.mean,
        sd: s.sd,
        median: s.median,
        rmse: s.rmse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::region::face_region_by_radius;
    use crate::face_model::demo::demo_model;
    use std::time::Instant;

    fn all(mesh: &Mesh) -> Vec<u32> {
        (0..mesh.vertices.len() as u32).collect()
    }

    fn transform(axis: Vec3, deg: f64, scale: f64, shift: Vec3) -> Similarity {
        Similarity { scale, rotation: linalg::axis_angle(axis, deg.to_radians()), translation: shift }
    }

    /// Area-weighted vertex normals.
    fn vertex_normals(mesh: &Mesh) -> Vec<Vec3> {
        let v: Vec<Vec3> = mesh.vertices.iter().map(|&p| linalg::to_f64(p)).collect();
        let mut n = vec![[0.0; 3]; v.len()];
        for t in &mesh.triangles {
            let [a, b, c] = t.map(|i| v[i as usize]);
            let fnrm = linalg::cross(linalg::sub(b, a), linalg::sub(c, a));
            for &i in t {
                n[i as usize] = linalg::add(n[i as usize], fnrm);
            }
        }
        n.iter().map(|&x| linalg::scale(x, 1.0 / linalg::norm(x).max(1e-30))).collect()
    }

    fn assert_transform_close(a: &Similarity, b: &Similarity, angle_deg: f64, rel_scale: f64, shift: f64) {
        let d = a.compose(&b.inverse());
        assert!(d.rotation_angle().to_degrees() < angle_deg, "rotation off by {} deg", d.rotation_angle().to_degrees());
        assert!((d.scale - 1.0).abs() < rel_scale, "scale off: {} vs {}", a.scale, b.scale);
        assert!(linalg::norm(linalg::sub(a.translation, b.translation)) < shift, "{a:?} vs {b:?}");
    }

    #[test]
    fn a_mesh_and_itself() {
        let mesh = demo_model().mean_mesh();
        let a = align(&mesh, &mesh, &all(&mesh), None, &IcpConfig::default()).unwrap();
        assert!(a.converged);
        assert!(a.iterations <= 3, "{} iterations", a.iterations);
        assert!(a.distances.iter().all(|&d| d < 1e-4), "max {}", a.distances.iter().fold(0f32, |m, &d| m.max(d)));
        assert!(a.mean < 1e-5 && a.rmse < 1e-5);
        assert_transform_close(&a.transform, &Similarity::identity(), 1e-4, 1e-7, 1e-4);
    }

    #[test]
    fn recovers_a_rotated_scaled_shifted_copy() {
        let model = demo_model();
        let gt = model.mean_mesh();
        let truth = transform([0.3, 1.0, 0.2], 15.0, 0.9, [6.0, -4.0, 9.0]);
        let pred = truth.apply_mesh(&gt);
        let region = all(&gt);
        let start = Instant::now();
        let a = align(&pred, &gt, &region, None, &IcpConfig::default()).unwrap();
        let elapsed = start.elapsed();
        println!(
            "demo mean mesh ({} vertices, {} triangles) vs a 15 deg / 0.9 / 11.5 mm copy: {} iterations, {:.1} ms, \
             mean {:.2e} mm",
            gt.vertices.len(),
            gt.triangles.len(),
            a.iterations,
            elapsed.as_secs_f64() * 1e3,
            a.mean
        );
        assert!(a.mean < 0.05, "mean {} mm after {} iterations", a.mean, a.iterations);
        assert_eq!(a.distances.len(), region.len());
        assert_transform_close(&a.transform, &truth.inverse(), 0.05, 1e-3, 0.1);
    }

    #[test]
    fn landmark_initialisation_with_a_face_region_and_missing_landmarks() {
        let model = demo_model();
        let gt = model.mean_mesh();
        let truth = transform([-1.0, 0.4, 0.1], 35.0, 1.2, [-20.0, 5.0, 40.0]);
        let pred = truth.apply_mesh(&gt);
        let mut gt_lm: Vec<[f32; 3]> = model.landmarks.iter().map(|&i| gt.vertices[i as usize]).collect();
        let pred_lm: Vec<[f32; 3]> = model.landmarks.iter().map(|&i| pred.vertices[i as usize]).collect();
        // The ground truth lacks some landmarks, and one is wildly wrong but missing in the prediction.
        gt_lm[3] = [f32::NAN; 3];
        gt_lm[30][1] = f32::NAN;
        let mut pred_lm = pred_lm;
        pred_lm[40] = [f32::NAN; 3];
        gt_lm[40] = [1e4, 1e4, 1e4];
        let init = init_from_landmarks(&pred_lm, &gt_lm).unwrap();
        assert_transform_close(&init, &truth.inverse(), 1e-3, 1e-5, 1e-3);
        let a = align(&pred, &gt, &model.face_region, Some(init), &IcpConfig::default()).unwrap();
        assert!(a.mean < 0.01, "mean {}", a.mean);
        assert_eq!(a.distances.len(), model.face_region.len());
        assert!(init_from_landmarks(&pred_lm[..2], &gt_lm[..2]).is_err());
        assert!(init_from_landmarks(&pred_lm, &gt_lm[..10]).unwrap_err().to_string().contains("68 predicted"));
    }

    #[test]
    fn a_bump_shows_up_where_it_is_and_nowhere_else() {
        let gt_base = demo_model().mean_mesh();
        let normals = vertex_normals(&gt_base);
        // A 2 mm Gaussian bump (sigma 6 mm) on the cheek region, grown along the normals.
        let nose = crate::eval::region::nose_tip_by_max_z(&gt_base).unwrap();
        let target = linalg::to_f64([nose[0] + 35.0, nose[1], nose[2] - 25.0]);
        let centre = gt_base
            .vertices
            .iter()
            .map(|&v| linalg::to_f64(v))
            .min_by(|&a, &b| linalg::dist_sq(a, target).total_cmp(&linalg::dist_sq(b, target)))
            .unwrap();
        let (amp, sigma) = (2.0, 6.0);
        let heights: Vec<f64> = gt_base
            .vertices
            .iter()
            .map(|&v| amp * (-linalg::dist_sq(linalg::to_f64(v), centre) / (2.0 * sigma * sigma)).exp())
            .collect();
        let mut gt = gt_base.clone();
        for (i, v) in gt.vertices.iter_mut().enumerate() {
            let p = linalg::add(linalg::to_f64(*v), linalg::scale(normals[i], heights[i]));
            *v = p.map(|x| x as f32);
        }
        let truth = transform([0.0, 1.0, 0.3], 8.0, 1.05, [2.0, 3.0, -1.0]);
        let pred = truth.apply_mesh(&gt_base);
        let a = align(&pred, &gt, &all(&gt), None, &IcpConfig::default()).unwrap();
        let mut checked = (0, 0);
        for (i, &d) in a.distances.iter().enumerate() {
            let (h, d) = (heights[i], d as f64);
            if h > 0.5 * amp {
                assert!((d - h).abs() < 0.1 * h, "vertex {i}: distance {d}, bump {h}");
                checked.0 += 1;
            } else if h < 1e-3 {
                assert!(d < 0.02, "vertex {i}: distance {d} away from the bump");
                checked.1 += 1;
            }
        }
        assert!(checked.0 >= 5 && checked.1 > gt.vertices.len() / 2, "{checked:?}");
        assert_transform_close(&a.transform, &truth.inverse(), 0.05, 1e-3, 0.1);
    }

    /// A smooth, asymmetric height field sampled on an `n x n` grid over [-60, 60]^2.
    fn height_field(n: usize) -> Mesh {
        let f = |x: f64, y: f64| {
            30.0 * (-(x * x / 1600.0 + y * y / 900.0)).exp()
                + 6.0 * (-((x - 20.0).powi(2) + (y + 15.0).powi(2)) / 300.0).exp()
                + 0.1 * x
        };
        let mut m = Mesh::default();
        for j in 0..n {
            for i in 0..n {
                let x = -60.0 + 120.0 * i as f64 / (n - 1) as f64;
                let y = -60.0 + 120.0 * j as f64 / (n - 1) as f64;
                m.vertices.push([x as f32, y as f32, f(x, y) as f32]);
            }
        }
        for j in 0..n - 1 {
            for i in 0..n - 1 {
                let a = (j * n + i) as u32;
                let (b, c, d) = (a + 1, a + n as u32 + 1, a + n as u32);
                m.triangles.push([a, b, c]);
                m.triangles.push([a, c, d]);
            }
        }
        m
    }

    #[test]
    fn different_tessellations_of_one_surface() {
        let gt = height_field(121); // 1 mm spacing
        let coarse = height_field(41); // 3 mm spacing
        let region = face_region_by_radius(&gt, [0.0, 0.0, 30.0], 60.0);
        assert!(region.len() > 5000 && region.len() < gt.vertices.len());
        // The interpolation error of the coarse mesh at the true pose is the floor for the error.
        let region_pts: Vec<[f32; 3]> = region.iter().map(|&i| gt.vertices[i as usize]).collect();
        let baseline = crate::eval::bvh::point_to_surface_distances(&region_pts, &coarse).unwrap();
        let base_mean = baseline.iter().map(|&d| d as f64).sum::<f64>() / baseline.len() as f64;
        assert!(base_mean > 0.001 && base_mean < 0.1, "baseline {base_mean}");
        let truth = transform([0.2, -0.5, 1.0], 12.0, 1.1, [3.0, -2.0, 5.0]);
        let pred = truth.apply_mesh(&coarse);
        let a = align(&pred, &gt, &region, None, &IcpConfig::default()).unwrap();
        assert!(a.mean < base_mean * 1.05 + 0.002, "mean {} vs tessellation error {base_mean}", a.mean);
        assert_transform_close(&a.transform, &truth.inverse(), 0.1, 2e-3, 0.3);
    }

    #[test]
    fn deterministic_and_configurable() {
        let mesh = demo_model().mean_mesh();
        let pred = transform([1.0, 0.0, 0.0], 10.0, 1.0, [1.0, 2.0, 3.0]).apply_mesh(&mesh);
        let cfg = IcpConfig { max_iterations: 4, trim_fraction: 0.2, max_distance: Some(30.0), ..Default::default() };
        let a = align(&pred, &mesh, &all(&mesh), None, &cfg).unwrap();
        let b = align(&pred, &mesh, &all(&mesh), None, &cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.iterations, 4);
        assert!(!a.converged);
        assert!(a.inliers <= (0.8 * mesh.vertices.len() as f64).ceil() as usize);
        // Anderson acceleration converges much faster than plain ICP on the same budget.
        let budget = |anderson_history| IcpConfig { max_iterations: 25, anderson_history, ..Default::default() };
        let fast = align(&pred, &mesh, &all(&mesh), None, &budget(5)).unwrap();
        let plain = align(&pred, &mesh, &all(&mesh), None, &budget(0)).unwrap();
        assert!(fast.mean < 0.2 * plain.mean, "accelerated {} vs plain {}", fast.mean, plain.mean);
        let rigid =
            align(&pred, &mesh, &all(&mesh), None, &IcpConfig { with_scale: false, ..Default::default() }).unwrap();
        assert_eq!(rigid.transform.scale, 1.0);
        assert!(rigid.mean < 0.05, "{}", rigid.mean);
        let toml_cfg: IcpConfig = toml::from_str("trim_fraction = 0.05\nmax_distance = 10.0").unwrap();
        assert_eq!(toml_cfg.trim_fraction, 0.05);
        assert_eq!(toml_cfg.max_iterations, IcpConfig::default().max_iterations);
        assert!(toml::from_str::<IcpConfig>("trim = 0.05").is_err());
    }

    /// The centroid start looks at the predicted surface only: vertices no triangle uses (the
    /// rest of a head around a face-region surface) do not pull the start away.
    #[test]
    fn centroid_start_ignores_vertices_off_the_surface() {
        let mesh = demo_model().mean_mesh();
        let mut head = mesh.clone();
        head.vertices.extend((0..3000).map(|k| [0.0, -300.0 + k as f32 * 0.01, -400.0]));
        let t = init_from_centroids(&head, &mesh, &all(&mesh), true).unwrap();
        assert_transform_close(&t, &Similarity::identity(), 1e-9, 1e-6, 1e-3);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mesh = demo_model().mean_mesh();
        let cfg = IcpConfig::default();
        let err = |r: Result<Alignment>| r.unwrap_err().to_string();
        assert!(err(align(&mesh, &mesh, &[0, 1], None, &cfg)).contains("at least 3"));
        assert!(err(align(&mesh, &mesh, &[0, 1, 99_999], None, &cfg)).contains("vertex 99999"));
        let mut nan = mesh.clone();
        nan.vertices[7][0] = f32::NAN;
        assert!(err(align(&nan, &mesh, &[0, 1, 2], None, &cfg)).contains("predicted mesh: vertex 7"));
        assert!(err(align(&mesh, &nan, &[5, 6, 7], None, &cfg)).contains("region vertex 7"));
        let no_tris = Mesh { triangles: vec![], ..mesh.clone() };
        assert!(err(align(&no_tris, &mesh, &[0, 1, 2], None, &cfg)).contains("no triangles"));
        let bad_cfg = IcpConfig { trim_fraction: 1.0, ..Default::default() };
        assert!(err(align(&mesh, &mesh, &all(&mesh), None, &bad_cfg)).contains("trim_fraction"));
        let bad_init = Similarity { scale: 0.0, ..Similarity::identity() };
        assert!(err(align(&mesh, &mesh, &all(&mesh), Some(bad_init), &cfg)).contains("scale"));
        // Every correspondence beyond max_distance: a clear error, not a panic.
        let far = transform([0.0, 0.0, 1.0], 0.0, 1.0, [500.0, 0.0, 0.0]);
        let tight = IcpConfig { max_distance: Some(1.0), ..Default::default() };
        assert!(err(align(&mesh, &mesh, &all(&mesh), Some(far), &tight)).contains("correspondences kept"));
    }
}
