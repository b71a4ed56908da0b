//! Run configuration (TOML): face model, data, camera, encoder, loss weights, optimiser and
//! schedule. Defaults follow the paper where it gives numbers (each says where); the rest are our
//! choices, documented beside the field.

use crate::encoder::EncoderConfig;
use crate::error::{Error, Result};
use crate::network::params::ParamScales;
use crate::render::layer::Backend;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a training run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub camera: CameraConfig,
    pub encoder: EncoderConfig,
    pub params: ParamScales,
    pub correctives: CorrectiveConfig,
    pub loss: LossConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
    /// Training-time augmentation of the crops (none by default).
    pub augment: crate::data::augment::Augment,
}

/// Which face model, possibly truncated to play a limited base level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A native model file, or "demo" for the built-in procedural demo model.
    pub path: String,
    /// Keep only the first K identity / expression / reflectance modes (none = all).
    pub shape_modes: Option<usize>,
    pub expr_modes: Option<usize>,
    pub albedo_modes: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { path: "demo".into(), shape_modes: None, expr_modes: None, albedo_modes: None }
    }
}

/// Training data: a packed dataset written by `fml prepare` (its records carry the
/// train/validation split).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The .fmlds file. Relative paths are relative to the working directory.
    pub dataset: PathBuf,
}

/// The virtual camera of the crop (Sec. 5, full perspective).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// Focal length in pixels of the crop. 1000 px for a 240 px crop is a 13.7 deg field of view:
    /// a face about 1 m from the camera, a plausible portrait distance with mild perspective.
    pub focal: f32,
    /// Near plane, mm.
    pub near: f32,
    /// Fraction of the crop width covered by the landmarks' bounding box of the mean face at the
    /// default distance; matches `fml prepare`'s crop margin (1 / 1.3).
    pub landmark_fill: f32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig { focal: 1000.0, near: 10.0, landmark_fill: 1.0 / 1.3 }
    }
}

/// The learned corrective space (Sec. 4.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrectiveConfig {
    /// C, corrective coefficients per kind. Paper (Sec. 7): 500 for geometry and reflectance.
    pub count: usize,
    /// Std of the initial bases Theta_g (mm) and Theta_r. Default 0: the correction
    /// `F = delta Theta` is then exactly zero at the start of finetuning.
    pub init_std: [f32; 2],
    /// Std of the initial weights of the encoder's corrective-coefficient outputs. Non-zero so
    /// that with zero bases the bases still receive a gradient (`dL/dTheta = delta^T dL/dF`);
    /// with both factors zero the product would never move. Chosen so the coefficients start at
    /// about 0.1.
    pub head_std: f32,
    /// Units of the stored bases, `F_g = scale[0] * delta Theta_g` (mm) and
    /// `F_r = scale[1] * delta Theta_r`: a reparametrisation that sets how much one AdaDelta step
    /// (about lr * sqrt(eps) per weight at first) changes the correction. With unit scale the
    /// photometric gradients of the bases (a mean over thousands of vertices) are so small that
    /// AdaDelta moves them by ~1e-6 per step; see README "Corrective scale".
    pub scale: [f32; 2],
}

impl Default for CorrectiveConfig {
    fn default() -> Self {
        CorrectiveConfig { count: 500, init_std: [0.0, 0.0], head_std: 0.01, scale: [100.0, 10.0] }
    }
}

/// Loss weights (eqs. 6-15). The paper gives beta, p and the 6 partners but not the weights
/// ("we use the same weights in all experiments"); ours are absolute weights per term, i.e. the
/// paper's `w_reg * w_x`, chosen on synthetic data (see README, "Loss weights").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// w_photo (eq. 7), applied to each level's E_photo (eq. 9).
    pub photo: f32,
    /// Weight of E_sparse (eq. 10), measured in pixels^2 of the crop.
    pub sparse: f32,
    /// Weight of E_sparse evaluated on the final level too, at the base level's landmark
    /// vertices. NOT the paper's: eq. 10 constrains the base level only, so the correctives learn
    /// from E_photo alone. 0 (off, the paper) by default; an option for small-scale runs, where
    /// E_photo alone does not teach the correctives a missing mode (README, "What the tests show").
    pub sparse_final: f32,
    /// w_reg for the identity/expression part of E_std (eq. 11).
    pub std_geometry: f32,
    /// w_reg * w_std for the reflectance part of E_std (eq. 11).
    pub std_albedo: f32,
    /// w_reg * w_smo (eq. 12), corrective Laplacian smoothness (mm^2).
    pub smo: f32,
    /// w_reg * w_ref (eq. 13), local reflectance sparsity.
    pub ref_sparsity: f32,
    /// beta of eq. 13. Paper: 50.
    pub ref_beta: f32,
    /// p of eq. 13. Paper: 0.9.
    pub ref_p: f32,
    /// w_reg * w_glo (eq. 14), global skin reflectance constancy.
    pub glo: f32,
    /// |G_i| of eq. 14. Paper: 6 random partners per skin vertex.
    pub glo_partners: usize,
    /// w_reg * w_sta (eq. 15), small corrective displacements (mm^2).
    pub sta: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            photo: 1.0,
            sparse: 1e-2,
            sparse_final: 0.0,
            std_geometry: 2e-4,
            std_albedo: 2e-4,
            smo: 0.05,
            ref_sparsity: 0.01,
            ref_beta: 50.0,
            ref_p: 0.9,
            glo: 0.5,
            glo_partners: 6,
            sta: 1e-3,
        }
    }
}

/// AdaDelta (Sec. 7) with per-group learning rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Decay of the running averages (Caffe's AdaDelta `momentum`).
    pub rho: f64,
    /// Conditioning constant (Caffe's `delta`).
    pub eps: f64,
    /// Learning rate of the encoder (and base level). Paper: 0.01 pretraining, 0.001 finetuning.
    pub lr_encoder: f64,
    /// Learning rate of the geometry correctives. Paper: 0.005.
    pub lr_geometry: f64,
    /// Learning rate of the reflectance correctives. Paper: 0.01.
    pub lr_reflectance: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig { rho: 0.95, eps: 1e-6, lr_encoder: 0.01, lr_geometry: 0.005, lr_reflectance: 0.01 }
    }
}

/// Schedule and bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Iterations. Paper: 200k pretraining, 190k finetuning.
    pub steps: u64,
    /// Images per batch. Paper: 5.
    pub batch: usize,
    pub seed: u64,
    /// Validation every N steps (0 = never) over at most `val_batches` batches.
    pub val_every: u64,
    pub val_batches: usize,
    /// Checkpoint every N steps (and at the end).
    pub checkpoint_every: u64,
    /// "cpu", "cuda" or "auto".
    pub device: String,
    /// Renderer implementation.
    pub backend: Backend,
    /// Learn the correctives (finetuning, Sec. 7) or the base level only (pretraining).
    pub correctives: bool,
    /// Let f32 matrix products on CUDA run in TF32 (`crate::kernel::set_tf32`): faster, at an
    /// accuracy cost not measured for fml. No effect on the CPU. Written into a run's
    /// config.toml only when on, so configs of runs without it stay readable by builds and tools
    /// (benches/peer) that do not know the key.
    #[serde(skip_serializing_if = "is_false")]
    pub tf32: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 200_000,
            batch: 5,
            seed: 1,
            val_every: 1000,
            val_batches: 20,
            checkpoint_every: 1000,
            device: "auto".into(),
            backend: Backend::Fast,
            correctives: false,
            tf32: false,
        }
    }
}

impl Config {
    /// Read a TOML config; unknown keys and bad values are errors naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        cfg.validate().map_err(|e| Error::format(path, e.to_string()))?;
        Ok(cfg)
    }

    /// Serialise as TOML (the effective config written into every run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }

    /// Check ranges that serde cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.train.batch == 0 {
            return bad("train.batch must be positive".into());
        }
        if !(0.0..1.0).contains(&self.optim.rho) || self.optim.eps <= 0.0 {
            return bad(format!(
                "optim.rho must be in [0, 1) and optim.eps positive (got {} / {})",
                self.optim.rho, self.optim.eps
            ));
        }
        if self.camera.focal <= 0.0 || self.camera.near <= 0.0 || self.camera.landmark_fill <= 0.0 {
            return bad("camera.focal, camera.near and camera.landmark_fill must be positive".into());
        }
        if self.encoder.conv.len() != 5 {
            return bad(format!(
                "encoder.conv must list 5 convolutions (modified AlexNet), got {}",
                self.encoder.conv.len()
            ));
        }
        self.encoder.feature_size()?;
        if !(0.0..=2.0).contains(&self.loss.ref_p) {
            return bad(format!("loss.ref_p = {} is outside (0, 2]", self.loss.ref_p));
        }
        for (name, w) in [
            ("photo", self.loss.photo),
            ("sparse", self.loss.sparse),
            ("sparse_final", self.loss.sparse_final),
            ("std_geometry", self.loss.std_geometry),
            ("std_albedo", self.loss.std_albedo),
            ("smo", self.loss.smo),
            ("ref_sparsity", self.loss.ref_sparsity),
            ("glo", self.loss.glo),
            ("sta", self.loss.sta),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return bad(format!("loss.{name} = {w} must be a non-negative number"));
            }
        }
        self.augment.validate()?;
        if !matches!(self.train.device.as_str(), "cpu" | "cuda" | "auto") {
            return bad(format!("train.device = {:?}: use cpu, cuda or auto", self.train.device));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_errors_name_the_file() {
        let cfg = Config::default();
        let text = cfg.to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[train]\nbatchsize = 3\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("batchsize"), "{e}");
        std::fs::write(&p, "[train]\nbatch = 0\n").unwrap();
        assert!(Config::load(&p).unwrap_err().to_string().contains("batch"));
    }

    #[test]
    fn tf32_is_written_only_when_on() {
        let mut cfg = Config::default();
        assert!(!cfg.to_toml().contains("tf32"), "an off flag stays out of run configs");
        cfg.train.tf32 = true;
        let text = cfg.to_toml();
        assert!(text.contains("tf32 = true"), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), cfg);
        // On the CPU the switch is a no-op that reports itself as not in effect.
        assert!(!crate::kernel::set_tf32(&candle_core::Device::Cpu, true));
    }
}
