//! Smoke tests of `fml bench` at tiny sizes: each part runs, prints numbers and writes the JSON
//! schema other tools read. Speeds themselves are never asserted.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

fn tiny_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml").to_string_lossy().into_owned()
}

fn bench(args: &[&str], json: &Path) -> (String, serde_json::Value) {
    let out = Command::cargo_bin("fml")
        .unwrap()
        .arg("bench")
        .args(args)
        .args(["--device", "cpu", "--json"])
        .arg(json)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    (String::from_utf8(out).unwrap(), v)
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn positive(v: &serde_json::Value, key: &str) {
    assert!(v[key].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()), "{key} in {v}");
}

#[test]
fn infer_reports_latency_and_the_batch_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("infer.json");
    let config = tiny_config();
    let (out, v) = bench(&["infer", "--config", &config, "--batches", "2,4", "--runs", "3"], &json);
    assert!(out.contains("latency at batch 1") && out.contains("images/s"), "{out}");
    assert_eq!(
        keys(&v),
        [
            "best_batch",
            "config",
            "device",
            "hz_b1",
            "input_size",
            "latency_ms_b1",
            "per_batch",
            "tf32",
            "throughput_img_s"
        ]
    );
    assert_eq!((v["device"].as_str(), v["input_size"].as_u64()), (Some("cpu"), Some(64)));
    assert_eq!(v["config"].as_str(), Some(config.as_str()));
    for k in ["latency_ms_b1", "hz_b1", "throughput_img_s"] {
        positive(&v, k);
    }
    let batches: Vec<u64> = v["per_batch"].as_array().unwrap().iter().map(|b| b["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 2, 4]);
    for b in v["per_batch"].as_array().unwrap() {
        assert_eq!(keys(b), ["batch", "img_s", "ms_per_batch"]);
        positive(b, "ms_per_batch");
    }
    assert!(batches.contains(&v["best_batch"].as_u64().unwrap()));
    let lat = v["latency_ms_b1"].as_f64().unwrap();
    assert!((v["hz_b1"].as_f64().unwrap() * lat - 1e3).abs() < 1e-6);
}

#[test]
fn render_train_and_loader_report_their_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("render.json");
    let (out, v) = bench(&["render", "--batch", "2", "--vertices", "300", "--size", "32"], &json);
    assert!(out.contains("memory-traffic floor") && out.contains("reference"), "{out}");
    assert_eq!(keys(&v), ["batch", "bytes_floor", "device", "fwd_bwd_ms", "fwd_ms", "gb_s", "tf32", "vertices"]);
    assert_eq!((v["batch"].as_u64(), v["vertices"].as_u64()), (Some(2), Some(300)));
    for k in ["fwd_ms", "fwd_bwd_ms", "bytes_floor", "gb_s"] {
        positive(&v, k);
    }

    let json = tmp.path().join("train.json");
    let config = tiny_config();
    let args = ["train", "--config", &config, "--stage", "finetune", "--steps", "1", "--warmup", "0", "--batch", "2"];
    let (out, v) = bench(&args, &json);
    assert!(out.contains("images/s"), "{out}");
    assert_eq!(keys(&v), ["batch", "config", "device", "images_per_s", "ms_per_step", "stage", "steps", "tf32"]);
    assert_eq!((v["stage"].as_str(), v["batch"].as_u64(), v["steps"].as_u64()), (Some("finetune"), Some(2), Some(1)));
    positive(&v, "images_per_s");
    positive(&v, "ms_per_step");

    let json = tmp.path().join("loader.json");
    let (_, v) = bench(&["loader", "--batch", "4", "--size", "16"], &json);
    positive(&v, "images_per_s");
    // The precision is recorded with every measurement; on the CPU TF32 is never in effect.
    assert_eq!(v["tf32"].as_bool(), Some(false));
}

#[test]
fn bad_arguments_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config();
    Command::cargo_bin("fml")
        .unwrap()
        .args(["bench", "infer", "--config", &config, "--checkpoint", "x", "--device", "cpu"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("not both"));
    Command::cargo_bin("fml")
        .unwrap()
        .args(["bench", "render", "--vertices", "2", "--device", "cpu"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("vertices >= 3"));
    Command::cargo_bin("fml")
        .unwrap()
        .args(["bench", "train", "--config"])
        .arg(tmp.path().join("missing.toml"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("missing.toml"));
}
