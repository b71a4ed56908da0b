//! CLI tests of `fml prepare`: a folder of synthetic faces in, a loadable dataset out; bad and
//! empty inputs give clear messages and a nonzero exit only when nothing is usable.

use assert_cmd::Command;
use fml::data::{Dataset, Landmarks68, Split, write_pts};
use image::{Rgb, RgbImage};
use predicates::str::contains;
use std::path::Path;

fn face(dir: &Path, name: &str, cx: f32) {
    let mut lm = Landmarks68 { points: [[0.0; 2]; 68], confidence: [1.0; 68] };
    for (i, p) in lm.points.iter_mut().enumerate() {
        let a = i as f32 / 68.0 * std::f32::consts::TAU;
        *p = [cx + 30.0 * a.cos(), 60.0 + 40.0 * a.sin()];
    }
    let img = RgbImage::from_fn(120, 120, |x, y| Rgb([x as u8, y as u8, 100]));
    img.save(dir.join(name)).unwrap();
    write_pts(dir.join(name).with_extension("pts"), &lm).unwrap();
}

fn fml() -> Command {
    Command::cargo_bin("fml").unwrap()
}

#[test]
fn prepare_packs_a_folder_and_reports_skips() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("faces");
    std::fs::create_dir_all(data.join("nested")).unwrap();
    for k in 0..9 {
        face(&data, &format!("f{k}.png"), 50.0 + k as f32);
    }
    face(&data.join("nested"), "g.png", 60.0);
    std::fs::write(data.join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    std::fs::copy(data.join("f0.pts"), data.join("broken.pts")).unwrap();
    RgbImage::new(8, 8).save(data.join("nolandmarks.png")).unwrap();

    let out = dir.path().join("ds/train.fmlds");
    fml()
        .args(["prepare", "--size", "32", "--val-fraction", "0.2", "--seed", "4", "-q", "-o"])
        .arg(&out)
        .arg(&data)
        .assert()
        .success()
        .stdout(contains("faces found: 12"))
        .stdout(contains("packed: 10 ("))
        .stdout(contains("unreadable image"))
        .stdout(contains("broken.png"))
        .stdout(contains("missing landmarks"))
        .stdout(contains("wrote"));
    let ds = Dataset::open(&out).unwrap();
    assert_eq!((ds.len(), ds.size()), (10, 32));
    // round(0.2 * 11 candidates) = 2 drawn for validation; the broken image may be one of them.
    let val = ds.indices(Some(Split::Val)).len();
    assert!((1..=2).contains(&val), "{val}");
}

#[test]
fn prepare_fails_only_when_nothing_is_usable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.fmlds");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fml().arg("prepare").arg(&empty).arg("-o").arg(&out).assert().failure().stderr(contains("no usable faces"));
    fml()
        .arg("prepare")
        .arg(dir.path().join("nope"))
        .arg("-o")
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("no such file or folder"));
    assert!(!out.exists());
    // One good face among bad inputs is enough.
    face(&empty, "a.png", 60.0);
    fml().arg("prepare").arg(&empty).arg(dir.path().join("nope")).arg("-q").arg("-o").arg(&out).assert().success();
    assert_eq!(Dataset::open(&out).unwrap().len(), 1);
    fml()
        .args(["prepare", "--val-fraction", "1.5", "-o"])
        .arg(&out)
        .arg(&empty)
        .assert()
        .failure()
        .stderr(contains("val-fraction"));
}
