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
    // round(0.2 * 10 packed faces) = 2 drawn for validation (after the checks, so the broken
    // image cannot take one of the places).
    assert_eq!(ds.indices(Some(Split::Val)).len(), 2);
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

/// The dataset never replaces a file it is made from: a manifest, an image or a landmark file
/// named as the output is refused before anything is read or written.
#[test]
fn prepare_never_writes_over_an_input() {
    let dir = tempfile::tempdir().unwrap();
    face(dir.path(), "a.png", 60.0);
    let manifest = dir.path().join("labels.json");
    let points: Vec<[f32; 2]> =
        (0..68).map(|i| [40.0 + (i % 17) as f32 * 3.0, 30.0 + (i / 17) as f32 * 15.0]).collect();
    let json = serde_json::json!([{"image": "a.png", "landmarks": points}]);
    std::fs::write(&manifest, json.to_string()).unwrap();
    let before = std::fs::read(&manifest).unwrap();
    // The manifest itself, the image it names (spelled through `sub/..`) and a sibling .pts.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for (input, out) in [
        (manifest.clone(), manifest.clone()),
        (manifest.clone(), dir.path().join("sub/../a.png")),
        (dir.path().join("a.png"), dir.path().join("a.pts")),
    ] {
        fml()
            .args(["prepare", "-q", "-o"])
            .arg(&out)
            .arg(&input)
            .assert()
            .failure()
            .stderr(contains("would overwrite the input"));
    }
    assert_eq!(std::fs::read(&manifest).unwrap(), before);
    assert!(image::open(dir.path().join("a.png")).is_ok());
    // The same inputs into a new file work.
    let out = dir.path().join("d.fmlds");
    fml().args(["prepare", "-q", "--size", "32", "-o"]).arg(&out).arg(&manifest).assert().success();
    assert_eq!(Dataset::open(&out).unwrap().len(), 1);
}

/// FaceWarehouse-style 74-point `.land` files: refused with a pointer to `--land-map` without a
/// mapping, read through it with one (same crop and landmarks as the equivalent `.pts`).
#[test]
fn prepare_reads_other_land_schemes_through_a_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("pts"), dir.path().join("land"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    face(&a, "f.png", 55.0);
    std::fs::copy(a.join("f.png"), b.join("f.png")).unwrap();
    let lm = fml::data::read_pts(a.join("f.pts")).unwrap();
    // The file holds the 68 points in reverse order, then 6 points of its own.
    let mut text = String::from("74\n");
    for k in (0..68).rev() {
        text += &format!("{} {}\n", lm.points[k][0], lm.points[k][1]);
    }
    for k in 0..6 {
        text += &format!("{} 5\n", 10 + k);
    }
    std::fs::write(b.join("f.land"), text).unwrap();
    let map: String = std::iter::once("74\n".to_string()).chain((0..68).map(|k| format!("{}\n", 67 - k))).collect();
    let map_path = dir.path().join("fw74.map");
    std::fs::write(&map_path, map).unwrap();

    let out = dir.path().join("d.fmlds");
    fml().arg("prepare").arg(&b).arg("-o").arg(&out).assert().failure().stderr(contains("--land-map"));
    fml().arg("prepare").arg(&b).arg("-q").arg("--land-map").arg(&map_path).arg("-o").arg(&out).assert().success();
    let want = dir.path().join("w.fmlds");
    fml().arg("prepare").arg(&a).arg("-q").arg("-o").arg(&want).assert().success();
    let (got, want) = (Dataset::open(&out).unwrap().read(0).unwrap(), Dataset::open(&want).unwrap().read(0).unwrap());
    assert_eq!(got.landmarks, want.landmarks);
    assert_eq!(got.image, want.image);
    // A broken mapping is an error naming its file, before any work.
    std::fs::write(&map_path, "74\n1\n").unwrap();
    fml()
        .arg("prepare")
        .arg(&b)
        .arg("--land-map")
        .arg(&map_path)
        .arg("-o")
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("fw74.map"));
}
