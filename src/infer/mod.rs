//! Inference: loading a trained run (or the built-in default model) and reconstructing faces.
//!
//! [`load_run`] gives a [`Trained`] network; [`reconstruct::Reconstructor`] runs it on images
//! ([`overlay`] draws the result over them, [`record`] describes it as JSON); [`batch`] is
//! `fml reconstruct` over folders and lists; [`export`] writes a weights-only copy of a run.

pub mod batch;
pub mod overlay;
pub mod reconstruct;
pub mod record;

pub use batch::{CropChoice, Extra, MeshFormat, Plan, Report, Request};
pub use overlay::{OverlayConfig, SourceCamera};
pub use reconstruct::{CropSpec, Frame, InputImage, Level, ReconstructOptions, Reconstruction, Reconstructor};
pub use record::ParamRecord;

pub mod eval;

use crate::checkpoint;
use crate::config::Config;
use crate::encoder;
use crate::error::{Error, Result};
use crate::network::FaceNet;
use crate::render::layer::Backend;
use candle_core::Device;
use candle_nn::VarMap;
use std::path::{Path, PathBuf};

/// A trained network ready for inference.
pub struct Trained {
    pub config: Config,
    /// In inference form ([`FaceNet::for_inference`]): predictions record no autograd graph.
    pub net: FaceNet,
    pub meta: checkpoint::Meta,
    /// Where it was loaded from.
    pub source: PathBuf,
}

/// Environment variable that overrides the location of the built-in default model.
pub const DEFAULT_MODEL_ENV: &str = "FML_DEFAULT_MODEL";

/// The run directory of the built-in default model: `$FML_DEFAULT_MODEL`, else `data/default`
/// in the source tree this binary was built from.
pub fn default_run() -> PathBuf {
    match std::env::var_os(DEFAULT_MODEL_ENV).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("default"),
    }
}

/// The run to use: `checkpoint` when given, else the built-in default ([`default_run`]), with
/// an error telling how to get one when the default is missing.
pub fn resolve_run(checkpoint: Option<&Path>) -> Result<PathBuf> {
    if let Some(c) = checkpoint {
        return Ok(c.to_path_buf());
    }
    let run = default_run();
    if !run.join(checkpoint::FILE).is_file() {
        return Err(Error::invalid(format!(
            "no --checkpoint given and the built-in default model is missing ({} has no {}). Pass \
             --checkpoint RUN (a run directory of `fml train` / `fml finetune` / `fml export`, or its \
             checkpoint file), set {DEFAULT_MODEL_ENV} to such a directory, or train the default one with the \
             five commands in the header of configs/default.toml (about 10 minutes on 2 CPU cores)",
            run.display(),
            checkpoint::FILE
        )));
    }
    Ok(run)
}

/// A run argument as (run directory, checkpoint file).
fn run_paths(run: &Path) -> (PathBuf, PathBuf) {
    if run.is_dir() {
        (run.to_path_buf(), run.join(checkpoint::FILE))
    } else {
        (run.parent().map(Path::to_path_buf).unwrap_or_default(), run.to_path_buf())
    }
}

/// Load a run: a directory holding `config.toml` and `checkpoint.safetensors` (as written by
/// `fml train` / `fml finetune` / `fml export`), or the checkpoint file itself next to its
/// `config.toml`. The face model is the config's (`model.path`: "demo", or a file path, taken
/// relative to the run directory, then to the working directory: [`crate::config::ModelConfig::resolve_in_run`]).
pub fn load_run(run: &Path, device: &Device) -> Result<Trained> {
    let (dir, ckpt) = run_paths(run);
    if !ckpt.exists() {
        return Err(Error::invalid(format!("{}: no checkpoint ({} missing)", run.display(), ckpt.display())));
    }
    // The checkpoint first: a --checkpoint that is some other file is reported as such, not as
    // a missing config.toml beside it.
    let ck = checkpoint::load(&ckpt, device)?;
    let config_path = dir.join("config.toml");
    if !config_path.exists() {
        return Err(Error::invalid(format!(
            "{}: no config.toml beside the checkpoint (a run directory of `fml train` / `fml export` holds both)",
            ckpt.display()
        )));
    }
    let mut config = Config::load(&config_path)?;
    if config.model.path != "demo" {
        match config.model.resolve_in_run(&dir) {
            Some(p) => config.model.path = p.to_string_lossy().into_owned(),
            None => {
                return Err(Error::format(
                    &config_path,
                    format!(
                        "model.path = {:?} not found (looked in {} and in the working directory)",
                        config.model.path,
                        dir.display()
                    ),
                ));
            }
        }
    }
    let face_model = crate::train::load_face_model(&config.model)?;
    if ck.meta.num_vertices != face_model.num_vertices() {
        return Err(Error::invalid(format!(
            "{} was trained for a model with {} vertices, but {} has {}",
            ckpt.display(),
            ck.meta.num_vertices,
            config.model.path,
            face_model.num_vertices()
        )));
    }
    let varmap = VarMap::new();
    checkpoint::restore_vars(&ck, &varmap, &[encoder::PREFIX, "correctives."])?;
    let correctives = ck.meta.correctives > 0;
    if correctives {
        config.correctives.count = ck.meta.correctives;
    }
    // Inference form: detached weights, so forward passes record no autograd graph.
    let net = FaceNet::new(&face_model, &config, correctives, Backend::Fast, &varmap, device)
        .map_err(|e| Error::format(&ckpt, format!("does not fit {}: {e}", config_path.display())))?
        .for_inference();
    checkpoint::check_complete(&ck, &varmap, &[encoder::PREFIX, "correctives."])?;
    if net.layout.num_outputs() != ck.meta.num_outputs {
        return Err(Error::invalid(format!(
            "{}: checkpoint has {} outputs, the config's model needs {}",
            ckpt.display(),
            ck.meta.num_outputs,
            net.layout.num_outputs()
        )));
    }
    Ok(Trained { config, net, meta: ck.meta, source: run.to_path_buf() })
}

/// Write a weights-only copy of a run (config + checkpoint without optimiser state) to `out`:
/// what a shipped model needs. `run` is a run directory or its checkpoint file.
///
/// A face model given as a file (not "demo") is copied into `out` and the config points to it
/// by file name (resolved beside the run by [`load_run`]), so the copy is self-contained.
/// Returns the written checkpoint's path.
pub fn export(run: &Path, out: &Path) -> Result<PathBuf> {
    let (_, ckpt_path) = run_paths(run);
    let t = load_run(run, &Device::Cpu)?;
    let target = out.join(checkpoint::FILE);
    if let (Ok(a), Ok(b)) = (ckpt_path.canonicalize(), target.canonicalize())
        && a == b
    {
        return Err(Error::invalid(format!(
            "{}: exporting a run onto itself would drop its optimiser state; choose another -o",
            out.display()
        )));
    }
    // An earlier export (weights only) may be replaced; a training run (with optimiser state,
    // resumable) may not: its state would be lost.
    if target.exists() {
        let existing = checkpoint::load(&target, &Device::Cpu)?;
        if existing.tensors.keys().any(|k| !k.starts_with(encoder::PREFIX) && !k.starts_with("correctives.")) {
            return Err(Error::invalid(format!(
                "{} holds a training run (with optimiser state); exporting over it would lose that: choose another -o",
                out.display()
            )));
        }
    }
    let ck = checkpoint::load(&ckpt_path, &Device::Cpu)?;
    let varmap = VarMap::new();
    checkpoint::restore_vars(&ck, &varmap, &[encoder::PREFIX, "correctives."])?;
    crate::io::create_dir(out)?;
    // Model copy, config and weights as one group: a failure (a full disk) while exporting over
    // an earlier export must not leave a new config beside the old weights.
    let mut group = crate::io::WriteGroup::new();
    let mut config = t.config.clone();
    if config.model.path != "demo" {
        let src = PathBuf::from(&config.model.path);
        let name = src
            .file_name()
            .ok_or_else(|| Error::invalid(format!("model.path {:?} names no file", config.model.path)))?;
        let dst = out.join(name);
        if src.canonicalize().ok() != dst.canonicalize().ok() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            group.stage_bytes(&dst, &bytes)?;
        }
        config.model.path = name.to_string_lossy().into_owned();
    }
    group.stage_bytes(out.join("config.toml"), config.to_toml().as_bytes())?;
    group.stage_bytes(&target, &checkpoint::to_bytes(&target, &varmap, &[], &t.meta)?)?;
    group.commit()?;
    Ok(target)
}
