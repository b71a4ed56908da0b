//! CLI tests of `fml reconstruct` and `fml export` on a freshly initialised tiny network (zero
//! output layer plus chosen biases, so its prediction is known): meshes, parameter records,
//! overlays, crops, folders with failures, the missing default model and weights-only export.

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use fml::checkpoint::{self, Meta};
use fml::config::Config;
use fml::data::{Landmarks68, write_pts};
use fml::face_model::{FaceModel, demo::demo_model};
use fml::network::FaceNet;
use fml::network::params::ParamLayout;
use fml::render::layer::Backend;
use image::{Rgb, RgbImage};
use predicates::str::contains;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fml() -> Command {
    let mut c = Command::cargo_bin("fml").unwrap();
    c.env_remove("FML_DEFAULT_MODEL");
    c
}

/// Yaw index of the parameter vector.
fn yaw(l: &ParamLayout) -> usize {
    l.shape + l.expr + l.albedo + 27 + 1
}

/// A run directory with the tiny config and a fresh network whose head biases are `bias`.
fn make_run(dir: &Path, correctives: usize, bias: impl Fn(&ParamLayout) -> Vec<(usize, f32)>) -> PathBuf {
    make_run_with(dir, "demo", correctives, bias)
}

/// [`make_run`] with `model.path` = `model` ("demo" or a model file).
fn make_run_with(
    dir: &Path,
    model: &str,
    correctives: usize,
    bias: impl Fn(&ParamLayout) -> Vec<(usize, f32)>,
) -> PathBuf {
    let mut cfg = Config::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap();
    cfg.model.path = model.into();
    if correctives > 0 {
        cfg.correctives.count = correctives;
    }
    let model = demo_model();
    let varmap = VarMap::new();
    let net = FaceNet::new(&model, &cfg, correctives > 0, Backend::Fast, &varmap, &Device::Cpu).unwrap();
    {
        let data = varmap.data().lock().unwrap();
        let head = &data["encoder.head.bias"];
        let mut v = head.as_tensor().to_vec1::<f32>().unwrap();
        for (i, x) in bias(&net.layout) {
            v[i] = x;
        }
        head.set(&Tensor::from_vec(v, head.dims1().unwrap(), &Device::Cpu).unwrap()).unwrap();
    }
    let meta = Meta {
        format_version: 1,
        stage: "pretrain".into(),
        step: 7,
        loader: Default::default(),
        seed: 1,
        num_vertices: model.num_vertices(),
        num_outputs: net.layout.num_outputs(),
        correctives,
        modes: None,
        finetuned_from: None,
        data: None,
    };
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), cfg.to_toml()).unwrap();
    checkpoint::save(&dir.join(checkpoint::FILE), &varmap, &[], &meta).unwrap();
    dir.to_path_buf()
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 2) as u8, (y * 3) as u8, 90]))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn single_image_gives_mesh_params_and_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = make_run(&d.join("run"), 0, |l| vec![(0, 0.5), (yaw(l), 0.2)]);
    let img = d.join("face.png");
    picture(96, 80).save(&img).unwrap();
    fml()
        .args(["reconstruct", "-q", "--bbox", "20,10,50,50", "--params", "--overlay", "--checkpoint"])
        .arg(&run)
        .arg(&img)
        .arg("-o")
        .arg(d.join("out/m.obj"))
        .assert()
        .success()
        .stdout(contains("m.obj"))
        .stdout(contains("m.overlay.png"));

    let model: FaceModel = demo_model();
    let mesh = fml::io::mesh::Mesh::load_obj(d.join("out/m.obj")).unwrap();
    assert_eq!(mesh.vertices.len(), model.num_vertices());
    assert_eq!(mesh.triangles, model.triangles);
    // Model frame: the mean face plus 0.5 std of the first identity mode.
    let std0 = model.shape_std[0];
    for (i, v) in mesh.vertices.iter().enumerate() {
        for k in 0..3 {
            let want = model.mean_shape[i * 3 + k] + 0.5 * std0 * model.shape_basis[i * 3 + k];
            assert!((v[k] - want).abs() < 1e-2, "vertex {i}: {v:?}");
        }
    }
    let colours = mesh.colors.unwrap();
    assert!(colours.iter().flatten().all(|c| (0.0..=1.0).contains(c)));

    let p = json(&d.join("out/m.json"));
    assert_eq!(p["format"], "fml-reconstruction/1");
    assert_eq!(p["level"], "base");
    assert_eq!(p["checkpoint_step"], 7);
    assert_eq!(p["crop"]["method"], "bbox");
    assert_eq!(
        (p["crop"]["x0"].as_i64(), p["crop"]["y0"].as_i64(), p["crop"]["side"].as_i64()),
        (Some(20), Some(10), Some(50))
    );
    assert!((f(&p["pose"]["euler_rad"][1]) - 0.2).abs() < 1e-6);
    assert!((f(&p["pose"]["euler_deg"][1]) - 0.2f64.to_degrees()).abs() < 1e-4);
    assert!((f(&p["pose"]["rotation_matrix"][0][2]) - 0.2f64.sin()).abs() < 1e-6);
    assert!(f(&p["pose"]["translation_mm"][2]) < -100.0);
    assert_eq!(p["shape"]["z"].as_array().unwrap().len(), model.num_shape());
    assert!((f(&p["shape"]["value"][0]) - 0.5 * std0 as f64).abs() < 1e-4);
    assert_eq!(p["expression"]["z"].as_array().unwrap().len(), model.num_expr());
    assert_eq!(p["illumination"]["gamma"].as_array().unwrap().len(), 27);
    assert!(p["correctives"].is_null());
    assert!((f(&p["crop_camera"]["focal_px"]) - 266.7).abs() < 1e-3);
    assert!((f(&p["source_camera"]["focal_px"]) - 266.7 * 50.0 / 64.0).abs() < 1e-3);
    assert_eq!((f(&p["source_camera"]["cx"]), f(&p["source_camera"]["cy"])), (45.0, 35.0));
    let lm = p["landmarks"].as_array().unwrap();
    assert_eq!(lm.len(), 68);
    // The nose tip projects inside the crop box.
    let nose = [f(&lm[30][0]), f(&lm[30][1])];
    assert!((20.0..70.0).contains(&nose[0]) && (10.0..60.0).contains(&nose[1]), "{nose:?}");

    let over = image::open(d.join("out/m.overlay.png")).unwrap().to_rgb8();
    let src = picture(96, 80);
    assert_eq!(over.dimensions(), (96, 80));
    assert_ne!(over.get_pixel(45, 40), src.get_pixel(45, 40));
    assert_eq!(over.get_pixel(95, 79), src.get_pixel(95, 79));
    assert_eq!(over.get_pixel(1, 78), src.get_pixel(1, 78));
    assert!(over.pixels().any(|p| p.0 == [40, 255, 40]), "no landmark dots");
}

#[test]
fn ply_in_camera_frame_and_landmark_crop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = make_run(&d.join("run"), 0, |_| vec![]);
    picture(100, 100).save(d.join("img.png")).unwrap();
    // Landmark box [20, 30] - [60, 70]: side round(1.3 * 40) = 52 about (40, 50).
    let mut lm = Landmarks68 { points: [[40.0, 50.0]; 68], confidence: [1.0; 68] };
    lm.points[0] = [20.0, 30.0];
    lm.points[1] = [60.0, 70.0];
    write_pts(d.join("marks.pts"), &lm).unwrap();
    fml()
        .args(["reconstruct", "-q", "--frame", "camera", "--shaded", "--checkpoint"])
        .arg(&run)
        .arg(d.join("img.png"))
        .arg("--landmarks")
        .arg(d.join("marks.pts"))
        .arg("-o")
        .arg(d.join("m.ply"))
        .arg("--params")
        .arg(d.join("p.json"))
        .assert()
        .success();
    let p = json(&d.join("p.json"));
    assert_eq!(p["crop"]["method"], "landmarks");
    assert_eq!(
        (p["crop"]["x0"].as_i64(), p["crop"]["y0"].as_i64(), p["crop"]["side"].as_i64()),
        (Some(14), Some(24), Some(52))
    );
    assert_eq!((p["mesh_frame"].as_str(), p["mesh_colours"].as_str()), (Some("camera"), Some("shaded")));

    // A .land file measured from the bottom edge (y' = 100 - y) of points whose box is
    // [20, 10] - [60, 50] (side 52 about (40, 30)): that crop with --land-y-up, the mirrored one
    // (about (40, 70)) without.
    let mut up = Landmarks68 { points: [[40.0, 30.0]; 68], confidence: [1.0; 68] };
    up.points[0] = [20.0, 10.0];
    up.points[1] = [60.0, 50.0];
    let land: String = up.points.iter().map(|p| format!("{} {}\n", p[0], 100.0 - p[1])).collect();
    std::fs::write(d.join("marks.land"), format!("68\n{land}")).unwrap();
    let crop_with = |flag: Option<&str>| {
        let mut c = fml();
        c.args(["reconstruct", "-q", "--checkpoint"]).arg(&run).arg(d.join("img.png"));
        c.arg("--landmarks").arg(d.join("marks.land")).arg("-o").arg(d.join("l.obj"));
        c.arg("--params").arg(d.join("l.json")).args(flag);
        c.assert().success();
        let p = json(&d.join("l.json"));
        (p["crop"]["x0"].as_i64(), p["crop"]["y0"].as_i64(), p["crop"]["side"].as_i64())
    };
    assert_eq!(crop_with(Some("--land-y-up")), (Some(14), Some(4), Some(52)));
    assert_eq!(crop_with(None), (Some(14), Some(44), Some(52)));

    let bytes = std::fs::read(d.join("m.ply")).unwrap();
    let end = bytes.windows(11).position(|w| w == b"end_header\n").unwrap() + 11;
    let header = String::from_utf8_lossy(&bytes[..end]);
    let n = demo_model().num_vertices();
    assert!(header.contains(&format!("element vertex {n}\n")), "{header}");
    assert!(header.contains(&format!("element face {}\n", demo_model().triangles.len())));
    // Camera frame: every vertex in front of the camera (z < 0); records are 3 f32 + 3 u8.
    for i in 0..n {
        let o = end + i * 15 + 8;
        let z = f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert!(z < -100.0, "vertex {i} z = {z}");
    }
}

#[test]
fn folder_with_a_corrupt_image_writes_the_others_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = make_run(&d.join("run"), 0, |_| vec![]);
    let faces = d.join("faces");
    std::fs::create_dir_all(faces.join("sub")).unwrap();
    picture(64, 64).save(faces.join("a.png")).unwrap();
    picture(100, 100).save(faces.join("sub/b.png")).unwrap();
    let mut lm = Landmarks68 { points: [[40.0, 50.0]; 68], confidence: [1.0; 68] };
    lm.points[0] = [20.0, 30.0];
    lm.points[1] = [60.0, 70.0];
    write_pts(faces.join("sub/b.pts"), &lm).unwrap();
    std::fs::write(faces.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let out = d.join("out");
    fml()
        .args(["reconstruct", "--params", "--overlay", "--batch", "2", "--checkpoint"])
        .arg(&run)
        .arg(&faces)
        .arg("-o")
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("reconstructed 2 of 3"))
        .stderr(contains("broken.png"))
        .stderr(contains("1 of 3 inputs failed"));
    for f in ["a.obj", "a.json", "a.overlay.png", "sub/b.obj", "sub/b.json", "sub/b.overlay.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("broken.obj").exists());
    let b = json(&out.join("sub/b.json"));
    assert_eq!(b["crop"]["method"], "landmarks");
    assert_eq!(b["crop"]["x0"].as_i64(), Some(14));
    assert_eq!(json(&out.join("a.json"))["crop"]["method"], "whole");

    // A value after --params means a file, which a directory of outputs cannot use.
    fml()
        .args(["reconstruct", "--checkpoint"])
        .arg(&run)
        .arg(&faces)
        .arg("-o")
        .arg(&out)
        .arg("--params")
        .arg(d.join("x.json"))
        .assert()
        .failure()
        .stderr(contains("--params is a flag"));
    fml()
        .args(["reconstruct", "a.png", "-o", "m.obj", "--bbox", "1,2,3"])
        .assert()
        .failure()
        .stderr(contains("x,y,w,h"));
}

#[test]
fn missing_default_model_and_base_only_final_level_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    picture(64, 64).save(d.join("a.png")).unwrap();
    fml()
        .env("FML_DEFAULT_MODEL", d.join("nowhere"))
        .arg("reconstruct")
        .arg(d.join("a.png"))
        .arg("-o")
        .arg(d.join("m.obj"))
        .assert()
        .failure()
        .stderr(contains("default model is missing"))
        .stderr(contains("nowhere"))
        .stderr(contains("--checkpoint"))
        .stderr(contains("FML_DEFAULT_MODEL"));
    let run = make_run(&d.join("run"), 0, |_| vec![]);
    // The default model found through FML_DEFAULT_MODEL.
    fml()
        .env("FML_DEFAULT_MODEL", &run)
        .args(["reconstruct", "-q"])
        .arg(d.join("a.png"))
        .arg("-o")
        .arg(d.join("m.obj"))
        .assert()
        .success();
    fml()
        .args(["reconstruct", "--level", "final", "--checkpoint"])
        .arg(&run)
        .arg(d.join("a.png"))
        .arg("-o")
        .arg(d.join("m.obj"))
        .assert()
        .failure()
        .stderr(contains("no corrective level"));
    fml()
        .args(["reconstruct", "--checkpoint"])
        .arg(&run)
        .arg(d.join("missing.png"))
        .arg("-o")
        .arg(d.join("m2.obj"))
        .assert()
        .failure()
        .stderr(contains("missing.png"));
}

#[test]
fn demo_refuses_a_run_of_another_face_model() {
    // The demo scores vertex by vertex against the demo model's ground truth: a run whose face
    // model has another topology (here: the same vertices, the triangles in another order) is
    // refused with a message, not indexed out of bounds.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut other = demo_model();
    other.triangles.rotate_left(1);
    other.save(d.join("other.safetensors")).unwrap();
    let run = make_run_with(&d.join("run"), d.join("other.safetensors").to_str().unwrap(), 0, |_| vec![]);
    fml()
        .args(["demo", "--faces", "1", "--checkpoint"])
        .arg(&run)
        .arg("-o")
        .arg(d.join("demo"))
        .assert()
        .failure()
        .stderr(contains("another topology"))
        .stderr(contains("run"));
}

#[test]
fn export_from_a_checkpoint_file_reconstructs_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = make_run(&d.join("run"), 0, |l| vec![(yaw(l), -0.3), (3, 1.0)]);
    picture(64, 64).save(d.join("a.png")).unwrap();
    fml()
        .arg("export")
        .arg(run.join("checkpoint.safetensors"))
        .arg("-o")
        .arg(d.join("shipped"))
        .assert()
        .success()
        .stdout(contains("weights only"));
    assert!(d.join("shipped/config.toml").is_file());
    for (r, out) in [(&run, "a.obj"), (&d.join("shipped"), "b.obj")] {
        fml()
            .args(["reconstruct", "-q", "--checkpoint"])
            .arg(r)
            .arg(d.join("a.png"))
            .arg("-o")
            .arg(d.join(out))
            .assert()
            .success();
    }
    assert_eq!(std::fs::read(d.join("a.obj")).unwrap(), std::fs::read(d.join("b.obj")).unwrap());
    fml().arg("export").arg(&run).arg("-o").arg(&run).assert().failure().stderr(contains("onto itself"));

    // A run on a model file: the export carries the model and names it by file name.
    let model_file = d.join("models/export_test_face.safetensors");
    std::fs::create_dir_all(d.join("models")).unwrap();
    demo_model().save(&model_file).unwrap();
    let run2 = make_run_with(&d.join("run2"), model_file.to_str().unwrap(), 0, |_| vec![]);
    fml().arg("export").arg(&run2).arg("-o").arg(d.join("shipped2")).assert().success();
    assert!(d.join("shipped2/export_test_face.safetensors").is_file());
    let cfg = Config::load(d.join("shipped2/config.toml")).unwrap();
    assert_eq!(cfg.model.path, "export_test_face.safetensors");
    std::fs::remove_file(&model_file).unwrap();
    fml()
        .args(["reconstruct", "-q", "--checkpoint"])
        .arg(d.join("shipped2"))
        .arg(d.join("a.png"))
        .arg("-o")
        .arg(d.join("c.obj"))
        .assert()
        .success();
    fml().arg("export").arg(d.join("nope")).arg("-o").arg(d.join("x")).assert().failure().stderr(contains("nope"));
}

/// Outputs never replace inputs or each other, a failure leaves no partial set of outputs, and
/// a folder run that writes nothing leaves no folder behind.
#[test]
fn outputs_never_overwrite_inputs_and_are_written_all_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = make_run(&d.join("run"), 0, |_| vec![]);
    let img = d.join("in.png");
    picture(64, 64).save(&img).unwrap();
    let mut lm = Landmarks68 { points: [[32.0, 32.0]; 68], confidence: [1.0; 68] };
    lm.points[0] = [12.0, 14.0];
    lm.points[1] = [50.0, 52.0];
    let pts = d.join("in.pts");
    write_pts(&pts, &lm).unwrap();
    let (img_bytes, pts_bytes) = (std::fs::read(&img).unwrap(), std::fs::read(&pts).unwrap());
    let rec = |args: &[&str]| {
        let mut c = fml();
        c.current_dir(d).args(["reconstruct", "-q", "--checkpoint"]).arg(&run).args(args);
        c.assert()
    };

    // The overlay onto the input image, the parameter record onto the landmark file (given by a
    // path that differs in spelling), the record onto the mesh.
    rec(&["in.png", "-o", "m.obj", "--overlay", "./in.png"]).failure().stderr(contains("would overwrite the input"));
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    rec(&["in.png", "-o", "m.obj", "--params", "sub/../in.pts"])
        .failure()
        .stderr(contains("--params sub/../in.pts would overwrite the input in.pts"));
    rec(&["in.png", "-o", "same.obj", "--params", "same.obj"]).failure().stderr(contains("are the same file"));
    assert_eq!(std::fs::read(&img).unwrap(), img_bytes);
    assert_eq!(std::fs::read(&pts).unwrap(), pts_bytes);

    // An unwritable or impossible side output fails before any work and leaves no mesh.
    rec(&["in.png", "-o", "p1.obj", "--overlay", "p1.obj.txt"]).failure().stderr(contains("write images as .png"));
    rec(&["in.png", "-o", "p2.obj", "--params", "sub"]).failure().stderr(contains("sub: is a folder"));
    // An old mesh at the target survives a failed run untouched.
    std::fs::write(d.join("p3.obj"), b"old").unwrap();
    rec(&["in.png", "-o", "p3.obj", "--params", "sub"]).failure();
    assert_eq!(std::fs::read(d.join("p3.obj")).unwrap(), b"old");
    for f in ["m.obj", "same.obj", "p1.obj", "p2.obj"] {
        assert!(!d.join(f).exists(), "{f} written by a failed run");
    }

    // A missing image is reported as such, before anything else.
    rec(&["nope.png", "-o", "n.obj"]).failure().stderr(contains("nope.png: no such file"));
    // Folder inputs need a folder output; a folder run that writes nothing leaves none behind.
    rec(&["sub", "-o", "all.obj"]).failure().stderr(contains("names a mesh file"));
    rec(&["sub", "-o", "outdir"]).failure().stderr(contains("no images in this folder"));
    assert!(!d.join("outdir").exists());
    // A checkpoint that cannot be loaded fails before any output folder is made.
    fml()
        .current_dir(d)
        .args(["reconstruct", "-q", "--checkpoint", "no-run", "in.png", "-o", "new/sub/m.obj"])
        .assert()
        .failure();
    fml().current_dir(d).args(["reconstruct", "-q", "--checkpoint", "no-run", "sub", "-o", "new2"]).assert().failure();
    assert!(!d.join("new").exists() && !d.join("new2").exists());
    // A folder reconstructed into itself twice (its subfolder named like the write probe): the
    // second run skips the first run's overlays instead of taking them for faces.
    std::fs::create_dir_all(d.join("pics/probe")).unwrap();
    picture(64, 64).save(d.join("pics/a.png")).unwrap();
    picture(64, 64).save(d.join("pics/probe/b.png")).unwrap();
    for _ in 0..2 {
        rec(&["pics", "-o", "pics", "--overlay"]).success().stdout(contains("reconstructed 2 of 2"));
    }
    assert!(!d.join("pics/a.overlay.obj").exists());
    // A folder of nothing but overlays holds no faces.
    std::fs::create_dir(d.join("only")).unwrap();
    std::fs::copy(d.join("pics/a.overlay.png"), d.join("only/a.overlay.png")).unwrap();
    rec(&["only", "-o", "only-out"]).failure().stderr(contains("no images in this folder"));
    // The same calls with proper paths work (the checks above are not blanket refusals).
    rec(&["in.png", "-o", "ok/m.obj", "--overlay", "--params"]).success();
    for f in ["ok/m.obj", "ok/m.json", "ok/m.overlay.png"] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    // No temporary files anywhere.
    for e in walk(d) {
        assert!(!e.file_name().unwrap().to_string_lossy().contains(".tmp-"), "{} left", e.display());
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
