//! The face model: the affine 3DMM base level (paper eqs. 3-4), its file format, importers,
//! the built-in demo model, topology helpers and the multi-level model with learned correctives.
//!
//! [`FaceModel`] holds the static base model on the CPU as flat `f32` arrays in the
//! interchange layout of `docs/face-model-format.md`; [`multilevel::MultiLevelModel`] turns it
//! into candle tensors and adds the learned corrective bases (eqs. 1-2).

pub mod albedo;
pub mod bfm;
pub mod demo;
pub mod format;
pub mod ict;
pub mod import;
pub mod mat;
pub mod multilevel;
pub mod regions;
pub mod topology;

use crate::error::{Error, Result};
use crate::io::mesh::Mesh;
use std::collections::BTreeMap;
use std::path::Path;

/// Smallest [`FaceModel::frontal_area_ratio`] a valid model has. Correctly wound faces lie far
/// above it (the ICT file 0.53, the demo model 0.54, a hemisphere 0.5); every triangle reversed
/// gives the same value negated, and a mixed winding nearly 0.
pub const MIN_FRONTAL_AREA_RATIO: f64 = 0.2;

/// A static affine face model (the paper's base level).
///
/// Bases are stored mode-major: `shape_basis[k * 3N + 3i + c]` is coordinate `c` of vertex `i`
/// in mode `k`. Coefficients follow the prior `N(0, std_k^2)`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaceModel {
    /// `[N, 3]` neutral mean geometry, model frame, millimetres.
    pub mean_shape: Vec<f32>,
    /// `[K_s, N, 3]` identity modes.
    pub shape_basis: Vec<f32>,
    /// `[K_s]` prior standard deviation of each identity coefficient.
    pub shape_std: Vec<f32>,
    /// `[K_e, N, 3]` expression modes.
    pub expr_basis: Vec<f32>,
    /// `[K_e]` prior standard deviation of each expression coefficient.
    pub expr_std: Vec<f32>,
    /// `[N, 3]` mean reflectance, linear RGB in [0, 1].
    pub mean_albedo: Vec<f32>,
    /// `[K_r, N, 3]` reflectance modes.
    pub albedo_basis: Vec<f32>,
    /// `[K_r]` prior standard deviation of each reflectance coefficient.
    pub albedo_std: Vec<f32>,
    /// `[F, 3]` 0-based triangles, counter-clockwise seen from outside (normals point out).
    pub triangles: Vec<[u32; 3]>,
    /// `[68]` vertex of each iBUG-68 landmark (Multi-PIE order).
    pub landmarks: Vec<u32>,
    /// Candidate vertices for the sliding contour points 0..7 (subject's right jaw).
    pub contour_right: Vec<u32>,
    /// Candidate vertices for the sliding contour points 9..16 (subject's left jaw).
    pub contour_left: Vec<u32>,
    /// Vertices of the skin region used by the global reflectance constancy term (eq. 14).
    pub skin_mask: Vec<u32>,
    /// Vertices used by the photometric term and by evaluation (the face proper).
    pub face_region: Vec<u32>,
    /// Free-form metadata: name, source, license, units, albedo origin, ...
    pub metadata: BTreeMap<String, String>,
}

impl FaceModel {
    /// Number of vertices N.
    pub fn num_vertices(&self) -> usize {
        self.mean_shape.len() / 3
    }
    /// Number of identity modes K_s.
    pub fn num_shape(&self) -> usize {
        self.shape_std.len()
    }
    /// Number of expression modes K_e.
    pub fn num_expr(&self) -> usize {
        self.expr_std.len()
    }
    /// Number of reflectance modes K_r.
    pub fn num_albedo(&self) -> usize {
        self.albedo_std.len()
    }

    /// Identity mode `k` (mm per unit coefficient, before its prior SD), `[3N]`.
    pub fn shape_mode(&self, k: usize) -> Result<&[f32]> {
        if k >= self.num_shape() {
            return Err(Error::invalid(format!("no identity mode {k}: the model has {}", self.num_shape())));
        }
        let n3 = self.num_vertices() * 3;
        Ok(&self.shape_basis[k * n3..(k + 1) * n3])
    }

    /// Expression mode `k` (mm at weight 1, before its prior SD), `[3N]`.
    pub fn expr_mode(&self, k: usize) -> Result<&[f32]> {
        if k >= self.num_expr() {
            return Err(Error::invalid(format!("no expression mode {k}: the model has {}", self.num_expr())));
        }
        let n3 = self.num_vertices() * 3;
        Ok(&self.expr_basis[k * n3..(k + 1) * n3])
    }

    /// A metadata value, or "" when absent.
    pub fn meta(&self, key: &str) -> &str {
        self.metadata.get(key).map(String::as_str).unwrap_or("")
    }

    /// Load a native model (safetensors). A model without reflectance (e.g. the ICT file) gets
    /// the procedural albedo prior of [`albedo`], and one without a skin mask a derived mask.
    pub fn load(path: impl AsRef<Path>) -> Result<FaceModel> {
        format::load(path.as_ref())
    }

    /// Save as native safetensors, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        format::save(self, path.as_ref())
    }

    /// Check every array's size, every index's range and every value's finiteness, and that the
    /// triangles wind outward (see [`FaceModel::frontal_area_ratio`]); `origin` names the source
    /// in the error.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let n = self.num_vertices();
        let bad = |what: String| Err(Error::format(origin, what));
        if n == 0 || !self.mean_shape.len().is_multiple_of(3) {
            return bad(format!("mean_shape has {} values, not a positive multiple of 3", self.mean_shape.len()));
        }
        let checks: [(&str, &[f32], usize); 4] = [
            ("shape_basis", &self.shape_basis, self.num_shape()),
            ("expr_basis", &self.expr_basis, self.num_expr()),
            ("albedo_basis", &self.albedo_basis, self.num_albedo()),
            ("mean_albedo", &self.mean_albedo, 1),
        ];
        for (name, data, k) in checks {
            if data.len() != k * n * 3 {
                return bad(format!("{name} has {} values, expected {k} x {n} x 3", data.len()));
            }
        }
        for (name, data) in [
            ("mean_shape", &self.mean_shape),
            ("shape_basis", &self.shape_basis),
            ("shape_std", &self.shape_std),
            ("expr_basis", &self.expr_basis),
            ("expr_std", &self.expr_std),
            ("mean_albedo", &self.mean_albedo),
            ("albedo_basis", &self.albedo_basis),
            ("albedo_std", &self.albedo_std),
        ] {
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return bad(format!("{name}[{i}] is {} (NaN or infinite)", data[i]));
            }
        }
        for (name, std) in
            [("shape_std", &self.shape_std), ("expr_std", &self.expr_std), ("albedo_std", &self.albedo_std)]
        {
            if let Some(i) = std.iter().position(|&s| s <= 0.0) {
                return bad(format!("{name}[{i}] = {} is not positive", std[i]));
            }
        }
        if self.triangles.is_empty() {
            return bad("triangles is empty".into());
        }
        if let Some(t) = self.triangles.iter().position(|t| t.iter().any(|&i| i as usize >= n)) {
            return bad(format!("triangles[{t}] = {:?} indexes past the {n} vertices", self.triangles[t]));
        }
        if self.landmarks.len() != 68 {
            return bad(format!("landmarks has {} entries, expected 68 (iBUG-68)", self.landmarks.len()));
        }
        for (name, set) in [
            ("landmarks", &self.landmarks),
            ("contour_right", &self.contour_right),
            ("contour_left", &self.contour_left),
            ("skin_mask", &self.skin_mask),
            ("face_region", &self.face_region),
        ] {
            if let Some(i) = set.iter().position(|&v| v as usize >= n) {
                return bad(format!("{name}[{i}] = {} is not a vertex index (N = {n})", set[i]));
            }
        }
        // Winding, once the triangle and landmark indices are known to be good. A model wound the
        // wrong way is well formed otherwise but culls its front faces and renders garbage, and
        // the skin mask derived from its normals on loading comes out nearly empty: checked
        // before the vertex sets so that the error names the cause, not that symptom.
        const FIX: &str = "triangles must be counter-clockwise seen from outside, so that their normals point out of \
                           the face (+z toward a frontal viewer): swap two indices of every triangle ([a, b, c] -> \
                           [a, c, b]), or re-import the model from its source with `fml model import`, which fixes \
                           the winding";
        // A face turned away (looking toward -z) has a ratio of the wrong sign even when wound
        // correctly; swapping indices would not fix its frame, so that is said first.
        if let Some(depth) = self.nose_depth()
            && depth < 0.0
        {
            return bad(format!(
                "the face looks toward -z: the nose tip (landmark 30) lies {:.1} mm behind the jaw corners \
                 (landmarks 0 and 16), while the format's frame has +z out of the face toward the viewer; \
                 re-import the model from its source with `fml model import`, which orients it",
                -depth
            ));
        }
        match self.frontal_area_ratio() {
            None => return bad("the triangles have no area (all vertices of every triangle coincide)".into()),
            Some(r) if r < -MIN_FRONTAL_AREA_RATIO => {
                return bad(format!(
                    "the triangles wind inward: over the face (the triangles in front of the jaw corners, \
                     landmarks 0 and 16) the area-weighted normals point into it, toward -z (signed frontal area {:.0}% of the surface area, expected above {:.0}%); {FIX}",
                    100.0 * r,
                    100.0 * MIN_FRONTAL_AREA_RATIO
                ));
            }
            Some(r) if r < MIN_FRONTAL_AREA_RATIO => {
                return bad(format!(
                    "the triangles do not face the viewer: over the face (the triangles in front of the jaw \
                     corners, landmarks 0 and 16) the area-weighted normals nearly cancel (signed frontal area \
                     {:.0}% of the surface area, expected above {:.0}%), so the winding is mixed or the face does \
                     not look toward +z; {FIX}",
                    100.0 * r,
                    100.0 * MIN_FRONTAL_AREA_RATIO
                ));
            }
            Some(_) => {}
        }
        for (name, set) in [("contour_right", &self.contour_right), ("contour_left", &self.contour_left)] {
            if set.is_empty() {
                return bad(format!("{name} is empty: the sliding contour points need candidates"));
            }
        }
        if self.skin_mask.len() < 2 {
            return bad("skin_mask needs at least 2 vertices".into());
        }
        if self.face_region.is_empty() {
            return bad("face_region is empty".into());
        }
        Ok(())
    }

    /// How far (mm, along z) the nose tip (landmark 30) lies in front of the midpoint of the jaw
    /// corners (landmarks 0 and 16) on the mean shape: positive for a face looking toward +z.
    /// None without those landmarks (or with indices out of range, which `validate` reports).
    fn nose_depth(&self) -> Option<f64> {
        let z = |k: usize| -> Option<f64> {
            let i = *self.landmarks.get(k)? as usize;
            (i < self.num_vertices()).then(|| self.mean_shape[3 * i + 2] as f64)
        };
        Some(z(30)? - 0.5 * (z(0)? + z(16)?))
    }

    /// How much of the face's surface faces the viewer, signed: over the mean shape's triangles
    /// whose centroid is not behind the jaw corners (landmarks 0 and 16), the sum of the z
    /// components of the unnormalised normals `(b - a) x (c - a)` divided by the sum of their
    /// lengths. A z component is twice the triangle's area projected onto the xy plane, positive
    /// when the triangle is counter-clockwise seen from +z; so the ratio is 1 for a flat face
    /// toward +z, about 0.5 for a hemisphere, and changes sign when every winding is reversed.
    /// `None` when those triangles have no area.
    ///
    /// The triangles behind the jaw corners are left out because on a mesh that closes around
    /// the head the back would cancel the front (a closed surface's normals sum to zero). When
    /// no triangle lies in front (landmarks that are not on the face) every triangle counts.
    /// Indices out of range are skipped, so this never panics; [`FaceModel::validate`] reports
    /// them.
    pub fn frontal_area_ratio(&self) -> Option<f64> {
        let n = self.num_vertices();
        let vertex = |i: u32| -> Option<[f64; 3]> {
            let i = i as usize;
            (i < n).then(|| [0, 1, 2].map(|c| self.mean_shape[3 * i + c] as f64))
        };
        let jaw_z = match (self.landmarks.first().and_then(|&i| vertex(i)), self.landmarks.get(16)) {
            (Some(a), Some(&b)) => vertex(b).map(|b| 0.5 * (a[2] + b[2])),
            _ => None,
        };
        let sums = |min_z: f64| -> (f64, f64) {
            let (mut signed, mut total) = (0.0, 0.0);
            for t in &self.triangles {
                let (Some(a), Some(b), Some(c)) = (vertex(t[0]), vertex(t[1]), vertex(t[2])) else {
                    continue;
                };
                if (a[2] + b[2] + c[2]) / 3.0 < min_z {
                    continue;
                }
                let (u, v) = ([b[0] - a[0], b[1] - a[1], b[2] - a[2]], [c[0] - a[0], c[1] - a[1], c[2] - a[2]]);
                let normal = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
                signed += normal[2];
                total += (normal[0] * normal[0] + normal[1] * normal[1] + normal[2] * normal[2]).sqrt();
            }
            (signed, total)
        };
        let (mut signed, mut total) = sums(jaw_z.unwrap_or(f64::NEG_INFINITY));
        if total <= 0.0 {
            (signed, total) = sums(f64::NEG_INFINITY);
        }
        (total > 0.0).then(|| signed / total)
    }

    /// Keep only the first `shape`, `expr`, `albedo` modes (None keeps all): a real model can
    /// then play a deliberately limited base level.
    pub fn truncate(&mut self, shape: Option<usize>, expr: Option<usize>, albedo: Option<usize>) -> Result<()> {
        let n3 = self.num_vertices() * 3;
        let cut = |basis: &mut Vec<f32>, std: &mut Vec<f32>, k: Option<usize>, name: &str| -> Result<()> {
            if let Some(k) = k {
                if k > std.len() {
                    return Err(Error::invalid(format!("cannot keep {k} {name} modes: the model has {}", std.len())));
                }
                std.truncate(k);
                basis.truncate(k * n3);
            }
            Ok(())
        };
        cut(&mut self.shape_basis, &mut self.shape_std, shape, "shape")?;
        cut(&mut self.expr_basis, &mut self.expr_std, expr, "expression")?;
        cut(&mut self.albedo_basis, &mut self.albedo_std, albedo, "albedo")?;
        self.metadata.insert(
            "truncated".into(),
            format!("shape {} expr {} albedo {}", self.num_shape(), self.num_expr(), self.num_albedo()),
        );
        Ok(())
    }

    /// Base-level geometry `[N, 3]` for coefficients `alpha` (identity) and `delta` (expression)
    /// in model units (not normalised by std). Shorter coefficient slices leave the rest at 0.
    pub fn geometry(&self, alpha: &[f32], delta: &[f32]) -> Vec<[f32; 3]> {
        let mut out = self.mean_shape.clone();
        add_modes(&mut out, &self.shape_basis, alpha);
        add_modes(&mut out, &self.expr_basis, delta);
        to_vec3(&out)
    }

    /// Base-level reflectance `[N, 3]` for coefficients `beta`, not clamped.
    pub fn albedo(&self, beta: &[f32]) -> Vec<[f32; 3]> {
        let mut out = self.mean_albedo.clone();
        add_modes(&mut out, &self.albedo_basis, beta);
        to_vec3(&out)
    }

    /// The mean face with mean reflectance as vertex colours.
    pub fn mean_mesh(&self) -> Mesh {
        Mesh {
            vertices: to_vec3(&self.mean_shape),
            triangles: self.triangles.clone(),
            colors: Some(to_vec3(&self.mean_albedo)),
        }
    }

    /// A human-readable summary (what `fml model inspect` prints).
    pub fn summary(&self) -> String {
        let v = to_vec3(&self.mean_shape);
        let (lo, hi) = bounds(&v);
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(s, "name:        {}", self.meta("name"));
        if !self.meta("note").is_empty() {
            let _ = writeln!(s, "note:        {}", self.meta("note"));
        }
        let _ = writeln!(s, "vertices:    {}", self.num_vertices());
        let _ = writeln!(s, "triangles:   {}", self.triangles.len());
        let _ = writeln!(
            s,
            "modes:       shape {}, expression {}, albedo {} ({})",
            self.num_shape(),
            self.num_expr(),
            self.num_albedo(),
            if self.meta("albedo").is_empty() { "from the model" } else { self.meta("albedo") }
        );
        let _ = writeln!(s, "units:       {}", if self.meta("units").is_empty() { "mm" } else { self.meta("units") });
        let _ = writeln!(s, "extent:      {:.1} x {:.1} x {:.1}", hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
        let _ = writeln!(
            s,
            "landmarks:   {} ({}), contour candidates {} right / {} left",
            self.landmarks.len(),
            if self.meta("landmark_scheme").is_empty() { "ibug68" } else { self.meta("landmark_scheme") },
            self.contour_right.len(),
            self.contour_left.len()
        );
        let _ = writeln!(
            s,
            "skin mask:   {} vertices; face region: {} vertices",
            self.skin_mask.len(),
            self.face_region.len()
        );
        let _ = writeln!(s, "source:      {}", self.meta("source"));
        let _ = write!(
            s,
            "license:     {}",
            if self.meta("license").is_empty() { "(none given)" } else { self.meta("license") }
        );
        s
    }
}

/// `out += sum_k coeffs[k] * basis[k]` for a mode-major basis.
pub(crate) fn add_modes(out: &mut [f32], basis: &[f32], coeffs: &[f32]) {
    let n3 = out.len();
    for (k, &c) in coeffs.iter().enumerate() {
        if c == 0.0 || (k + 1) * n3 > basis.len() {
            continue;
        }
        let b = &basis[k * n3..(k + 1) * n3];
        for (o, &x) in out.iter_mut().zip(b) {
            *o += c * x;
        }
    }
}

/// Flat `[N*3]` to `[N][3]`.
pub fn to_vec3(flat: &[f32]) -> Vec<[f32; 3]> {
    flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
}

/// Axis-aligned bounds of a point set.
pub fn bounds(v: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let mut lo = [f32::INFINITY; 3];
    let mut hi = [f32::NEG_INFINITY; 3];
    for p in v {
        for k in 0..3 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reversed(m: &FaceModel) -> FaceModel {
        let mut r = m.clone();
        for t in &mut r.triangles {
            t.swap(1, 2);
        }
        r
    }

    #[test]
    fn demo_faces_the_viewer_and_its_reverse_is_refused() {
        let m = demo::demo_model();
        m.validate(Path::new("demo")).unwrap();
        let r = m.frontal_area_ratio().unwrap();
        assert!(r > 2.0 * MIN_FRONTAL_AREA_RATIO, "demo frontal area ratio {r}");

        let inv = reversed(&m);
        assert!((inv.frontal_area_ratio().unwrap() + r).abs() < 1e-9);
        let err = inv.validate(Path::new("inward.safetensors")).unwrap_err().to_string();
        assert!(err.starts_with("inward.safetensors: "), "{err}");
        assert!(err.contains("wind inward") && err.contains("swap two indices of every triangle"), "{err}");
        // The loader (`fml model inspect`, training, synth) refuses it too, although the file is
        // well formed; the skin mask derived on the way must not hide the problem.
        let mut no_mask = inv.clone();
        no_mask.skin_mask.clear();
        let bytes = format::to_bytes(&no_mask).unwrap();
        let err = format::from_bytes(&bytes, Path::new("inward.safetensors")).unwrap_err().to_string();
        assert!(err.starts_with("inward.safetensors: ") && err.contains("wind inward"), "{err}");
    }

    /// Turned 180 degrees about y and correctly wound for that (normals out of the face, now
    /// toward -z): the frame is what is wrong, and the message says so rather than "swap indices".
    #[test]
    fn a_face_looking_toward_minus_z_is_named_as_a_frame_problem() {
        let m = demo::demo_model();
        let mut turned = m.clone();
        for basis in [&mut turned.mean_shape, &mut turned.shape_basis, &mut turned.expr_basis] {
            for p in basis.chunks_exact_mut(3) {
                p[0] = -p[0];
                p[2] = -p[2];
            }
        }
        let err = turned.validate(Path::new("turned")).unwrap_err().to_string();
        assert!(err.contains("looks toward -z") && err.contains("re-import"), "{err}");
        assert!(!err.contains("swap two indices"), "{err}");
    }

    #[test]
    fn mixed_winding_and_flat_triangles_are_refused() {
        let m = demo::demo_model();
        let mut mixed = m.clone();
        for t in mixed.triangles.iter_mut().step_by(2) {
            t.swap(1, 2);
        }
        let r = mixed.frontal_area_ratio().unwrap();
        assert!(r.abs() < MIN_FRONTAL_AREA_RATIO, "{r}");
        let err = mixed.validate(Path::new("mixed")).unwrap_err().to_string();
        assert!(err.contains("do not face the viewer") && err.contains("winding is mixed"), "{err}");

        let mut flat = m.clone();
        flat.mean_shape.iter_mut().for_each(|x| *x = 1.0);
        assert_eq!(flat.frontal_area_ratio(), None);
        assert!(flat.validate(Path::new("flat")).unwrap_err().to_string().contains("no area"));
    }

    /// A mesh that closes around the head: the demo face plus its mirror image behind it
    /// (mirrored in z, winding reversed so its normals point out too). Over the whole mesh the
    /// frontal area cancels; behind the jaw corners is left out, so it still passes.
    #[test]
    fn closed_head_passes_and_its_reverse_does_not() {
        let m = demo::demo_model();
        let n = m.num_vertices() as u32;
        let z0 = m.mean_shape.iter().skip(2).step_by(3).fold(f32::INFINITY, |a, &z| a.min(z)) - 1.0;
        let mut head = m.clone();
        let back: Vec<f32> = m.mean_shape.chunks_exact(3).flat_map(|p| [p[0], p[1], 2.0 * z0 - p[2]]).collect();
        head.mean_shape.extend_from_slice(&back);
        head.triangles.extend(m.triangles.iter().map(|t| [t[0] + n, t[2] + n, t[1] + n]));
        let zeros = vec![0.0; back.len()];
        for (basis, k) in [(&mut head.shape_basis, m.num_shape()), (&mut head.expr_basis, m.num_expr())] {
            *basis = basis.chunks_exact(back.len()).take(k).flat_map(|b| b.iter().chain(&zeros).copied()).collect();
        }
        head.albedo_basis =
            m.albedo_basis.chunks_exact(back.len()).flat_map(|b| b.iter().chain(b.iter()).copied()).collect();
        head.mean_albedo.extend_from_slice(&m.mean_albedo);
        let mut whole = head.clone();
        whole.landmarks.clear();
        assert!(whole.frontal_area_ratio().unwrap().abs() < 1e-6, "over the whole mesh front and back cancel");
        head.validate(Path::new("head")).unwrap();
        assert!((head.frontal_area_ratio().unwrap() - m.frontal_area_ratio().unwrap()).abs() < 1e-9);
        assert!(reversed(&head).validate(Path::new("head")).unwrap_err().to_string().contains("wind inward"));
    }
}
