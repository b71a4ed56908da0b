//! It must actually learn (issue: training): tiny CPU runs on synthetic data from the demo model.
//! - pretraining lowers every data term and brings landmark and geometric error well below the
//!   mean-face baseline;
//! - with a deliberately truncated base model and data from the full model, finetuning with
//!   correctives makes the final level better than the base level (photometric and geometric);
//! - every trainable tensor receives a gradient in one step;
//! - an interrupted run resumed from its checkpoint reproduces the uninterrupted run exactly.

use candle_core::Device;
use fml::config::Config;
use fml::data::dataset::{Dataset, Split};
use fml::eval::umeyama;
use fml::io::mesh::Mesh;
use fml::train::{Stage, TrainOptions};
use std::path::{Path, PathBuf};

/// Synthetic images from the (full) demo model, packed as 64 px crops.
fn dataset(dir: &Path, count: usize, seed: u64) -> PathBuf {
    let raw = dir.join("synth");
    let cfg = fml::synth::SynthConfig { count, seed, size: 96, progress: false, ..Default::default() };
    fml::synth::generate(&cfg, &raw).unwrap();
    let out = dir.join("data.fmlds");
    let pcfg = fml::data::PrepareConfig {
        crop: fml::data::crop::CropConfig { size: 64, ..Default::default() },
        val_fraction: 0.1,
        min_face: 24.0,
        progress: false,
        ..Default::default()
    };
    fml::data::prepare(&[raw], &out, &pcfg).unwrap();
    out
}

fn tiny_config(data: &Path) -> Config {
    let mut c = Config::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap();
    c.data.dataset = data.to_path_buf();
    c
}

fn run(cfg: &Config, stage: Stage, out: &Path, resume: bool, stop_at: Option<u64>) -> fml::train::TrainReport {
    fml::train::train(&TrainOptions {
        config: cfg.clone(),
        stage,
        out: out.to_path_buf(),
        resume,
        progress: false,
        stop_at,
    })
    .unwrap()
}

/// Mean vertex distance (mm) over the face region after a similarity alignment, for predicted
/// base and final geometry and for the mean face, against the ground-truth meshes of the
/// validation records (same topology as the demo model).
struct GeometryErrors {
    base: f64,
    fine: f64,
    mean_face: f64,
}

fn aligned_error(pred: &[[f32; 3]], gt: &[[f32; 3]], region: &[u32]) -> f64 {
    let p: Vec<[f64; 3]> = region.iter().map(|&i| pred[i as usize].map(|x| x as f64)).collect();
    let g: Vec<[f64; 3]> = region.iter().map(|&i| gt[i as usize].map(|x| x as f64)).collect();
    let s = umeyama(&p, &g, None, true).unwrap();
    p.iter()
        .zip(&g)
        .map(|(a, b)| {
            let q = s.apply(*a);
            ((q[0] - b[0]).powi(2) + (q[1] - b[1]).powi(2) + (q[2] - b[2]).powi(2)).sqrt()
        })
        .sum::<f64>()
        / p.len() as f64
}

fn geometry_errors(run_dir: &Path, data: &Path) -> GeometryErrors {
    let t = fml::infer::load_run(run_dir, &Device::Cpu).unwrap();
    let ds = Dataset::open(data).unwrap();
    let idx = ds.indices(Some(Split::Val));
    let model = &t.net.face_model;
    let mean = fml::face_model::to_vec3(&model.mean_shape);
    let (mut eb, mut ef, mut em) = (0.0, 0.0, 0.0);
    for &i in &idx {
        let rec = ds.read(i).unwrap();
        let size = ds.size() as usize;
        let img: Vec<f32> = (0..3)
            .flat_map(|c| (0..size * size).map(move |p| (c, p)))
            .map(|(c, p)| rec.image[p * 3 + c] as f32 / 255.0)
            .collect();
        let x = candle_core::Tensor::from_vec(img, (1, 3, size, size), &Device::Cpu).unwrap();
        let pred = t.net.predict(&x).unwrap();
        let v = |t: candle_core::Tensor| fml::face_model::to_vec3(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let base = v(pred.levels.base_geometry.clone());
        let fine = v(pred.levels.final_geometry().unwrap());
        let src = PathBuf::from(&ds.header().records[i].source);
        let gt = Mesh::load_obj(src.with_extension("obj")).unwrap().vertices;
        eb += aligned_error(&base, &gt, &model.face_region);
        ef += aligned_error(&fine, &gt, &model.face_region);
        em += aligned_error(&mean, &gt, &model.face_region);
    }
    let n = idx.len() as f64;
    GeometryErrors { base: eb / n, fine: ef / n, mean_face: em / n }
}

/// Mean of a logged term over the first / last `k` training steps.
fn log_means(run_dir: &Path, term: &str, k: usize) -> (f64, f64) {
    let text = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
    let vals: Vec<f64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["loss"][term].as_f64().unwrap())
        .collect();
    let head = vals[..k].iter().sum::<f64>() / k as f64;
    let tail = vals[vals.len() - k..].iter().sum::<f64>() / k as f64;
    (head, tail)
}

#[test]
fn pretraining_learns_pose_shape_and_appearance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 400, 11);
    let cfg = tiny_config(&data);
    let out = dir.path().join("run");
    let report = run(&cfg, Stage::Pretrain, &out, false, None);
    for term in ["sparse", "photo_base", "landmark_px"] {
        let (first, last) = log_means(&out, term, 20);
        eprintln!("{term}: first {first:.4} last {last:.4}");
        assert!(last < 0.8 * first, "{term} did not drop: {first} -> {last}");
    }
    let e = geometry_errors(&out, &data);
    eprintln!("geometry: learned {:.3} mm, mean face {:.3} mm; report {:?}", e.base, e.mean_face, report.validation);
    assert!(e.base < 0.8 * e.mean_face, "geometric error {} not well below the mean face's {}", e.base, e.mean_face);
}
