//! CLI tests of `fml synth`: files, determinism, layouts, settings files and argument errors.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

fn synth(args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("fml").unwrap().arg("synth").args(args).assert()
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn flat_layout_is_deterministic_and_complete() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&a, &b] {
        synth(&["--count", "3", "--seed", "9", "--size", "64", "--quiet", "-o", dir.path().to_str().unwrap()])
            .success()
            .stdout(predicate::str::contains("wrote 3 images"));
    }
    for i in 0..3 {
        for ext in ["png", "pts", "obj", "json"] {
            let name = format!("{i:06}.{ext}");
            assert_eq!(read(a.path(), &name), read(b.path(), &name), "{name}");
        }
    }
    let img = image::open(a.path().join("000000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    let pts = String::from_utf8(read(a.path(), "000002.pts")).unwrap();
    assert!(pts.starts_with("version: 1\nn_points: 68\n{\n") && pts.ends_with("}\n"));
    assert_eq!(pts.lines().count(), 68 + 4);
    let settings: serde_json::Value = serde_json::from_slice(&read(a.path(), "synth.json")).unwrap();
    assert_eq!(settings["config"]["seed"], 9);
    assert_eq!(settings["config"]["size"], 64);
    assert_eq!(settings["images"], 3);
    // f32 settings are written as given (0.6, not 0.6000000238418579).
    let text = String::from_utf8(read(a.path(), "synth.json")).unwrap();
    assert!(!text.contains("0000000"), "{text}");
}

#[test]
fn facewarehouse_layout_with_testers_and_poses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    synth(&["--layout", "facewarehouse", "--testers", "2", "--poses", "2", "--size", "48", "--quiet", "-o", out])
        .success()
        .stdout(predicate::str::contains("wrote 4 images of 2 identities"));
    for k in 1..=2 {
        for j in 0..2 {
            for ext in ["png", "pts", "obj", "json"] {
                assert!(dir.path().join(format!("Tester_{k}/TrainingPose/pose_{j}.{ext}")).is_file());
            }
        }
    }
    assert!(!dir.path().join("Tester_3").exists());
}

#[test]
fn settings_file_and_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    synth(&["-o", out]).failure().stderr(predicate::str::contains("--count"));
    synth(&["--layout", "facewarehouse", "--testers", "2", "--poses", "3", "--count", "5", "-o", out])
        .failure()
        .stderr(predicate::str::contains("disagrees"));
    synth(&["--count", "1", "--size", "8", "-o", out]).failure().stderr(predicate::str::contains("size 8"));
    synth(&["--count", "1", "--model", "/nonexistent/world.safetensors", "-o", out])
        .failure()
        .stderr(predicate::str::contains("/nonexistent/world.safetensors"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "count = 2\nsize = 32\nwobble = 1\n").unwrap();
    synth(&["--config", bad.to_str().unwrap(), "-o", out])
        .failure()
        .stderr(predicate::str::contains("bad.toml").and(predicate::str::contains("wobble")));

    // A valid settings file: its values apply, command-line options override them.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "count = 2\nsize = 32\nseed = 4\n[extras]\np_beard = 1.0\n").unwrap();
    synth(&["--config", good.to_str().unwrap(), "--seed", "5", "--quiet", "-o", out]).success();
    let settings: serde_json::Value = serde_json::from_slice(&read(Path::new(out), "synth.json")).unwrap();
    assert_eq!(settings["config"]["seed"], 5);
    assert_eq!(settings["config"]["count"], 2);
    let rec: serde_json::Value = serde_json::from_slice(&read(Path::new(out), "000001.json")).unwrap();
    assert_eq!(rec["width"], 32);
    assert_eq!(rec["appearance"]["applied"][0], "beard");

    // A second set is not mixed into the first.
    synth(&["--count", "1", "--size", "32", "--quiet", "-o", out])
        .failure()
        .stderr(predicate::str::contains("not empty"));
    // Progress without a terminal: plain lines on stderr (indicatif alone would print nothing).
    let fresh = dir.path().join("fresh");
    synth(&["--count", "2", "--size", "32", "-o", fresh.to_str().unwrap()])
        .success()
        .stderr(predicate::str::contains("synth: 2/2 images"));
}
