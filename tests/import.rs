//! Importer tests: `fml model import` and the library importers on small synthetic fixtures
//! (ICT-like OBJ folders, BFM .mat files) written by the tests themselves, plus a check against
//! the shared ICT development model when it is present.

use assert_cmd::Command;
use fml::face_model::FaceModel;
use fml::face_model::import::{ImportFormat, ImportOptions, Origin, import_model};
use fml::face_model::mat::{MatArray, MatClass, MatWriteOptions, write_mat};
use predicates::prelude::*;
use std::path::{Path, PathBuf};

/// A tiny face in centimetres in the documented frame (+y up, +z toward the viewer, +x toward
/// the subject's left): nose tip, eyes, brow, jaw sides, chin, mouth, top of head, neck.
fn tiny_vertices() -> Vec<[f32; 3]> {
    vec![
        [0.0, 0.0, 3.0],    // 0 nose tip
        [3.0, 2.0, 1.0],    // 1 left eye
        [0.0, 5.0, 0.0],    // 2 brow
        [-3.0, 2.0, 1.0],   // 3 right eye
        [-7.0, 0.0, -1.0],  // 4 right jaw
        [0.0, -9.0, 0.0],   // 5 chin
        [7.0, 0.0, -1.0],   // 6 left jaw
        [0.0, -5.0, 1.5],   // 7 mouth
        [0.0, 10.0, -5.0],  // 8 top of head
        [0.0, -12.0, -5.0], // 9 neck
    ]
}

/// Polygons, counter-clockwise seen from +z; the first is a quad (fan-triangulated on import
/// into (0, 6, 1) and (0, 1, 2)). The last two use vertices 8 and 9.
fn tiny_faces() -> Vec<Vec<u32>> {
    vec![
        vec![0, 6, 1, 2],
        vec![0, 2, 3],
        vec![0, 3, 4],
        vec![0, 4, 7],
        vec![0, 7, 6],
        vec![4, 5, 7],
        vec![7, 5, 6],
        vec![2, 8, 3],
        vec![5, 9, 6],
    ]
}

fn tiny_triangles() -> Vec<[u32; 3]> {
    let mut t = Vec::new();
    for f in tiny_faces() {
        for k in 1..f.len() - 1 {
            t.push([f[0], f[k], f[k + 1]]);
        }
    }
    t
}

/// iBUG-68 regions mapped onto the tiny face's vertices.
fn tiny_landmarks() -> Vec<u32> {
    (0..68u32)
        .map(|i| match i {
            0..=7 => 4,
            8 => 5,
            9..=16 => 6,
            17..=26 => 2,
            27..=35 => 0,
            36..=41 => 3,
            42..=47 => 1,
            _ => 7,
        })
        .collect()
}

/// Binary-exact per-vertex offsets (cm) for morph target `k`.
fn offsets(k: usize) -> Vec<[f32; 3]> {
    (0..tiny_vertices().len()).map(|i| [0.25 * (k as f32 + 1.0), -0.5 * i as f32, 0.125 * (i % 3) as f32]).collect()
}

fn add(a: &[[f32; 3]], b: &[[f32; 3]]) -> Vec<[f32; 3]> {
    a.iter().zip(b).map(|(p, d)| [p[0] + d[0], p[1] + d[1], p[2] + d[2]]).collect()
}

fn write_obj(path: &Path, v: &[[f32; 3]], faces: &[Vec<u32>]) {
    let mut s = String::from("# ICT-like test mesh\nmtllib x.mtl\n");
    for p in v {
        s += &format!("v {} {} {}\n", p[0], p[1], p[2]);
    }
    s += "vt 0 0\nvn 0 0 1\n";
    for f in faces {
        s += "f";
        for &i in f {
            s += &format!(" {}/1/1", i + 1);
        }
        s += "\n";
    }
    std::fs::write(path, s).unwrap();
}

const EXPRESSIONS: [&str; 2] = ["jawOpen", "browDown_L"];

/// An ICT-like folder: neutral, 2 identities, 2 expressions, and (optionally) a
/// vertex_indices.json with the expression order and the landmarks.
fn write_ict(dir: &Path, with_config: bool) {
    let v = tiny_vertices();
    write_obj(&dir.join("generic_neutral_mesh.obj"), &v, &tiny_faces());
    for k in 0..2 {
        write_obj(&dir.join(format!("identity{k:03}.obj")), &add(&v, &offsets(k)), &tiny_faces());
    }
    for (e, name) in EXPRESSIONS.iter().enumerate() {
        write_obj(&dir.join(format!("{name}.obj")), &add(&v, &offsets(10 + e)), &tiny_faces());
    }
    std::fs::write(dir.join("ICTFaceModelMaterial.mtl"), "newmtl x\n").unwrap();
    if with_config {
        let json = serde_json::json!({
            "expressions": EXPRESSIONS,
            "idx_to_landmark_verts": tiny_landmarks(),
            "idx_to_rigid_landmark_idx": [0, 36, 39, 42, 45, 16, 28, 31, 35],
        });
        std::fs::write(dir.join("vertex_indices.json"), json.to_string()).unwrap();
    }
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(close(*x, *y, tol), "{what}[{i}]: {x} vs {y}");
    }
}

fn flat_mm(v: &[[f32; 3]]) -> Vec<f32> {
    v.iter().flatten().map(|x| x * 10.0).collect()
}

fn fml() -> Command {
    Command::cargo_bin("fml").unwrap()
}

fn err_of(r: fml::Result<FaceModel>) -> String {
    r.map(|_| ()).unwrap_err().to_string()
}

#[test]
fn ict_folder_values() {
    let dir = tempfile::tempdir().unwrap();
    write_ict(dir.path(), true);
    let m = import_model(ImportFormat::Ict, dir.path(), &ImportOptions::default()).unwrap();
    let n = tiny_vertices().len();
    assert_eq!(m.num_vertices(), n);
    assert_close(&m.mean_shape, &flat_mm(&tiny_vertices()), 1e-5, "mean_shape (cm -> mm, origin kept)");
    assert_eq!((m.num_shape(), m.num_expr()), (2, 2));
    for k in 0..2 {
        assert_close(&m.shape_basis[k * n * 3..(k + 1) * n * 3], &flat_mm(&offsets(k)), 1e-4, "identity delta");
    }
    // Expression order follows vertex_indices.json, not the file names.
    assert_eq!(m.meta("expression_names"), "jawOpen browDown_L");
    assert_close(&m.expr_basis[..n * 3], &flat_mm(&offsets(10)), 1e-4, "jawOpen delta");
    assert_close(&m.expr_basis[n * 3..], &flat_mm(&offsets(11)), 1e-4, "browDown_L delta");
    assert_eq!(m.shape_std, vec![1.0; 2]);
    assert_eq!(m.triangles, tiny_triangles(), "quad fan-triangulated, winding kept");
    assert_eq!(m.landmarks, tiny_landmarks());
    assert!(m.meta("license").contains("USC Institute for Creative Technologies"));
    assert_eq!(m.meta("units"), "mm");
    assert!(m.contour_right.contains(&4) && m.contour_left.contains(&6));
    assert_eq!(m.num_albedo(), fml::face_model::albedo::NUM_MODES, "procedural reflectance prior");
    // Geometry of identity 1 at weight 1 equals the identity mesh in mm.
    let g = m.geometry(&[0.0, 1.0], &[]);
    let want = add(&tiny_vertices(), &offsets(1));
    for (p, q) in g.iter().zip(&want) {
        for c in 0..3 {
            assert!(close(p[c], q[c] * 10.0, 1e-4));
        }
    }
}

#[test]
fn ict_vertex_and_identity_truncation() {
    let dir = tempfile::tempdir().unwrap();
    write_ict(dir.path(), true);
    let opts = ImportOptions { vertices: Some(8), identities: Some(1), ..Default::default() };
    let m = import_model(ImportFormat::Ict, dir.path(), &opts).unwrap();
    assert_eq!(m.num_vertices(), 8);
    assert_eq!(m.num_shape(), 1);
    let kept: Vec<[u32; 3]> = tiny_triangles().into_iter().filter(|t| t.iter().all(|&i| i < 8)).collect();
    assert_eq!(kept.len(), tiny_triangles().len() - 2);
    assert_eq!(m.triangles, kept);
    assert_close(&m.shape_basis, &flat_mm(&offsets(0)[..8]), 1e-4, "identity 0 on kept vertices");
    assert_close(&m.expr_basis[8 * 3..], &flat_mm(&offsets(11)[..8]), 1e-4, "browDown_L on kept vertices");
    assert!(m.meta("source").contains("vertices 0..8 of 10"));
    // A landmark outside the kept vertices is an error naming the config file.
    let mut lm = tiny_landmarks();
    lm[30] = 9;
    let json = serde_json::json!({ "expressions": EXPRESSIONS, "idx_to_landmark_verts": lm });
    std::fs::write(dir.path().join("vertex_indices.json"), json.to_string()).unwrap();
    let err = err_of(import_model(ImportFormat::Ict, dir.path(), &opts));
    assert!(err.contains("vertex_indices.json") && err.contains("idx_to_landmark_verts[30] = 9"), "{err}");
}

#[test]
fn ict_without_config_needs_landmarks() {
    let dir = tempfile::tempdir().unwrap();
    write_ict(dir.path(), false);
    let err = err_of(import_model(ImportFormat::Ict, dir.path(), &ImportOptions::default()));
    assert!(err.contains("--landmarks") && err.contains("--landmarks-from"), "{err}");
    let lm_path = dir.path().join("lm.txt");
    let text: Vec<String> = tiny_landmarks().iter().map(|x| (x + 1).to_string()).collect();
    std::fs::write(&lm_path, text.join("\n")).unwrap();
    let opts = ImportOptions { landmarks: Some(lm_path), landmarks_one_based: true, ..Default::default() };
    let m = import_model(ImportFormat::Ict, dir.path(), &opts).unwrap();
    assert_eq!(m.landmarks, tiny_landmarks());
    // Without the config the expressions are the other OBJs, sorted by name.
    assert_eq!(m.meta("expression_names"), "browDown_L jawOpen");
}

#[test]
fn ict_folder_errors() {
    let base = tempfile::tempdir().unwrap();
    let fresh = |name: &str| -> PathBuf {
        let d = base.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        write_ict(&d, true);
        d
    };
    // Missing neutral mesh.
    let d = fresh("no_neutral");
    std::fs::remove_file(d.join("generic_neutral_mesh.obj")).unwrap();
    let err = err_of(import_model(ImportFormat::Ict, &d, &Default::default()));
    assert!(err.contains("generic_neutral_mesh.obj") && err.contains("missing"), "{err}");
    // An expression listed in the config but absent.
    let d = fresh("no_expr");
    std::fs::remove_file(d.join("browDown_L.obj")).unwrap();
    let err = err_of(import_model(ImportFormat::Ict, &d, &Default::default()));
    assert!(err.contains("browDown_L.obj") && err.contains("missing"), "{err}");
    // Mismatched vertex count.
    let d = fresh("mismatch");
    write_obj(&d.join("identity001.obj"), &tiny_vertices()[..7], &[vec![0, 1, 2]]);
    let err = err_of(import_model(ImportFormat::Ict, &d, &Default::default()));
    assert!(err.contains("identity001.obj") && err.contains("has 7 vertices") && err.contains("has 10"), "{err}");
    // More identities asked for than present.
    let d = fresh("few_ids");
    let opts = ImportOptions { identities: Some(3), ..Default::default() };
    let err = err_of(import_model(ImportFormat::Ict, &d, &opts));
    assert!(err.contains("only 2 identity OBJs") && err.contains("identity002.obj"), "{err}");
    // A corrupt OBJ: the file and line are named.
    let d = fresh("corrupt");
    std::fs::write(d.join("jawOpen.obj"), "v 0 0 0\nv 1 x 0\n").unwrap();
    let err = err_of(import_model(ImportFormat::Ict, &d, &Default::default()));
    assert!(err.contains("jawOpen.obj") && err.contains("line 2"), "{err}");
    // NaN in a morph target.
    let d = fresh("nan");
    std::fs::write(d.join("identity000.obj"), "v nan 0 0\n").unwrap();
    let err = err_of(import_model(ImportFormat::Ict, &d, &Default::default()));
    assert!(err.contains("identity000.obj") && err.contains("not finite"), "{err}");
    // --vertices beyond the mesh, and not a folder at all.
    let d = fresh("too_many");
    let err = err_of(import_model(ImportFormat::Ict, &d, &ImportOptions { vertices: Some(11), ..Default::default() }));
    assert!(err.contains("--vertices 11") && err.contains("10 vertices"), "{err}");
    let err = err_of(import_model(ImportFormat::Ict, &d.join("identity000.obj"), &Default::default()));
    assert!(err.contains("not a folder"), "{err}");
    // Wrong units: the eye-distance sanity check asks for --scale.
    let err = err_of(import_model(ImportFormat::Ict, &d, &ImportOptions { scale: Some(1.0), ..Default::default() }));
    assert!(err.contains("--scale") && err.contains("outer eye corners"), "{err}");
}

#[test]
fn cli_import_ict_with_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("FaceXModel");
    std::fs::create_dir(&src).unwrap();
    write_ict(&src, true);
    let out = dir.path().join("ict.safetensors");
    let mesh = dir.path().join("mean.obj");
    fml()
        .args(["model", "import", "--format", "ict"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .args(["--shape-modes", "1", "--expr-modes", "1", "--name", "tiny-ict", "--mesh"])
        .arg(&mesh)
        .assert()
        .success()
        .stdout(predicate::str::contains("name:        tiny-ict"))
        .stdout(predicate::str::contains("modes:       shape 1, expression 1"))
        .stdout(predicate::str::contains("MIT, Copyright (c) 2020 USC"));
    let m = FaceModel::load(&out).unwrap();
    assert_eq!((m.num_vertices(), m.num_shape(), m.num_expr()), (10, 1, 1));
    assert_eq!(m.meta("expression_names"), "jawOpen browDown_L");
    assert_eq!(fml::io::mesh::Mesh::load_obj(&mesh).unwrap().vertices.len(), 10);
    // Asking for more modes than there are fails without writing.
    let out2 = dir.path().join("bad.safetensors");
    fml()
        .args(["model", "import", "--format", "ict"])
        .arg(&src)
        .arg("-o")
        .arg(&out2)
        .args(["--expr-modes", "5"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot keep 5 expression modes"));
    assert!(!out2.exists());
}

/// The tiny face as Deep3DFaceRecon's BFM_model_front.mat (decimetres, 0..255 texture).
struct Front {
    id: Vec<f64>,
    ex: Vec<f64>,
    tex_mean: Vec<f64>,
    tex: Vec<f64>,
}

fn front_arrays() -> (Vec<MatArray>, Front) {
    let v = tiny_vertices();
    let n3 = v.len() * 3;
    let mean: Vec<f64> = v.iter().flatten().map(|&x| x as f64 / 10.0).collect();
    let id: Vec<f64> = (0..n3 * 2).map(|i| ((i % 7) as f64 - 3.0) * 0.001).collect();
    let ex: Vec<f64> = (0..n3).map(|i| ((i % 5) as f64) * 0.002).collect();
    let tex_mean: Vec<f64> = (0..n3).map(|i| 100.0 + i as f64).collect();
    let tex: Vec<f64> = (0..n3 * 2).map(|i| (i % 11) as f64 - 5.0).collect();
    let tri = tiny_triangles();
    let f = tri.len();
    let mut tri_cm = vec![0.0; f * 3];
    for (t, tr) in tri.iter().enumerate() {
        for c in 0..3 {
            tri_cm[t + c * f] = tr[c] as f64 + 1.0;
        }
    }
    let kp: Vec<f64> = tiny_landmarks().iter().map(|&x| x as f64 + 1.0).collect();
    let arrays = vec![
        MatArray::new("meanshape", 1, n3, mean),
        MatArray::new("idBase", n3, 2, id.clone()),
        MatArray::new("exBase", n3, 1, ex.clone()),
        MatArray::new("meantex", 1, n3, tex_mean.clone()),
        MatArray::new("texBase", n3, 2, tex.clone()),
        MatArray::new("tri", f, 3, tri_cm),
        MatArray::new("keypoints", 68, 1, kp),
        MatArray::new("point_buf", 2, 2, vec![1.0, 2.0, 3.0, 4.0]),
    ];
    (arrays, Front { id, ex, tex_mean, tex })
}

fn write_front(path: &Path, arrays: &[MatArray], opts: MatWriteOptions) {
    let vars: Vec<_> = arrays.iter().map(|a| (a, MatClass::Double)).collect();
    write_mat(path, &vars, &opts).unwrap();
}

fn to_f32(v: &[f64], s: f64) -> Vec<f32> {
    v.iter().map(|&x| (x * s) as f32).collect()
}

#[test]
fn bfm_front_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("BFM_model_front.mat");
    let (arrays, want) = front_arrays();
    write_front(&path, &arrays, MatWriteOptions { compress: true, compact_integers: true, ..Default::default() });
    let opts = ImportOptions { origin: Some(Origin::Keep), ..Default::default() };
    let m = import_model(ImportFormat::BfmFront, &path, &opts).unwrap();
    assert_close(&m.mean_shape, &flat_mm(&tiny_vertices()), 1e-4, "dm -> mm");
    assert_close(&m.shape_basis, &to_f32(&want.id, 100.0), 1e-6, "idBase x 100");
    assert_close(&m.expr_basis, &to_f32(&want.ex, 100.0), 1e-6, "exBase x 100");
    assert_close(&m.mean_albedo, &to_f32(&want.tex_mean, 1.0 / 255.0), 1e-6, "meantex / 255");
    assert_close(&m.albedo_basis, &to_f32(&want.tex, 1.0 / 255.0), 1e-6, "texBase / 255");
    assert_eq!((m.num_shape(), m.num_expr(), m.num_albedo()), (2, 1, 2));
    assert_eq!(m.triangles, tiny_triangles(), "1-based -> 0-based");
    assert_eq!(m.landmarks, tiny_landmarks());
    // Default origin: the vertex centroid.
    let m = import_model(ImportFormat::BfmFront, &path, &Default::default()).unwrap();
    let n = m.num_vertices() as f32;
    for c in 0..3 {
        let mean: f32 = m.mean_shape.iter().skip(c).step_by(3).sum::<f32>() / n;
        assert!(mean.abs() < 1e-4, "axis {c}: {mean}");
    }
    assert!(m.meta("import_origin").starts_with("centroid"));
}

#[test]
fn bfm_front_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (arrays, _) = front_arrays();
    let write = |name: &str, f: &dyn Fn(&mut Vec<MatArray>)| -> PathBuf {
        let mut a = arrays.clone();
        f(&mut a);
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("BFM_model_front.mat");
        write_front(&p, &a, MatWriteOptions::default());
        p
    };
    let import = |p: &Path| err_of(import_model(ImportFormat::BfmFront, p, &Default::default()));
    let p = write("missing", &|a| a.retain(|x| x.name != "idBase"));
    let err = import(&p);
    assert!(err.contains("idBase missing from BFM_model_front.mat"), "{err}");
    let p = write("shape", &|a| a[1] = MatArray::new("idBase", 3, 2, vec![0.0; 6]));
    let err = import(&p);
    assert!(err.contains("idBase") && err.contains("3 x 2") && err.contains("expected 30 x K"), "{err}");
    let p = write("nan", &|a| a[2].data[4] = f64::NAN);
    let err = import(&p);
    assert!(err.contains("exBase[4, 0]") && err.contains("NaN"), "{err}");
    let p = write("inf", &|a| a[0].data[2] = f64::INFINITY);
    let err = import(&p);
    assert!(err.contains("meanshape[0, 2]") && err.contains("inf"), "{err}");
    let p = write("tri0", &|a| a[5].data[0] = 0.0);
    let err = import(&p);
    assert!(err.contains("tri[0, 0]") && err.contains("1-based"), "{err}");
    let p = write("tri_big", &|a| a[5].data[3] = 11.0);
    let err = import(&p);
    assert!(err.contains("tri[3, 0]") && err.contains("1..=10"), "{err}");
    let p = write("kp", &|a| a[6] = MatArray::new("keypoints", 67, 1, vec![1.0; 67]));
    let err = import(&p);
    assert!(err.contains("keypoints") && err.contains("expected 68"), "{err}");
    let p = write("tex", &|a| a[3] = MatArray::new("meantex", 1, 6, vec![0.0; 6]));
    let err = import(&p);
    assert!(err.contains("meantex") && err.contains("expected 30"), "{err}");
    // Truncated file.
    let p = write("trunc", &|_| {});
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = import(&p);
    assert!(err.contains("BFM_model_front.mat") && err.contains("truncated"), "{err}");
    // A .mat without any of the expected fields.
    let p = dir.path().join("other.mat");
    let x = MatArray::new("x", 1, 1, vec![1.0]);
    write_mat(&p, &[(&x, MatClass::Double)], &Default::default()).unwrap();
    let err = import(&p);
    assert!(err.contains("meanshape missing from other.mat") && err.contains("contains: x"), "{err}");
    // MATLAB v7.3 (HDF5).
    let p = dir.path().join("v73.mat");
    let mut h =
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".to_vec();
    h.resize(512, b' ');
    h.extend_from_slice(b"\x89HDF\r\n\x1a\n");
    h.resize(2048, 0);
    std::fs::write(&p, h).unwrap();
    let err = import(&p);
    assert!(err.contains("v7.3") && err.contains("-v7"), "{err}");
}

/// The tiny face as BFM 2009 (micrometres, clockwise triangles, PCs with standard deviations).
fn write_bfm2009(path: &Path, big_endian: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let v = tiny_vertices();
    let n3 = v.len() * 3;
    let mu: Vec<f64> = v.iter().flatten().map(|&x| x as f64 * 1e4).collect();
    let pc: Vec<f64> = (0..n3 * 3).map(|i| ((i % 9) as f64 - 4.0) / 16.0).collect();
    let ev = vec![4000.0, 2000.0, 500.0];
    let tpc: Vec<f64> = (0..n3 * 2).map(|i| ((i % 4) as f64 - 1.5) / 8.0).collect();
    let tev = vec![60.0, 20.0];
    let tri = tiny_triangles();
    let f = tri.len();
    let mut tl = vec![0.0; f * 3];
    for (t, tr) in tri.iter().enumerate() {
        // Clockwise: (a, c, b).
        let cw = [tr[0], tr[2], tr[1]];
        for c in 0..3 {
            tl[t + c * f] = cw[c] as f64 + 1.0;
        }
    }
    let arrays = [
        (MatArray::new("shapeMU", n3, 1, mu), MatClass::Single),
        (MatArray::new("shapePC", n3, 3, pc.clone()), MatClass::Single),
        (MatArray::new("shapeEV", 3, 1, ev.clone()), MatClass::Single),
        (MatArray::new("texMU", n3, 1, (0..n3).map(|i| 50.0 + i as f64).collect()), MatClass::Single),
        (MatArray::new("texPC", n3, 2, tpc.clone()), MatClass::Single),
        (MatArray::new("texEV", 2, 1, tev.clone()), MatClass::Single),
        (MatArray::new("tl", f, 3, tl), MatClass::Double),
        (MatArray::new("segbin", 4, 1, vec![1.0, 0.0, 1.0, 1.0]), MatClass::Uint8),
    ];
    let vars: Vec<_> = arrays.iter().map(|(a, c)| (a, *c)).collect();
    write_mat(path, &vars, &MatWriteOptions { big_endian, ..Default::default() }).unwrap();
    (pc, ev, tpc, tev)
}

#[test]
fn bfm2009_values_and_landmarks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01_MorphableModel.mat");
    let (pc, ev, tpc, tev) = write_bfm2009(&path, true);
    let err = err_of(import_model(ImportFormat::Bfm2009, &path, &Default::default()));
    assert!(err.contains("01_MorphableModel.mat") && err.contains("--landmarks"), "{err}");
    let lm = dir.path().join("lm.json");
    std::fs::write(&lm, serde_json::to_string(&tiny_landmarks()).unwrap()).unwrap();
    let opts = ImportOptions { landmarks: Some(lm.clone()), origin: Some(Origin::Keep), ..Default::default() };
    let m = import_model(ImportFormat::Bfm2009, &path, &opts).unwrap();
    assert_close(&m.mean_shape, &flat_mm(&tiny_vertices()), 1e-3, "um -> mm");
    let n3 = m.num_vertices() * 3;
    let want: Vec<f32> = pc.iter().enumerate().map(|(i, &x)| (x * ev[i / n3] / 1000.0) as f32).collect();
    assert_close(&m.shape_basis, &want, 1e-5, "shapePC x shapeEV / 1000");
    let want: Vec<f32> = tpc.iter().enumerate().map(|(i, &x)| (x * tev[i / n3] / 255.0) as f32).collect();
    assert_close(&m.albedo_basis, &want, 1e-6, "texPC x texEV / 255");
    assert_eq!(m.shape_std, vec![1.0; 3]);
    assert_eq!(m.num_expr(), 0);
    assert_eq!(m.triangles, tiny_triangles(), "clockwise tl flipped to counter-clockwise");
    assert!(m.meta("import_orientation").contains("reversed"), "{}", m.meta("import_orientation"));

    // Saved with an empty expression basis and loaded back (CLI), then landmarks borrowed
    // from that model.
    let out = dir.path().join("bfm.safetensors");
    fml()
        .args(["model", "import", "--format", "bfm2009"])
        .arg(&path)
        .arg("-o")
        .arg(&out)
        .arg("--landmarks")
        .arg(&lm)
        .assert()
        .success()
        .stdout(predicate::str::contains("shape 3, expression 0, albedo 2"));
    let back = FaceModel::load(&out).unwrap();
    assert_eq!(back.num_expr(), 0);
    let opts = ImportOptions { landmarks_from: Some(out.clone()), ..Default::default() };
    let m2 = import_model(ImportFormat::Bfm2009, &path, &opts).unwrap();
    assert_eq!(m2.landmarks, back.landmarks);
    assert_eq!(m2.contour_right, back.contour_right);
    // --landmarks-from a model with another vertex count is refused.
    let demo = dir.path().join("demo.safetensors");
    fml::face_model::demo::demo_model().save(&demo).unwrap();
    let opts = ImportOptions { landmarks_from: Some(demo), ..Default::default() };
    let err = err_of(import_model(ImportFormat::Bfm2009, &path, &opts));
    assert!(err.contains("demo.safetensors") && err.contains("same vertex numbering"), "{err}");
    // Bad landmark file: out of range.
    let mut bad = tiny_landmarks();
    bad[3] = 10;
    std::fs::write(&lm, serde_json::to_string(&bad).unwrap()).unwrap();
    let opts = ImportOptions { landmarks: Some(lm.clone()), ..Default::default() };
    let err = err_of(import_model(ImportFormat::Bfm2009, &path, &opts));
    assert!(err.contains("lm.json") && err.contains("landmark 3 is vertex 10"), "{err}");
}

#[test]
fn bfm2009_bad_std() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01_MorphableModel.mat");
    write_bfm2009(&path, false);
    let mut f = fml::face_model::mat::read_mat(&path).unwrap();
    let ev = f.arrays.iter_mut().find(|a| a.name == "shapeEV").unwrap();
    ev.data[1] = -1.0;
    let vars: Vec<_> = f.arrays.iter().map(|a| (a, MatClass::Double)).collect();
    write_mat(&path, &vars, &Default::default()).unwrap();
    let lm = dir.path().join("lm.txt");
    std::fs::write(&lm, tiny_landmarks().iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")).unwrap();
    let opts = ImportOptions { landmarks: Some(lm), ..Default::default() };
    let err = err_of(import_model(ImportFormat::Bfm2009, &path, &opts));
    assert!(err.contains("shapeEV[1]") && err.contains("not a positive standard deviation"), "{err}");
}

#[test]
fn cli_native_reimport() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo.safetensors");
    fml().args(["model", "demo", "-o"]).arg(&demo).assert().success();
    let out = dir.path().join("small.safetensors");
    fml()
        .args(["model", "import", "--format", "native"])
        .arg(&demo)
        .arg("-o")
        .arg(&out)
        .args(["--shape-modes", "5", "--albedo-modes", "2", "--license", "test-license"])
        .assert()
        .success()
        .stdout(predicate::str::contains("modes:       shape 5"))
        .stdout(predicate::str::contains("license:     test-license"));
    let (a, b) = (FaceModel::load(&demo).unwrap(), FaceModel::load(&out).unwrap());
    assert_eq!(b.num_shape(), 5);
    assert_eq!(a.mean_shape, b.mean_shape);
    assert_eq!(&a.shape_basis[..b.shape_basis.len()], &b.shape_basis[..]);
    fml()
        .args(["model", "import", "--format", "native"])
        .arg(&demo)
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .args(["--vertices", "10"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--vertices"));
    fml()
        .args(["model", "import", "--format", "bfm-front"])
        .arg(dir.path().join("nope.mat"))
        .arg("-o")
        .arg(dir.path().join("y.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("nope.mat"));
}

fn shared_model() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/ict_face.safetensors");
    [local, PathBuf::from("/work/shared/models/ict_face.safetensors")].into_iter().find(|p| p.is_file())
}

/// Rebuild an ICT-like folder (in a temp dir) from the shared development model -- neutral in
/// cm, 3 identities, 2 expressions, plus vertices beyond the face region -- import it and
/// compare with the shared file: units, extent, deltas, truncation, derived contours.
#[test]
fn shared_ict_model_round_trip() {
    let Some(shared) = shared_model() else {
        eprintln!("skipping: the shared ICT model (../shared/models/ict_face.safetensors) is not present");
        return;
    };
    let s = FaceModel::load(&shared).unwrap();
    let n = s.num_vertices();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let cm: Vec<[f32; 3]> = fml::face_model::to_vec3(&s.mean_shape).iter().map(|p| p.map(|x| x / 10.0)).collect();
    // Extra vertices behind the head (not part of the face region) and a triangle using them.
    let mut full = cm.clone();
    full.extend((0..5).map(|i| [i as f32, 0.0, -20.0]));
    let mut faces: Vec<Vec<u32>> = s.triangles.iter().map(|t| t.to_vec()).collect();
    faces.push(vec![n as u32, n as u32 + 1, n as u32 + 2]);
    write_obj(&src.join("generic_neutral_mesh.obj"), &full, &faces);
    let target = |basis: &[f32], k: usize| -> Vec<[f32; 3]> {
        let mut v = full.clone();
        for i in 0..n {
            for c in 0..3 {
                v[i][c] += basis[(k * n + i) * 3 + c] / 10.0;
            }
        }
        v
    };
    for k in 0..3 {
        write_obj(&src.join(format!("identity{k:03}.obj")), &target(&s.shape_basis, k), &faces);
    }
    let names: Vec<&str> = s.meta("expression_names").split_whitespace().take(2).collect();
    for (k, name) in names.iter().enumerate() {
        write_obj(&src.join(format!("{name}.obj")), &target(&s.expr_basis, k), &faces);
    }
    let json = serde_json::json!({ "expressions": names });
    std::fs::write(src.join("vertex_indices.json"), json.to_string()).unwrap();

    let opts = ImportOptions { vertices: Some(n), landmarks_from: Some(shared.clone()), ..Default::default() };
    let m = import_model(ImportFormat::Ict, src, &opts).unwrap();
    assert_eq!(m.num_vertices(), n);
    assert_eq!(m.triangles, s.triangles, "triangles inside the face region kept, others dropped");
    assert_close(&m.mean_shape, &s.mean_shape, 2e-3, "mean shape (cm -> mm)");
    assert_close(&m.shape_basis, &s.shape_basis[..3 * n * 3], 2e-3, "identity deltas");
    assert_close(&m.expr_basis, &s.expr_basis[..2 * n * 3], 2e-3, "expression deltas");
    assert!(m.meta("import_orientation").starts_with("unchanged"), "{}", m.meta("import_orientation"));
    let (lo, hi) = fml::face_model::bounds(&fml::face_model::to_vec3(&m.mean_shape));
    let extent = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    for (e, want) in extent.iter().zip([184.0, 289.0, 163.0]) {
        assert!((e - want).abs() < 2.0, "extent {extent:?} vs README's 184 x 289 x 163 mm");
    }
    assert_eq!(m.landmarks, s.landmarks);
    assert_eq!(m.contour_right, s.contour_right);

    // With a landmark file instead, contours are derived: they lie on the correct side, include
    // the jaw landmarks, and pass close to the shared file's hand-picked candidates.
    let lm = src.join("lm.txt");
    std::fs::write(&lm, s.landmarks.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n")).unwrap();
    let opts = ImportOptions { vertices: Some(n), landmarks: Some(lm), ..Default::default() };
    let d = import_model(ImportFormat::Ict, src, &opts).unwrap();
    let v = fml::face_model::to_vec3(&d.mean_shape);
    let chin_x = v[d.landmarks[8] as usize][0];
    for (set, right, shared_set) in
        [(&d.contour_right, true, &s.contour_right), (&d.contour_left, false, &s.contour_left)]
    {
        assert!(set.len() > 8 && set.len() < 2000, "{} candidates", set.len());
        assert!(set.iter().all(|&i| if right { v[i as usize][0] <= chin_x } else { v[i as usize][0] >= chin_x }));
        let dist = |i: u32, j: u32| {
            let (a, b) = (v[i as usize], v[j as usize]);
            ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
        };
        let nearest: Vec<f32> =
            shared_set.iter().map(|&j| set.iter().map(|&i| dist(i, j)).fold(f32::INFINITY, f32::min)).collect();
        eprintln!("{} derived candidates; distance of each shared candidate to them (mm): {nearest:?}", set.len());
        let contained = shared_set.iter().filter(|j| set.contains(j)).count();
        assert!(contained * 2 >= shared_set.len(), "only {contained} of the shared candidates derived");
        assert!(nearest.iter().all(|&d| d < 6.0), "derived contour far from the shared file's: {nearest:?}");
    }
}
