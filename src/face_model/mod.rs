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

    /// Check every array's size, every index's range and every value's finiteness; `origin`
    /// names the source in the error.
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
