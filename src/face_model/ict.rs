//! ICT-FaceKit (Light) importer: the `FaceXModel/` folder of OBJ files a user downloads from
//! github.com/ICT-VGL/ICT-FaceKit.
//!
//! What the folder holds (and how ICT's own `Scripts/face_model_io.py` reads it):
//! - `generic_neutral_mesh.obj`: the mean face (26719 vertices, quads and triangles; the face
//!   area comes first in the vertex order), centimetres, +y up, +z toward the viewer.
//! - `identity000.obj`, `identity001.obj`, ...: full meshes; identity mode k is
//!   `identity_k - neutral`, read in order until the first missing number. Their coefficients
//!   are sampled from N(0, 1) by ICT's tools, so std = 1.
//! - one OBJ per expression, e.g. `browDown_L.obj`: full meshes; blendshape delta =
//!   `expression - neutral` at weight 1 (std 1).
//! - `vertex_indices.json`: `expressions` (the blendshape names in model order) and
//!   `idx_to_landmark_verts` (68 iBUG landmark vertices), both used when present. Without the
//!   file, the expressions are the remaining OBJs sorted by name and the landmarks must be given
//!   (`--landmarks` / `--landmarks-from`).
//!
//! Only the topology of the neutral mesh is used (quads fan-triangulated by `Mesh::load_obj`);
//! with `--vertices K` the vertices 0..K and the triangles entirely inside them are kept.
//! Units: centimetres, converted to mm (x10, `--scale` overrides). No reflectance model: the
//! procedural prior is attached by `finish`.

use super::FaceModel;
use super::import::{FormatDefaults, ImportFormat, ImportOptions, Origin, finish};
use crate::error::{Error, Result};
use crate::io::mesh::Mesh;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The license of ICT-FaceKit, carried in the metadata of every import.
pub const ICT_LICENSE: &str = "MIT, Copyright (c) 2020 USC Institute for Creative Technologies";

const NEUTRAL: &str = "generic_neutral_mesh.obj";
const CONFIG: &str = "vertex_indices.json";

/// The parts of `vertex_indices.json` the importer uses.
#[derive(Debug, Default)]
struct Config {
    expressions: Option<Vec<String>>,
    landmarks: Option<Vec<u32>>,
}

fn read_config(path: &Path) -> Result<Config> {
    let text = crate::io::read_text(path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    let mut c = Config::default();
    if let Some(e) = v.get("expressions") {
        let list = e.as_array().ok_or_else(|| Error::format(path, "\"expressions\" is not a list of names"))?;
        let names = list
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let s = x.as_str().ok_or_else(|| Error::format(path, format!("expressions[{i}] is not a string")))?;
                if s.is_empty() || s.contains(['/', '\\']) || s.starts_with('.') || s.contains(char::is_whitespace) {
                    return Err(Error::format(path, format!("expressions[{i}] = {s:?} is not a plain file name")));
                }
                Ok(s.to_string())
            })
            .collect::<Result<Vec<_>>>()?;
        c.expressions = Some(names);
    }
    if let Some(l) = v.get("idx_to_landmark_verts") {
        let list =
            l.as_array().ok_or_else(|| Error::format(path, "\"idx_to_landmark_verts\" is not a list of indices"))?;
        if list.len() != 68 {
            return Err(Error::format(
                path,
                format!("idx_to_landmark_verts has {} entries, expected 68 (iBUG-68)", list.len()),
            ));
        }
        let idx = list
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_u64().filter(|&k| k <= u32::MAX as u64).map(|k| k as u32).ok_or_else(|| {
                    Error::format(path, format!("idx_to_landmark_verts[{i}] = {x} is not a vertex index"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        c.landmarks = Some(idx);
    }
    Ok(c)
}

fn identity_name(k: usize) -> String {
    format!("identity{k:03}.obj")
}

/// `identityNNN.obj`?
fn is_identity_file(name: &str) -> bool {
    name.strip_prefix("identity")
        .and_then(|r| r.strip_suffix(".obj"))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Expression names without a config: every other OBJ in the folder, sorted by name.
fn discover_expressions(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".obj")
            && name != NEUTRAL
            && !is_identity_file(&name)
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Read a morph target and return its first `keep` vertices' offsets from `neutral`, flat.
fn delta(path: &Path, neutral: &Mesh, keep: usize, neutral_name: &Path) -> Result<Vec<f32>> {
    if !path.is_file() {
        return Err(Error::format(path, "missing from the ICT-FaceKit folder"));
    }
    let m = Mesh::load_obj(path)?;
    if m.vertices.len() != neutral.vertices.len() {
        return Err(Error::format(
            path,
            format!(
                "has {} vertices but {} has {}: every morph target must share the neutral mesh's vertices",
                m.vertices.len(),
                neutral_name.display(),
                neutral.vertices.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(keep * 3);
    for (a, b) in m.vertices[..keep].iter().zip(&neutral.vertices[..keep]) {
        out.extend_from_slice(&[a[0] - b[0], a[1] - b[1], a[2] - b[2]]);
    }
    Ok(out)
}

/// Import an ICT-FaceKit `FaceXModel/` folder.
pub fn import_ict(dir: &Path, opts: &ImportOptions) -> Result<FaceModel> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "is not a folder: --format ict expects ICT-FaceKit's FaceXModel/ folder"));
    }
    let neutral_path = dir.join(NEUTRAL);
    if !neutral_path.is_file() {
        return Err(Error::format(
            &neutral_path,
            "missing: an ICT-FaceKit FaceXModel/ folder holds generic_neutral_mesh.obj, identity000.obj, ... and \
             one OBJ per expression",
        ));
    }
    let neutral = Mesh::load_obj(&neutral_path)?;
    let n_full = neutral.vertices.len();
    let keep = opts.vertices.unwrap_or(n_full);
    if keep == 0 || keep > n_full {
        return Err(Error::invalid(format!(
            "--vertices {keep}: {} has {n_full} vertices (need 1..={n_full})",
            neutral_path.display()
        )));
    }
    let config_path = dir.join(CONFIG);
    let config = if config_path.is_file() { read_config(&config_path)? } else { Config::default() };
    let expressions = match config.expressions {
        Some(e) => e,
        None => discover_expressions(dir)?,
    };

    // Identities: identity000.obj, identity001.obj, ... up to the first gap (as ICT's loader).
    let available = (0..).take_while(|&k| dir.join(identity_name(k)).is_file()).count();
    let n_id = match opts.identities {
        Some(k) if k > available => {
            return Err(Error::format(
                dir,
                format!(
                    "--identities {k}: the folder has only {available} identity OBJs ({} is missing)",
                    identity_name(available)
                ),
            ));
        }
        Some(k) => k,
        None => available,
    };
    let id_paths: Vec<PathBuf> = (0..n_id).map(|k| dir.join(identity_name(k))).collect();
    let ex_paths: Vec<PathBuf> = expressions.iter().map(|e| dir.join(format!("{e}.obj"))).collect();
    let read_all = |paths: &[PathBuf]| -> Result<Vec<f32>> {
        let parts: Vec<Vec<f32>> =
            paths.par_iter().map(|p| delta(p, &neutral, keep, &neutral_path)).collect::<Result<_>>()?;
        Ok(parts.concat())
    };
    let shape_basis = read_all(&id_paths)?; // [K_s, keep, 3]
    let expr_basis = read_all(&ex_paths)?; // [K_e, keep, 3]

    let triangles: Vec<[u32; 3]> =
        neutral.triangles.iter().filter(|t| t.iter().all(|&i| (i as usize) < keep)).copied().collect();
    if triangles.is_empty() {
        return Err(Error::format(&neutral_path, format!("no triangle lies entirely within vertices 0..{keep}")));
    }
    let landmarks = match config.landmarks {
        Some(lm) => {
            if let Some(i) = lm.iter().position(|&v| v as usize >= keep) {
                return Err(Error::format(
                    &config_path,
                    format!(
                        "idx_to_landmark_verts[{i}] = {} is outside the kept vertices 0..{keep}{}",
                        lm[i],
                        if keep < n_full { " (raise --vertices)" } else { "" }
                    ),
                ));
            }
            Some((lm, format!("idx_to_landmark_verts of {}", config_path.display())))
        }
        None => None,
    };

    let mut metadata = BTreeMap::new();
    let region =
        if keep < n_full { format!("vertices 0..{keep} of {n_full}") } else { format!("all {n_full} vertices") };
    metadata.insert("name".into(), if keep < n_full { "ict-facekit-face-region" } else { "ict-facekit" }.into());
    metadata.insert(
        "source".into(),
        format!("ICT-FaceKit Light (github.com/ICT-VGL/ICT-FaceKit), folder {}, {region}", dir.display()),
    );
    metadata.insert("license".into(), ICT_LICENSE.into());
    metadata.insert("expression_names".into(), expressions.join(" "));
    metadata.insert("shape_prior".into(), "coefficients ~ N(0, std^2); bases are pre-scaled so std = 1".into());
    let model = FaceModel {
        mean_shape: neutral.vertices[..keep].iter().flatten().copied().collect(),
        shape_basis,
        shape_std: vec![1.0; n_id],
        expr_basis,
        expr_std: vec![1.0; expressions.len()],
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
    };
    let defaults = FormatDefaults {
        format: ImportFormat::Ict,
        scale: 10.0,
        scale_note: "centimetres to mm",
        origin: Origin::Keep,
    };
    finish(model, landmarks, defaults, opts, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_file_names() {
        assert!(is_identity_file("identity000.obj"));
        assert!(is_identity_file("identity12.obj"));
        assert!(!is_identity_file("identity.obj"));
        assert!(!is_identity_file("identity00a.obj"));
        assert_eq!(identity_name(7), "identity007.obj");
    }

    #[test]
    fn config_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CONFIG);
        std::fs::write(&p, r#"{"expressions": ["a", 3]}"#).unwrap();
        let err = read_config(&p).unwrap_err().to_string();
        assert!(err.contains("expressions[1]"), "{err}");
        std::fs::write(&p, r#"{"idx_to_landmark_verts": [1, 2]}"#).unwrap();
        let err = read_config(&p).unwrap_err().to_string();
        assert!(err.contains("2 entries, expected 68"), "{err}");
        std::fs::write(&p, r#"{"expressions": ["../x"]}"#).unwrap();
        assert!(read_config(&p).is_err());
        std::fs::write(&p, "{").unwrap();
        assert!(read_config(&p).unwrap_err().to_string().contains("not valid JSON"));
    }
}
