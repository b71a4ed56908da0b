//! Basel Face Model importers: Deep3DFaceRecon's `BFM_model_front.mat` and the original
//! BFM 2009 `01_MorphableModel.mat` (both MATLAB Level-5 files, read with [`super::mat`]).
//!
//! Units. BFM 2009 stores shape in micrometres (a face is ~1.5e5 wide). Deep3DFaceRecon's
//! `transferBFM09` divides shape, identity and expression bases by 1e5 ("unify the scale to
//! decimeter"), so `BFM_model_front.mat` is in decimetres (a face ~1.5 wide). Default factors to
//! millimetres: 100 (front) and 0.001 (2009); `--scale` overrides, and [`super::import::finish`]
//! refuses a result whose outer eye corners are not 40..250 mm apart.
//!
//! Bases. The front file's `idBase`, `exBase` and `texBase` are already multiplied by the
//! standard deviations, so std = 1. For BFM 2009, `shapeEV` / `texEV` are standard deviations
//! (Deep3DFaceRecon multiplies the PCs by them directly); we pre-scale the PCs by them too so
//! that every imported model has std = 1 and coefficients are z-scores.
//! Vertices are interleaved `x y z x y z ...` in both files, so a column of a 3N x K basis is one
//! mode in our mode-major `[K, N, 3]` layout as it is.
//!
//! Reflectance: `meantex` / `texMU` and the scaled bases are in 0..255; divided by 255 (values
//! are used as they are, no gamma, as everywhere in this crate).
//!
//! Frame: BFM is +y up, +z toward the viewer; `finish` checks x against the landmarks and the
//! winding against the nose normal (BFM 2009's `tl` is clockwise in some releases), and
//! recentres on the vertex centroid by default (Deep3DFaceRecon's `recenter=True`).

use super::FaceModel;
use super::import::{FormatDefaults, ImportFormat, ImportOptions, Origin, finish, first_non_finite};
use super::mat::{MatArray, MatFile, read_mat_filtered};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

fn file_name(path: &Path) -> String {
    path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// `a` as a vector of `len` values (stored 1 x len or len x 1), checked finite.
fn vector(a: &MatArray, len: Option<usize>, path: &Path) -> Result<()> {
    let fname = file_name(path);
    if !a.is_vector() {
        let want = len.map_or("1 x n or n x 1".to_string(), |n| format!("1 x {n} or {n} x 1"));
        return Err(Error::format(
            path,
            format!("{} in {fname} has shape {}, expected {want}", a.name, a.shape_text(),),
        ));
    }
    if let Some(n) = len
        && a.len() != n
    {
        return Err(Error::format(
            path,
            format!("{} in {fname} has {} values ({}), expected {n}", a.name, a.len(), a.shape_text()),
        ));
    }
    finite(a, path)
}

/// `a` as a `rows` x K matrix; returns K.
fn matrix(a: &MatArray, rows: usize, what_rows: &str, path: &Path) -> Result<usize> {
    if a.dims.len() != 2 || a.rows() != rows {
        return Err(Error::format(
            path,
            format!(
                "{} in {} has shape {}, expected {rows} x K ({what_rows})",
                a.name,
                file_name(path),
                a.shape_text()
            ),
        ));
    }
    finite(a, path)?;
    Ok(a.cols())
}

fn finite(a: &MatArray, path: &Path) -> Result<()> {
    if let Some((i, x)) = first_non_finite(&a.data) {
        let r = a.rows().max(1);
        return Err(Error::format(
            path,
            format!("{}[{}, {}] in {} is {x} (NaN or infinite)", a.name, i % r, i / r, file_name(path)),
        ));
    }
    Ok(())
}

/// 1-based MATLAB indices to 0-based vertex indices below `n`.
fn one_based(a: &MatArray, n: usize, path: &Path) -> Result<Vec<u32>> {
    a.data
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if x.fract() != 0.0 || x < 1.0 || x > n as f64 {
                let r = a.rows().max(1);
                return Err(Error::format(
                    path,
                    format!(
                        "{}[{}, {}] in {} = {x} is not a vertex index in 1..={n} (MATLAB indices are 1-based)",
                        a.name,
                        i % r,
                        i / r,
                        file_name(path)
                    ),
                ));
            }
            Ok(x as u32 - 1)
        })
        .collect()
}

/// F x 3 1-based triangles (column-major) to 0-based `[F][3]`.
fn triangles(a: &MatArray, n: usize, path: &Path) -> Result<Vec<[u32; 3]>> {
    if a.dims.len() != 2 || a.cols() != 3 || a.rows() == 0 {
        return Err(Error::format(
            path,
            format!(
                "{} in {} has shape {}, expected F x 3 (1-based vertex indices)",
                a.name,
                file_name(path),
                a.shape_text()
            ),
        ));
    }
    let flat = one_based(a, n, path)?;
    let f = a.rows();
    Ok((0..f).map(|t| [flat[t], flat[t + f], flat[t + 2 * f]]).collect())
}

/// Column-major 3N x K basis (values in `data`) times `factor` (per mode when `per_mode`), as f32.
fn basis(data: &[f64], factor: f64, per_mode: Option<&[f64]>, n3: usize) -> Vec<f32> {
    data.iter()
        .enumerate()
        .map(|(i, &x)| {
            let s = per_mode.map_or(1.0, |ev| ev[i / n3]);
            (x * s * factor) as f32
        })
        .collect()
}

fn empty_model(mean_shape: Vec<f32>, triangles: Vec<[u32; 3]>, metadata: BTreeMap<String, String>) -> FaceModel {
    FaceModel {
        mean_shape,
        shape_basis: Vec::new(),
        shape_std: Vec::new(),
        expr_basis: Vec::new(),
        expr_std: Vec::new(),
        mean_albedo: Vec::new(),
        albedo_basis: Vec::new(),
        albedo_std: Vec::new(),
        triangles,
        landmarks: Vec::new(),
        contour_right: Vec::new(),
        contour_left: Vec::new(),
        skin_mask: Vec::new(),
        face_region: Vec::new(),
        metadata,
    }
}

fn read(path: &Path, names: &[&str]) -> Result<MatFile> {
    if path.is_dir() {
        return Err(Error::format(path, "is a folder; expected a .mat file"));
    }
    read_mat_filtered(path, |n| names.contains(&n))
}

/// Import Deep3DFaceRecon's `BFM_model_front.mat` (80 identity, 64 expression and 80 reflectance
/// modes, 35709 vertices, 68 keypoints).
pub fn import_bfm_front(path: &Path, opts: &ImportOptions) -> Result<FaceModel> {
    const FIELDS: [&str; 7] = ["meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "keypoints"];
    let mut f = read(path, &FIELDS)?;
    for name in FIELDS {
        f.require(name)?;
    }
    let mean = f.take("meanshape")?;
    vector(&mean, None, path)?;
    if mean.len() % 3 != 0 || mean.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "meanshape in {} has {} values, not a positive multiple of 3 (x y z per vertex)",
                file_name(path),
                mean.len()
            ),
        ));
    }
    let n3 = mean.len();
    let n = n3 / 3;
    let rows_note = format!("3N = {n3} for the N = {n} vertices of meanshape");
    let id = f.take("idBase")?;
    let ks = matrix(&id, n3, &rows_note, path)?;
    let ex = f.take("exBase")?;
    let ke = matrix(&ex, n3, &rows_note, path)?;
    let tex_mean = f.take("meantex")?;
    vector(&tex_mean, Some(n3), path)?;
    let tex = f.take("texBase")?;
    let kr = matrix(&tex, n3, &rows_note, path)?;
    let tri = triangles(f.require("tri")?, n, path)?;
    let kp = f.require("keypoints")?;
    if !kp.is_vector() || kp.len() != 68 {
        return Err(Error::format(
            path,
            format!(
                "keypoints in {} has shape {}, expected 68 values (1 x 68 or 68 x 1)",
                file_name(path),
                kp.shape_text()
            ),
        ));
    }
    let keypoints = one_based(kp, n, path)?;

    let mut metadata = BTreeMap::new();
    metadata.insert("name".into(), "bfm-front".into());
    metadata.insert(
        "source".into(),
        format!(
            "{} (Deep3DFaceRecon's BFM_model_front: Basel Face Model 2009 identity/reflectance, expression basis of \
             Guo et al.)",
            file_name(path)
        ),
    );
    metadata.insert(
        "license".into(),
        "Basel Face Model 2009: University of Basel licence agreement (non-commercial research, no redistribution); \
         expression basis: see Deep3DFaceRecon"
            .into(),
    );
    metadata.insert("shape_prior".into(), "coefficients ~ N(0, 1): bases pre-scaled by the PCA std".into());
    let mut model = empty_model(mean.data.iter().map(|&x| x as f32).collect(), tri, metadata);
    model.shape_basis = basis(&id.data, 1.0, None, n3);
    model.shape_std = vec![1.0; ks];
    model.expr_basis = basis(&ex.data, 1.0, None, n3);
    model.expr_std = vec![1.0; ke];
    model.mean_albedo = tex_mean.data.iter().map(|&x| (x / 255.0) as f32).collect();
    model.albedo_basis = basis(&tex.data, 1.0 / 255.0, None, n3);
    model.albedo_std = vec![1.0; kr];
    let defaults = FormatDefaults {
        format: ImportFormat::BfmFront,
        scale: 100.0,
        scale_note: "decimetres to mm",
        origin: Origin::Centroid,
    };
    finish(model, Some((keypoints, format!("keypoints of {}", file_name(path)))), defaults, opts, path)
}

/// Import the Basel Face Model 2009 (`01_MorphableModel.mat`: 53490 vertices, 199 identity and
/// 199 reflectance modes, no expressions, no landmarks: `--landmarks` or `--landmarks-from` is
/// required).
pub fn import_bfm2009(path: &Path, opts: &ImportOptions) -> Result<FaceModel> {
    const FIELDS: [&str; 7] = ["shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl"];
    let mut f = read(path, &FIELDS)?;
    for name in FIELDS {
        f.require(name)?;
    }
    let mean = f.take("shapeMU")?;
    vector(&mean, None, path)?;
    if mean.len() % 3 != 0 || mean.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "shapeMU in {} has {} values, not a positive multiple of 3 (x y z per vertex)",
                file_name(path),
                mean.len()
            ),
        ));
    }
    let n3 = mean.len();
    let n = n3 / 3;
    let rows_note = format!("3N = {n3} for the N = {n} vertices of shapeMU");
    let pc = f.take("shapePC")?;
    let ks = matrix(&pc, n3, &rows_note, path)?;
    let ev = f.take("shapeEV")?;
    vector(&ev, Some(ks), path)?;
    let tex_mean = f.take("texMU")?;
    vector(&tex_mean, Some(n3), path)?;
    let tpc = f.take("texPC")?;
    let kr = matrix(&tpc, n3, &rows_note, path)?;
    let tev = f.take("texEV")?;
    vector(&tev, Some(kr), path)?;
    for a in [&ev, &tev] {
        if let Some(i) = a.data.iter().position(|&x| x <= 0.0) {
            return Err(Error::format(
                path,
                format!("{}[{i}] in {} = {} is not a positive standard deviation", a.name, file_name(path), a.data[i]),
            ));
        }
    }
    let tri = triangles(f.require("tl")?, n, path)?;

    let mut metadata = BTreeMap::new();
    metadata.insert("name".into(), "bfm2009".into());
    metadata.insert("source".into(), format!("{} (Basel Face Model 2009, PublicMM1)", file_name(path)));
    metadata.insert(
        "license".into(),
        "Basel Face Model 2009: University of Basel licence agreement (non-commercial research, no redistribution)"
            .into(),
    );
    metadata.insert("shape_prior".into(), "coefficients ~ N(0, 1): PCs pre-scaled by shapeEV / texEV".into());
    let mut model = empty_model(mean.data.iter().map(|&x| x as f32).collect(), tri, metadata);
    model.shape_basis = basis(&pc.data, 1.0, Some(&ev.data), n3);
    model.shape_std = vec![1.0; ks];
    model.mean_albedo = tex_mean.data.iter().map(|&x| (x / 255.0) as f32).collect();
    model.albedo_basis = basis(&tpc.data, 1.0 / 255.0, Some(&tev.data), n3);
    model.albedo_std = vec![1.0; kr];
    let defaults = FormatDefaults {
        format: ImportFormat::Bfm2009,
        scale: 1e-3,
        scale_note: "micrometres to mm",
        origin: Origin::Centroid,
    };
    finish(model, None, defaults, opts, path)
}
