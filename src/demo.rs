//! The built-in end-to-end demo (`fml demo`, the README's first command): the procedural demo
//! face model, one synthetic face photographed by our renderer, and its reconstruction by the
//! shipped default network (`data/default`), with the mesh, the overlay, the parameters and the
//! geometric error against the synthetic ground truth.

use crate::error::{Error, Result};
use crate::infer::eval::{EvalConfig, evaluate_mesh};
use crate::infer::reconstruct::{CropSpec, InputImage, ReconstructOptions, Reconstructor};
use crate::infer::{OverlayConfig, load_run};
use crate::io::mesh::Mesh;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// What the demo wrote and measured.
#[derive(Debug)]
pub struct DemoReport {
    pub model_summary: String,
    pub image: PathBuf,
    pub mesh: PathBuf,
    pub overlay: PathBuf,
    pub params: PathBuf,
    pub ground_truth: PathBuf,
    /// Point-to-surface error (mm) after similarity alignment: base level, final level, mean face.
    pub error_base_mm: f64,
    pub error_final_mm: Option<f64>,
    pub error_mean_face_mm: f64,
    pub run: PathBuf,
}

/// Run the demo into `out` with the network in `run` (the built-in default when `None`).
pub fn run_demo(out: &Path, run: Option<&Path>, seed: u64) -> Result<DemoReport> {
    let model = crate::face_model::demo::demo_model();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let model_path = out.join("demo_model.safetensors");
    model.save(&model_path)?;

    // One synthetic face with ground truth.
    let synth_dir = out.join("input");
    let cfg = crate::synth::SynthConfig { count: 1, seed, size: 256, progress: false, ..Default::default() };
    crate::synth::generate(&cfg, &synth_dir)?;
    let image = synth_dir.join("000000.png");
    let pts = synth_dir.join("000000.pts");
    let ground_truth = synth_dir.join("000000.obj");

    // Reconstruct with the shipped network.
    let run = crate::infer::resolve_run(run)?;
    let trained = load_run(&run, &Device::Cpu)?;
    let opts = ReconstructOptions { overlay: Some(OverlayConfig::default()), ..Default::default() };
    let rec = Reconstructor::new(trained, opts)?;
    let r = rec.reconstruct(&InputImage::file(&image, CropSpec::Landmarks(pts)))?;
    let mesh = out.join("reconstruction.obj");
    let overlay = out.join("overlay.png");
    let params = out.join("parameters.json");
    r.mesh().save(&mesh)?;
    if let Some(img) = &r.overlay {
        crate::infer::batch::save_image(img, &overlay)?;
    }
    let json = serde_json::to_vec_pretty(&r.params).map_err(|e| Error::invalid(format!("parameters: {e}")))?;
    crate::io::write_atomic_bytes(&params, &json)?;

    // Error against the ground truth (the paper's Table 1 measure).
    let gt = Mesh::load_obj(&ground_truth)?;
    let landmarks = |m: &Mesh| -> Vec<[f32; 3]> { model.landmarks.iter().map(|&i| m.vertices[i as usize]).collect() };
    let ecfg = EvalConfig { progress: false, ..Default::default() };
    let score = |m: &Mesh| -> Result<f64> {
        Ok(evaluate_mesh(m, Some(&landmarks(m)), &gt, Some(&landmarks(&gt)), &ecfg)?.mean_mm)
    };
    let error_base_mm = score(&r.base)?;
    let error_final_mm = r.fine.as_ref().map(&score).transpose()?;
    let error_mean_face_mm = score(&model.mean_mesh())?;
    Ok(DemoReport {
        model_summary: model.summary(),
        image,
        mesh,
        overlay,
        params,
        ground_truth,
        error_base_mm,
        error_final_mm,
        error_mean_face_mm,
        run,
    })
}
