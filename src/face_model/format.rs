//! The native face-model file: safetensors in the interchange layout of
//! `docs/face-model-format.md` (a superset of `../shared/models/README.md`).

use super::FaceModel;
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Load and validate a native model. Missing optional parts are derived:
/// reflectance from [`super::albedo::procedural_prior`], `skin_mask` from
/// [`super::regions::derive_skin_mask`], `face_region` from the `narrow_face_vertices` metadata
/// (or all vertices).
pub fn load(path: &Path) -> Result<FaceModel> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// Parse a native model from bytes; `path` names the source in errors.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<FaceModel> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| Error::format(path, format!("bad safetensors header: {e}")))?;
    let metadata: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    // A training checkpoint is a safetensors file too; say so rather than list what it lacks.
    if metadata.contains_key(crate::checkpoint::META_KEY) {
        return Err(Error::format(
            path,
            "an fml training checkpoint, not a face model (a run's model is named by model.path in its config.toml)",
        ));
    }

    let mean_shape = floats(&st, path, "mean_shape", None)?;
    if mean_shape.1.len() != 2 || mean_shape.1[1] != 3 {
        return Err(Error::format(path, format!("mean_shape has shape {:?}, expected [N, 3]", mean_shape.1)));
    }
    let n = mean_shape.1[0];
    let (shape_basis, shape_std) = basis(&st, path, "shape_basis", "shape_std", n)?;
    let (expr_basis, expr_std) = basis(&st, path, "expr_basis", "expr_std", n)?;
    let has_albedo = st.names().contains(&"mean_albedo");
    let albedo = if has_albedo {
        let mean = floats(&st, path, "mean_albedo", Some(&[n, 3]))?.0;
        let (b, s) = basis(&st, path, "albedo_basis", "albedo_std", n)?;
        Some((mean, b, s))
    } else {
        None
    };
    let triangles = indices(&st, path, "triangles")?;
    if triangles.1.len() != 2 || triangles.1[1] != 3 {
        return Err(Error::format(path, format!("triangles has shape {:?}, expected [F, 3]", triangles.1)));
    }
    let triangles: Vec<[u32; 3]> = triangles.0.chunks_exact(3).map(|t| [t[0], t[1], t[2]]).collect();
    let landmarks = indices(&st, path, "landmarks")?.0;
    let contour_right = indices(&st, path, "contour_right")?.0;
    let contour_left = indices(&st, path, "contour_left")?.0;
    let optional = |name: &str| -> Result<Option<Vec<u32>>> {
        if st.names().contains(&name) { Ok(Some(indices(&st, path, name)?.0)) } else { Ok(None) }
    };
    let skin_mask = optional("skin_mask")?;
    let face_region = optional("face_region")?;

    let mut model = FaceModel {
        mean_shape: mean_shape.0,
        shape_basis,
        shape_std,
        expr_basis,
        expr_std,
        mean_albedo: Vec::new(),
        albedo_basis: Vec::new(),
        albedo_std: Vec::new(),
        triangles,
        landmarks,
        contour_right,
        contour_left,
        skin_mask: skin_mask.clone().unwrap_or_default(),
        face_region: face_region.clone().unwrap_or_default(),
        metadata,
    };
    // Index ranges must hold before anything is derived from them.
    check_indices(&model, path)?;
    if face_region.is_none() {
        let narrow = model.meta("narrow_face_vertices").parse::<usize>().ok().filter(|&k| k > 0 && k <= n);
        model.face_region = (0..narrow.unwrap_or(n) as u32).collect();
    }
    match albedo {
        Some((mean, b, s)) => {
            model.mean_albedo = mean;
            model.albedo_basis = b;
            model.albedo_std = s;
        }
        None => {
            super::albedo::apply_procedural_prior(&mut model);
        }
    }
    if skin_mask.is_none() {
        model.skin_mask = super::regions::derive_skin_mask(&model);
    }
    model.validate(path)?;
    Ok(model)
}

fn check_indices(model: &FaceModel, path: &Path) -> Result<()> {
    let n = model.num_vertices();
    if let Some(t) = model.triangles.iter().position(|t| t.iter().any(|&i| i as usize >= n)) {
        return Err(Error::format(
            path,
            format!("triangles[{t}] = {:?} indexes past the {n} vertices", model.triangles[t]),
        ));
    }
    for (name, set) in [
        ("landmarks", &model.landmarks),
        ("contour_right", &model.contour_right),
        ("contour_left", &model.contour_left),
        // Both index vertex flags (`regions::region_flags`) before `validate` runs, when the
        // skin mask is derived from the face region.
        ("skin_mask", &model.skin_mask),
        ("face_region", &model.face_region),
    ] {
        if let Some(i) = set.iter().position(|&v| v as usize >= n) {
            return Err(Error::format(path, format!("{name}[{i}] = {} is not a vertex index (N = {n})", set[i])));
        }
    }
    if model.landmarks.len() != 68 {
        return Err(Error::format(
            path,
            format!("landmarks has {} entries, expected 68 (iBUG-68)", model.landmarks.len()),
        ));
    }
    Ok(())
}

fn tensor<'a>(st: &'a SafeTensors, path: &Path, name: &str) -> Result<TensorView<'a>> {
    st.tensor(name).map_err(|_| Error::format(path, format!("missing tensor {name:?}")))
}

/// A float tensor as f32 (F32, F64 and F16 accepted) with its shape, checked finite.
fn floats(st: &SafeTensors, path: &Path, name: &str, expect: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = tensor(st, path, name)?;
    let shape = t.shape().to_vec();
    if let Some(e) = expect
        && shape != e
    {
        return Err(Error::format(path, format!("{name} has shape {shape:?}, expected {e:?}")));
    }
    let d = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(Error::format(path, format!("{name} has dtype {other:?}, expected a float type"))),
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::format(path, format!("{name}[{i}] is {} (NaN or infinite)", v[i])));
    }
    Ok((v, shape))
}

/// A basis `[K, N, 3]` with its std `[K]`.
fn basis(st: &SafeTensors, path: &Path, b: &str, s: &str, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let (std, std_shape) = floats(st, path, s, None)?;
    if std_shape.len() != 1 {
        return Err(Error::format(path, format!("{s} has shape {std_shape:?}, expected [K]")));
    }
    let k = std_shape[0];
    let (basis, _) = floats(st, path, b, Some(&[k, n, 3]))?;
    Ok((basis, std))
}

/// An integer tensor (I32, I64, U32) as u32 indices with its shape; negative values are errors.
fn indices(st: &SafeTensors, path: &Path, name: &str) -> Result<(Vec<u32>, Vec<usize>)> {
    let t = tensor(st, path, name)?;
    let d = t.data();
    let v: Vec<i64> = match t.dtype() {
        Dtype::I32 => d.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect(),
        Dtype::U32 => d.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect(),
        Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
        other => return Err(Error::format(path, format!("{name} has dtype {other:?}, expected an integer type"))),
    };
    if let Some(i) = v.iter().position(|&x| x < 0 || x > u32::MAX as i64) {
        return Err(Error::format(path, format!("{name}[{i}] = {} is not a valid index", v[i])));
    }
    Ok((v.into_iter().map(|x| x as u32).collect(), t.shape().to_vec()))
}

/// Serialise to safetensors bytes (F32 arrays, I32 indices, metadata in the header).
pub fn to_bytes(model: &FaceModel) -> Result<Vec<u8>> {
    let n = model.num_vertices();
    let f = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let i = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect() };
    let tris: Vec<u32> = model.triangles.iter().flatten().copied().collect();
    let entries: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("mean_shape", Dtype::F32, vec![n, 3], f(&model.mean_shape)),
        ("shape_basis", Dtype::F32, vec![model.num_shape(), n, 3], f(&model.shape_basis)),
        ("shape_std", Dtype::F32, vec![model.num_shape()], f(&model.shape_std)),
        ("expr_basis", Dtype::F32, vec![model.num_expr(), n, 3], f(&model.expr_basis)),
        ("expr_std", Dtype::F32, vec![model.num_expr()], f(&model.expr_std)),
        ("mean_albedo", Dtype::F32, vec![n, 3], f(&model.mean_albedo)),
        ("albedo_basis", Dtype::F32, vec![model.num_albedo(), n, 3], f(&model.albedo_basis)),
        ("albedo_std", Dtype::F32, vec![model.num_albedo()], f(&model.albedo_std)),
        ("triangles", Dtype::I32, vec![model.triangles.len(), 3], i(&tris)),
        ("landmarks", Dtype::I32, vec![model.landmarks.len()], i(&model.landmarks)),
        ("contour_right", Dtype::I32, vec![model.contour_right.len()], i(&model.contour_right)),
        ("contour_left", Dtype::I32, vec![model.contour_left.len()], i(&model.contour_left)),
        ("skin_mask", Dtype::I32, vec![model.skin_mask.len()], i(&model.skin_mask)),
        ("face_region", Dtype::I32, vec![model.face_region.len()], i(&model.face_region)),
    ];
    let views: Vec<(&str, TensorView)> = entries
        .iter()
        .map(|(name, dt, shape, data)| {
            Ok((*name, TensorView::new(*dt, shape.clone(), data).map_err(|e| Error::invalid(format!("{name}: {e}")))?))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = model.metadata.clone().into_iter().collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::invalid(format!("serialising face model: {e}")))
}

/// Validate and write atomically.
pub fn save(model: &FaceModel, path: &Path) -> Result<()> {
    save_with_mesh(model, path, None)
}

/// Save the model and, when `mesh` is given, its mean face as a mesh (.obj / .ply) with it: both
/// or, when one cannot be written, neither.
pub fn save_with_mesh(model: &FaceModel, path: &Path, mesh: Option<&Path>) -> Result<()> {
    model.validate(path)?;
    let bytes = to_bytes(model)?;
    let mut group = crate::io::WriteGroup::new();
    group.stage_bytes(path, &bytes)?;
    if let Some(m) = mesh {
        model.mean_mesh().stage(&mut group, m)?;
    }
    group.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model without expressions (BFM 2009) or identities is valid and survives a round trip
    /// with empty `[0, N, 3]` bases.
    #[test]
    fn zero_mode_bases_round_trip() {
        let mut m = super::super::demo::demo_model();
        m.truncate(Some(0), Some(0), None).unwrap();
        assert_eq!((m.num_shape(), m.num_expr()), (0, 0));
        m.validate(Path::new("mem")).unwrap();
        let bytes = to_bytes(&m).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("expr_basis").unwrap().shape(), &[0, m.num_vertices(), 3]);
        let back = from_bytes(&bytes, Path::new("mem")).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.geometry(&[], &[]).len(), m.num_vertices());
    }

    /// A face region or skin mask that indexes past the vertices (a 1-based export, say) is an
    /// error naming the tensor, not a panic where the skin mask is derived from it.
    #[test]
    fn region_indices_past_the_vertices_are_an_error() {
        let m = super::super::demo::demo_model();
        let n = m.num_vertices();
        for name in ["face_region", "skin_mask"] {
            let mut bad = m.clone();
            let set = if name == "face_region" { &mut bad.face_region } else { &mut bad.skin_mask };
            set.push(n as u32);
            let mut bytes = to_bytes(&bad).unwrap();
            if name == "face_region" {
                // Without a stored skin mask, loading derives one from the face region.
                bad.skin_mask.clear();
                bytes = to_bytes_without(&bad, "skin_mask");
            }
            let err = from_bytes(&bytes, Path::new("m.safetensors")).unwrap_err().to_string();
            assert!(err.contains("m.safetensors") && err.contains(name) && err.contains("not a vertex index"), "{err}");
        }
    }

    fn to_bytes_without(m: &FaceModel, skip: &str) -> Vec<u8> {
        let bytes = to_bytes(m).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<(String, safetensors::tensor::TensorView)> =
            st.tensors().into_iter().filter(|(name, _)| name != skip).collect();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        safetensors::serialize(kept, header.metadata().clone()).unwrap()
    }
}
