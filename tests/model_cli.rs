//! `fml model demo` / `fml model inspect`, the native format round trip through the CLI, and the
//! shared ICT-FaceKit model loading as it is (skipped when ../shared is absent).

use assert_cmd::Command;
use fml::face_model::FaceModel;
use predicates::str::contains;
use std::path::PathBuf;

fn ict_path() -> Option<PathBuf> {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/ict_face.safetensors");
    [beside, PathBuf::from("/work/shared/models/ict_face.safetensors")].into_iter().find(|p| p.exists())
}

#[test]
fn demo_model_inspect_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("demo.safetensors");
    let mesh = dir.path().join("mean.ply");
    Command::cargo_bin("fml")
        .unwrap()
        .args(["model", "demo", "-o"])
        .arg(&m)
        .arg("--mesh")
        .arg(&mesh)
        .args(["--shape-modes", "5"])
        .assert()
        .success()
        .stdout(contains("NOT a real face"))
        .stdout(contains("shape 5, expression 16"));
    assert!(mesh.exists());
    Command::cargo_bin("fml")
        .unwrap()
        .args(["model", "inspect"])
        .arg(&m)
        .assert()
        .success()
        .stdout(contains("vertices:    5760"))
        .stdout(contains("license:"));
    let mut expect = fml::face_model::demo::demo_model();
    expect.truncate(Some(5), None, None).unwrap();
    assert_eq!(FaceModel::load(&m).unwrap(), expect, "the file must round-trip exactly");
    // A truncated file is a clear error naming it.
    let bytes = std::fs::read(&m).unwrap();
    let bad = dir.path().join("cut.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    Command::cargo_bin("fml")
        .unwrap()
        .args(["model", "inspect"])
        .arg(&bad)
        .assert()
        .failure()
        .stderr(contains("cut.safetensors"));
}

/// `model import` never replaces its source: an in-place `--format native --shape-modes 2`
/// would silently drop the source's other modes.
#[test]
fn import_never_writes_over_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("demo.safetensors");
    Command::cargo_bin("fml").unwrap().args(["model", "demo", "-o"]).arg(&m).assert().success();
    let before = std::fs::read(&m).unwrap();
    Command::cargo_bin("fml")
        .unwrap()
        .args(["model", "import", "--format", "native", "--shape-modes", "2"])
        .arg(&m)
        .arg("-o")
        .arg(dir.path().join(".").join("demo.safetensors"))
        .assert()
        .failure()
        .stderr(contains("would overwrite the input"));
    assert_eq!(std::fs::read(&m).unwrap(), before);
    let out = dir.path().join("two.safetensors");
    Command::cargo_bin("fml")
        .unwrap()
        .args(["model", "import", "--format", "native", "--shape-modes", "2"])
        .arg(&m)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(FaceModel::load(&out).unwrap().num_shape(), 2);
}

#[test]
fn the_shared_ict_model_loads_as_it_is() {
    let Some(p) = ict_path() else {
        eprintln!("../shared/models/ict_face.safetensors not found: skipped");
        return;
    };
    let m = FaceModel::load(&p).unwrap();
    assert_eq!((m.num_vertices(), m.num_shape(), m.num_expr()), (9409, 100, 53));
    assert!(m.meta("albedo").contains("procedural"), "ICT has no reflectance: the procedural prior fills in");
    assert_eq!(m.face_region.len(), 6706, "narrow_face_vertices");
    assert!(m.skin_mask.len() > 500 && m.skin_mask.len() < 6706);
    // Mean reflectance is skin-coloured on the skin mask (red > green > blue).
    let i = m.skin_mask[m.skin_mask.len() / 2] as usize;
    let a = &m.mean_albedo[i * 3..i * 3 + 3];
    assert!(a[0] > a[1] && a[1] > a[2], "{a:?}");
}

/// `fml model inspect ... | head -1` and the like: a reader that stops early is not a crash (the
/// std print macros panic on a closed pipe; Rust ignores SIGPIPE).
#[cfg(unix)]
#[test]
fn a_closed_stdout_is_not_a_crash() {
    use std::os::fd::FromRawFd;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("demo.safetensors");
    fml::face_model::demo::demo_model().save(&m).unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fresh descriptors; the read end is closed at once and the write
    // end is owned by the Stdio from then on.
    let stdout = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        std::process::Stdio::from_raw_fd(fds[1])
    };
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("fml"))
        .args(["model", "inspect"])
        .arg(&m)
        .stdout(stdout)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}
