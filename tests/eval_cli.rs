//! CLI tests of `fml eval`: a tiny synthetic FaceWarehouse set evaluated with a fresh network
//! (zero head = mean face), the table, the JSON, skipped poses, bad folders, and the base rows
//! taken from another run (`--base-checkpoint`).

use assert_cmd::Command;
use candle_core::Device;
use candle_nn::VarMap;
use fml::checkpoint::{self, Meta};
use fml::config::Config;
use fml::network::FaceNet;
use fml::render::Backend;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn tiny_config() -> Config {
    Config::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap()
}

/// A run directory (config.toml + checkpoint) holding an untrained network, with or without the
/// corrective level.
fn fresh_run(dir: &Path, correctives: bool) -> PathBuf {
    fresh_run_with(dir, correctives, tiny_config(), 0.0)
}

/// [`fresh_run`] with a given config (and its face model), the first identity output's bias set
/// to `shape0` (a network whose base level is not the mean face).
fn fresh_run_with(dir: &Path, correctives: bool, cfg: Config, shape0: f32) -> PathBuf {
    let model = fml::train::load_face_model(&cfg.model).unwrap();
    let varmap = VarMap::new();
    let net = FaceNet::new(&model, &cfg, correctives, Backend::Fast, &varmap, &Device::Cpu).unwrap();
    if shape0 != 0.0 {
        let data = varmap.data().lock().unwrap();
        let bias = &data["encoder.head.bias"];
        let mut b = bias.as_tensor().to_vec1::<f32>().unwrap();
        b[0] = shape0; // z_shape[0]: the layout's first output
        bias.set(&candle_core::Tensor::new(b, &Device::Cpu).unwrap()).unwrap();
    }
    let meta = Meta {
        format_version: 1,
        stage: if correctives { "finetune" } else { "pretrain" }.into(),
        step: 0,
        loader: Default::default(),
        seed: cfg.train.seed,
        num_vertices: model.num_vertices(),
        num_outputs: net.layout.num_outputs(),
        correctives: net.layout.correctives,
        modes: None,
        finetuned_from: None,
        data: None,
    };
    std::fs::create_dir_all(dir).unwrap();
    checkpoint::save(&dir.join(checkpoint::FILE), &varmap, &[], &meta).unwrap();
    std::fs::write(dir.join("config.toml"), cfg.to_toml()).unwrap();
    dir.to_path_buf()
}

/// `fml synth --layout facewarehouse --testers 2 --poses 2 --size 64` into `dir`.
fn synth_set(dir: &Path) {
    Command::cargo_bin("fml")
        .unwrap()
        .args(["synth", "--layout", "facewarehouse", "--testers", "2", "--poses", "2", "--size", "64", "--quiet"])
        .arg("-o")
        .arg(dir)
        .assert()
        .success();
}

fn eval(data: &Path, run: &Path, json: &Path) -> assert_cmd::assert::Assert {
    eval_cmd(data, run, json).assert()
}

/// The `fml eval` command of [`eval`], before it runs (more arguments may follow).
fn eval_cmd(data: &Path, run: &Path, json: &Path) -> Command {
    let mut c = Command::cargo_bin("fml").unwrap();
    c.arg("eval")
        .arg("--facewarehouse")
        .arg(data)
        .arg("--checkpoint")
        .arg(run)
        .arg("--json")
        .arg(json)
        // Fewer ICP iterations than the default keep the test fast; the numbers stay meaningful.
        .args(["--device", "cpu", "--quiet", "--batch", "3", "--icp-iterations", "15"]);
    c
}

#[test]
fn evaluates_a_synthetic_set_prints_the_table_and_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fw");
    synth_set(&data);
    let run = fresh_run(&tmp.path().join("run"), false);
    let json = tmp.path().join("out/eval.json");
    eval(&data, &run, &json)
        .success()
        .stdout(predicate::str::contains("4 meshes evaluated, 0 skipped"))
        .stdout(predicate::str::is_match(r"(?m)^base +\d+\.\d+ mm +\d+\.\d+ +\d+\.\d+ +\d+\.\d+ +\(4\)$").unwrap())
        .stdout(predicate::str::contains("final = base"))
        .stdout(predicate::str::is_match(r"(?m)^mean +\d+\.\d+ mm +\d+\.\d+ +- +- +\(baseline").unwrap());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["final_is_base"], true);
    let meshes = r["meshes"].as_array().unwrap();
    let ids: Vec<String> =
        meshes.iter().map(|m| format!("{}/{}", m["tester"].as_str().unwrap(), m["pose"].as_str().unwrap())).collect();
    assert_eq!(ids, ["Tester_1/pose_0", "Tester_1/pose_1", "Tester_2/pose_0", "Tester_2/pose_1"]);
    let mut means = Vec::new();
    for m in meshes {
        let g = &m["base"]["geometry"];
        for key in ["mean_mm", "median_mm", "rmse_mm", "scale", "iterations"] {
            assert!(g[key].is_number(), "{key} missing in {g}");
        }
        assert_eq!(g["init"], "landmarks");
        assert_eq!(g["nose_tip"], "landmark");
        // The mean face against faces with random identity and expression: clearly wrong.
        assert!(g["mean_mm"].as_f64().unwrap() > 0.5, "{g}");
        let photo = m["base"]["photometric"].as_f64().unwrap();
        assert!(photo > 0.0 && photo < 1.0, "{photo}");
        assert_eq!(m["final"], m["base"]);
        // The zero head regresses the mean face, so the baseline row scores the same.
        let mf = m["mean_face"]["mean_mm"].as_f64().unwrap();
        assert!((mf - g["mean_mm"].as_f64().unwrap()).abs() < 1e-4, "{mf} vs {g}");
        means.push(g["mean_mm"].as_f64().unwrap());
    }
    let s = &r["summary"][0];
    assert_eq!((s["level"].as_str(), s["meshes"].as_u64()), (Some("base"), Some(4)));
    let mean = means.iter().sum::<f64>() / 4.0;
    assert!((s["geometry_mean_mm"].as_f64().unwrap() - mean).abs() < 1e-9);
    let sd = (means.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
    assert!((s["geometry_sd_mm"].as_f64().unwrap() - sd).abs() < 1e-9);
    assert!((r["mean_face_mm"][0].as_f64().unwrap() - mean).abs() < 1e-4, "{}", r["mean_face_mm"]);
    assert_eq!(r["skipped"].as_array().unwrap().len(), 0);
}

#[test]
fn missing_files_skip_poses_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fw");
    synth_set(&data);
    std::fs::remove_file(data.join("Tester_1/TrainingPose/pose_1.pts")).unwrap();
    std::fs::remove_file(data.join("Tester_2/TrainingPose/pose_0.obj")).unwrap();
    std::fs::write(data.join("Tester_2/TrainingPose/pose_1.obj"), "v 0 0 nonsense\n").unwrap();
    let run = fresh_run(&tmp.path().join("run"), true);
    let json = tmp.path().join("eval.json");
    eval(&data, &run, &json)
        .success()
        .stdout(predicate::str::contains("1 meshes evaluated, 3 skipped"))
        .stdout(predicate::str::contains("1 x missing landmarks"))
        .stdout(predicate::str::contains("1 x missing ground-truth mesh"))
        .stdout(predicate::str::contains("1 x bad ground-truth mesh"))
        .stdout(predicate::str::contains("final = base").not());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["final_is_base"], false);
    let skipped = r["skipped"].as_array().unwrap();
    let got: Vec<(&str, &str)> =
        skipped.iter().map(|s| (s["pose"].as_str().unwrap(), s["reason"].as_str().unwrap())).collect();
    assert_eq!(got.len(), 3);
    assert!(got[0].0 == "pose_1" && got[0].1.contains("pose_1.pts"), "{got:?}");
    assert!(got[1].0 == "pose_0" && got[1].1.contains("pose_0.obj"), "{got:?}");
    assert!(got[2].1.contains("line 1") && got[2].1.contains("nonsense"), "{got:?}");
    // The corrective level was evaluated on its own (a fresh net's correction is zero).
    let m = &r["meshes"][0];
    assert!(m["final"]["geometry"]["mean_mm"].is_number());
}

#[test]
fn bad_folders_and_missing_runs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fresh_run(&tmp.path().join("run"), false);
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    eval(&empty, &run, &tmp.path().join("x.json"))
        .failure()
        .stderr(predicate::str::contains("no Tester_*/TrainingPose/pose_*.png"));
    assert!(!tmp.path().join("x.json").exists());
    eval(&tmp.path().join("nowhere"), &run, &tmp.path().join("x.json"))
        .failure()
        .stderr(predicate::str::contains("not a folder"));
    eval(&empty, &tmp.path().join("norun"), &tmp.path().join("x.json"))
        .failure()
        .stderr(predicate::str::contains("norun"));
    // Every pose unusable: an error that says why.
    let data = tmp.path().join("fw");
    synth_set(&data);
    for t in ["Tester_1", "Tester_2"] {
        for p in ["pose_0", "pose_1"] {
            std::fs::remove_file(data.join(format!("{t}/TrainingPose/{p}.obj"))).unwrap();
        }
    }
    eval(&data, &run, &tmp.path().join("x.json"))
        .failure()
        .stderr(predicate::str::contains("none of the 4 poses could be evaluated"))
        .stderr(predicate::str::contains("missing ground-truth mesh"));
}

/// `--base-checkpoint`: the final level of a finetuned run against the base level of the run it
/// was finetuned from (as Sec. 7 compares the levels). The base numbers must be exactly that run's own, the final numbers the
/// finetuned run's.
#[test]
fn base_level_from_another_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fw");
    synth_set(&data);
    let pre = fresh_run_with(&tmp.path().join("pre"), false, tiny_config(), 1.5);
    let fine = fresh_run(&tmp.path().join("fine"), true);
    let read = |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let (jp, jf, jb) = (tmp.path().join("pre.json"), tmp.path().join("fine.json"), tmp.path().join("both.json"));
    eval(&data, &pre, &jp).success();
    eval(&data, &fine, &jf).success().stdout(predicate::str::contains("note: base").not());
    let note = format!("note: base (geometry and photometric) = the base level of {}", pre.display());
    eval_cmd(&data, &fine, &jb)
        .arg("--base-checkpoint")
        .arg(&pre)
        .assert()
        .success()
        .stdout(predicate::str::contains(note));
    let (rp, rf, rb) = (read(&jp), read(&jf), read(&jb));
    assert_eq!(rb["base_checkpoint"].as_str(), pre.to_str());
    assert!(rf.get("base_checkpoint").is_none());
    for (i, m) in rb["meshes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(m["base"], rp["meshes"][i]["base"], "mesh {i}");
        assert_eq!(m["final"], rf["meshes"][i]["final"], "mesh {i}");
    }
    // The two networks differ (the pretrained one is not the mean face), so the rows do too.
    assert_ne!(rp["summary"][0]["geometry_mean_mm"], rf["summary"][0]["geometry_mean_mm"]);
    assert_eq!(rb["summary"][0], rp["summary"][0]);
    assert_eq!(rb["summary"][1], rf["summary"][1]);

    let refused = |run: &Path, base: &Path, why: &str| {
        eval_cmd(&data, run, &tmp.path().join("x.json"))
            .arg("--base-checkpoint")
            .arg(base)
            .assert()
            .failure()
            .stderr(predicate::str::contains(why));
        assert!(!tmp.path().join("x.json").exists());
    };
    // A checkpoint without correctives has no final level to compare.
    refused(&pre, &fine, "no corrective level");
    // A base run with another input size cannot stand in.
    let mut other = tiny_config();
    other.encoder.input_size = 72;
    refused(&fine, &fresh_run_with(&tmp.path().join("other"), false, other, 0.0), "crops of 64 vs 72 px");
    // Nor one on a face model with another face region (same vertices and triangles).
    let mut m = fml::face_model::demo::demo_model();
    m.face_region.truncate(m.face_region.len() / 2);
    let path = tmp.path().join("half-region.safetensors");
    m.save(&path).unwrap();
    let mut other = tiny_config();
    other.model.path = path.to_string_lossy().into_owned();
    refused(&fine, &fresh_run_with(&tmp.path().join("region"), false, other, 0.0), "different face region");
}
