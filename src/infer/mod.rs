//! Inference: loading a trained run (or the built-in default model) and reconstructing faces.

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
    match std::env::var_os(DEFAULT_MODEL_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("default"),
    }
}

/// Load a run: a directory holding `config.toml` and `checkpoint.safetensors` (as written by
/// `fml train` / `fml finetune` / `fml export`), or the checkpoint file itself next to its
/// `config.toml`. The face model is the config's (`model.path`: "demo", or a file path, taken
/// relative to the working directory, then to the run directory).
pub fn load_run(run: &Path, device: &Device) -> Result<Trained> {
    let (dir, ckpt) = if run.is_dir() {
        (run.to_path_buf(), run.join(checkpoint::FILE))
    } else {
        (run.parent().map(Path::to_path_buf).unwrap_or_default(), run.to_path_buf())
    };
    if !ckpt.exists() {
        return Err(Error::invalid(format!("{}: no checkpoint ({} missing)", run.display(), ckpt.display())));
    }
    let mut config = Config::load(dir.join("config.toml"))?;
    if config.model.path != "demo" && !Path::new(&config.model.path).exists() {
        let beside = dir.join(&config.model.path);
        if beside.exists() {
            config.model.path = beside.to_string_lossy().into_owned();
        }
    }
    let face_model = crate::train::load_face_model(&config.model)?;
    let ck = checkpoint::load(&ckpt, device)?;
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
    let net = FaceNet::new(&face_model, &config, correctives, Backend::Fast, &varmap, device)?;
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
/// what a shipped model needs.
pub fn export(run: &Path, out: &Path) -> Result<()> {
    let t = load_run(run, &Device::Cpu)?;
    let ck = checkpoint::load(&run.join(checkpoint::FILE), &Device::Cpu)?;
    let varmap = VarMap::new();
    checkpoint::restore_vars(&ck, &varmap, &[encoder::PREFIX, "correctives."])?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::io::write_atomic_bytes(out.join("config.toml"), t.config.to_toml().as_bytes())?;
    checkpoint::save(&out.join(checkpoint::FILE), &varmap, &[], &t.meta)
}
