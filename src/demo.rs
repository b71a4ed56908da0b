//! The built-in end-to-end demo (`fml demo`, the README's first command): the procedural demo
//! face model, a few synthetic faces photographed by our renderer, and their reconstruction by
//! the shipped default network (`data/default`): the mesh, the overlay and the parameters of the
//! first face, and the geometric error against the synthetic ground truth over all of them (one
//! face alone is a noisy measure).

use crate::error::{Error, Result};
use crate::eval::aligned_vertex_error;
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
    /// Faces reconstructed and measured.
    pub faces: usize,
    /// Point-to-surface error (mm) after similarity alignment, mean over the faces: base level,
    /// final level, mean face.
    pub error_base_mm: f64,
    pub error_final_mm: Option<f64>,
    pub error_mean_face_mm: f64,
    /// Mean distance of corresponding vertices over the model's face region after a similarity
    /// alignment (the ground truth has the model's topology), mean over the faces: base, final,
    /// mean face. Unlike point-to-surface it also counts sliding along the surface (expression,
    /// feature positions).
    pub vertex_error_mm: [f64; 3],
    pub run: PathBuf,
}

/// Remove the files a previous demo's synth wrote into `dir` (`NNNNNN.{png,pts,obj,json}` and
/// `synth.json`, present only for a complete set); refuse a folder holding anything else.
fn clear_previous_faces(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let ours = |name: &str| {
        name == "synth.json"
            || name.split_once('.').is_some_and(|(stem, ext)| {
                stem.len() == 6
                    && stem.bytes().all(|b| b.is_ascii_digit())
                    && matches!(ext, "png" | "pts" | "obj" | "json")
            })
    };
    let names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let foreign: Vec<&String> = names.iter().filter(|n| !ours(n)).collect();
    if !foreign.is_empty() || (!names.is_empty() && !dir.join("synth.json").is_file()) {
        return Err(Error::invalid(format!(
            "{}: holds files the demo did not write ({}); choose another -o",
            dir.display(),
            foreign.first().map_or("an incomplete set".to_string(), |n| n.to_string())
        )));
    }
    for n in &names {
        let p = dir.join(n);
        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
    }
    std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Run the demo into `out` with the network in `run` (the built-in default when `None`) on
/// `faces` synthetic faces (at least 1).
pub fn run_demo(out: &Path, run: Option<&Path>, seed: u64, faces: usize) -> Result<DemoReport> {
    if faces == 0 {
        return Err(Error::invalid("the demo needs at least one face"));
    }
    // The network first: a run that cannot be scored here fails before anything is written.
    let model = crate::face_model::demo::demo_model();
    let run = crate::infer::resolve_run(run)?;
    let trained = load_run(&run, &Device::Cpu)?;
    // The ground truth has the demo model's topology and the error is measured vertex by vertex:
    // a run trained on another face model (an import) cannot be scored here.
    let theirs = &trained.net.face_model;
    if theirs.num_vertices() != model.num_vertices() || theirs.triangles != model.triangles {
        return Err(Error::invalid(format!(
            "{}: the demo scores against the built-in demo model ({} vertices), but this run's face \
             model has {} vertices / another topology; use `fml reconstruct` or `fml eval` for it",
            run.display(),
            model.num_vertices(),
            theirs.num_vertices()
        )));
    }

    // Synthetic faces with ground truth, in `input/`: a previous demo's faces there are replaced,
    // anything else is left alone and refused.
    let synth_dir = out.join("input");
    clear_previous_faces(&synth_dir)?;
    crate::io::create_dir(out)?;
    let model_path = out.join("demo_model.safetensors");
    model.save(&model_path)?;
    let cfg = crate::synth::SynthConfig { count: faces, seed, size: 256, progress: false, ..Default::default() };
    crate::synth::generate(&cfg, &synth_dir)?;

    let opts = ReconstructOptions { overlay: Some(OverlayConfig::default()), ..Default::default() };
    let rec = Reconstructor::new(trained, opts)?;
    let ecfg = EvalConfig { progress: false, ..Default::default() };
    let landmarks = |m: &Mesh| -> Vec<[f32; 3]> { model.landmarks.iter().map(|&i| m.vertices[i as usize]).collect() };
    let mean_mesh = model.mean_mesh();
    let (mut error_base_mm, mut error_mean_face_mm, mut fine_sum, mut fine_n) = (0.0, 0.0, 0.0, 0usize);
    let mut vertex_error_mm = [0.0; 3];
    let (mesh, overlay, params) =
        (out.join("reconstruction.obj"), out.join("overlay.png"), out.join("parameters.json"));
    for k in 0..faces {
        let stem = format!("{k:06}");
        let r = rec.reconstruct(&InputImage::file(
            synth_dir.join(format!("{stem}.png")),
            CropSpec::Landmarks(synth_dir.join(format!("{stem}.pts"))),
        ))?;
        if k == 0 {
            // The three files of one reconstruction, all or none.
            let mut group = crate::io::WriteGroup::new();
            r.mesh().stage(&mut group, &mesh)?;
            if let Some(img) = &r.overlay {
                group.stage_bytes(&overlay, &crate::infer::batch::encode_image(img, &overlay)?)?;
            }
            let json = serde_json::to_vec_pretty(&r.params).map_err(|e| Error::invalid(format!("parameters: {e}")))?;
            group.stage_bytes(&params, &json)?;
            group.commit()?;
        }
        // Error against the ground truth (the paper's Table 1 measure).
        let gt = Mesh::load_obj(synth_dir.join(format!("{stem}.obj")))?;
        let score = |m: &Mesh| -> Result<f64> {
            Ok(evaluate_mesh(m, Some(&landmarks(m)), &gt, Some(&landmarks(&gt)), &ecfg)?.mean_mm)
        };
        error_base_mm += score(&r.base)? / faces as f64;
        error_mean_face_mm += score(&mean_mesh)? / faces as f64;
        let vertex_error = |m: &Mesh| aligned_vertex_error(&m.vertices, &gt.vertices, &model.face_region);
        vertex_error_mm[0] += vertex_error(&r.base)? / faces as f64;
        vertex_error_mm[2] += vertex_error(&mean_mesh)? / faces as f64;
        // Without a final level its column repeats the base level's.
        vertex_error_mm[1] += vertex_error(r.mesh())? / faces as f64;
        if let Some(f) = &r.fine {
            fine_sum += score(f)?;
            fine_n += 1;
        }
    }
    let error_final_mm = (fine_n > 0).then(|| fine_sum / fine_n as f64);
    let image = synth_dir.join("000000.png");
    let ground_truth = synth_dir.join("000000.obj");
    Ok(DemoReport {
        model_summary: model.summary(),
        image,
        mesh,
        overlay,
        params,
        ground_truth,
        faces,
        error_base_mm,
        error_final_mm,
        error_mean_face_mm,
        vertex_error_mm,
        run,
    })
}
