//! Run configuration (TOML): face model, data, camera, encoder, loss weights, optimiser and
//! schedule. Defaults follow the paper where it gives numbers (each says where); the rest are our
//! choices, documented beside the field.
//!
//! Config is shared by every stage, so the sections of pipeline modules (encoder architecture,
//! output scales, renderer backend, augmentation) are defined here as plain data; the modules
//! re-export them and add their behaviour.

use crate::error::{Error, Result};
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
    pub augment: Augment,
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

impl ModelConfig {
    /// `path` as a run directory's `config.toml` records it. A relative path (relative to the
    /// working directory of the training, so readable only from there) becomes relative to the
    /// run directory: the run then reads from any working directory and can be moved together
    /// with its model. "demo" and absolute paths stay as given (an absolute path keeps working
    /// wherever the run is copied), and so does a path that cannot be resolved now.
    ///
    /// `run_dir` must exist.
    pub fn path_for_run(&self, run_dir: &Path) -> String {
        if self.path == "demo" || Path::new(&self.path).is_absolute() {
            return self.path.clone();
        }
        match (Path::new(&self.path).canonicalize(), run_dir.canonicalize()) {
            (Ok(model), Ok(run)) => relative_path(&model, &run).unwrap_or(model).to_string_lossy().into_owned(),
            _ => self.path.clone(),
        }
    }

    /// The model file named in a run directory's `config.toml`: a relative path is looked up in
    /// the run directory first (as [`ModelConfig::path_for_run`] records it; also where
    /// `fml export` copies the model), then in the working directory (runs recorded before
    /// paths were made run-relative). None for "demo" or when neither exists.
    pub fn resolve_in_run(&self, run_dir: &Path) -> Option<PathBuf> {
        if self.path == "demo" {
            return None;
        }
        let p = Path::new(&self.path);
        [run_dir.join(p), p.to_path_buf()].into_iter().find(|c| c.exists())
    }
}

/// `target` relative to the folder `base` (both absolute and canonical), e.g. `../../m.safetensors`;
/// None when they share no root.
fn relative_path(target: &Path, base: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let (t, b): (Vec<Component>, Vec<Component>) = (target.components().collect(), base.components().collect());
    if t.first() != b.first() {
        return None;
    }
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    Some(out)
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
    /// with both factors zero the product would never move. Small (0.01), so the coefficients
    /// start well below the unit-scale z-scores the other outputs regress; their size also
    /// depends on the hidden layer's activations.
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
    /// Iterations. Paper (Sec. 7): 200k pretraining, 190k finetuning.
    pub steps: u64,
    /// Images per batch. Paper (Sec. 7): 5.
    pub batch: usize,
    pub seed: u64,
    /// Validation every N steps (0 = never) over at most `val_batches` batches (0 = none).
    pub val_every: u64,
    pub val_batches: usize,
    /// Checkpoint every N steps (and at the end).
    pub checkpoint_every: u64,
    /// "cpu", "cuda" or "auto".
    pub device: String,
    /// Renderer implementation.
    pub backend: Backend,
    /// Whether the run learns the correctives (finetuning, Sec. 7) or the base level only
    /// (pretraining). The command decides: `fml finetune` records `true` in its run's
    /// config.toml, `fml train` refuses `true`. `fml bench infer` reads it.
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

/// One convolution: `[out_channels, kernel, stride, padding, max-pool 3x3/2 after it (0/1)]`.
pub type ConvSpec = [usize; 5];

/// Encoder architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Input crop size (square), pixels. Paper (Sec. 7): 240.
    pub input_size: usize,
    /// The five convolutions. Default: AlexNet's (96 11x11/4, 256 5x5, 384 3x3, 384 3x3, 256 3x3,
    /// overlapping 3x3/2 max-pooling after 1, 2 and 5), without local response normalisation.
    pub conv: Vec<ConvSpec>,
    /// Hidden fully connected widths. Default: AlexNet's 4096, 4096.
    pub fc: Vec<usize>,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            input_size: 240,
            conv: vec![[96, 11, 4, 0, 1], [256, 5, 1, 2, 1], [384, 3, 1, 1, 0], [384, 3, 1, 1, 0], [256, 3, 1, 1, 1]],
            fc: vec![4096, 4096],
        }
    }
}

impl EncoderConfig {
    /// Spatial size after the convolution stack, or an error naming the layer that shrinks the
    /// map to nothing.
    pub fn feature_size(&self) -> Result<(usize, usize)> {
        let mut s = self.input_size;
        let mut c = 3;
        for (i, &[out, k, stride, pad, pool]) in self.conv.iter().enumerate() {
            if stride == 0 || s + 2 * pad < k {
                return Err(Error::invalid(format!("encoder conv{} (kernel {k}) does not fit a {s}x{s} input", i + 1)));
            }
            s = (s + 2 * pad - k) / stride + 1;
            if pool == 1 {
                if s < 3 {
                    return Err(Error::invalid(format!(
                        "encoder pool after conv{} needs at least 3x3, has {s}x{s}",
                        i + 1
                    )));
                }
                s = (s - 3) / 2 + 1;
            }
            c = out;
        }
        Ok((c, s))
    }
}

/// Scales from raw network outputs to parameters. The raw outputs are O(1); these put them in
/// physical units so that every output starts with a comparable effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParamScales {
    /// Radians per unit output (Euler angles).
    pub rotation: f32,
    /// Millimetres per unit output for (x, y, z) translation.
    pub translation: [f32; 3],
    /// SH coefficient change per unit output.
    pub light: f32,
}

impl Default for ParamScales {
    fn default() -> Self {
        ParamScales { rotation: 1.0, translation: [10.0, 10.0, 100.0], light: 1.0 }
    }
}

/// Which implementation computes normals, shading, sampling and the photometric term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Candle tensor ops with autograd: the test oracle.
    Reference,
    /// Our custom ops (rayon on CPU, CUDA kernels with feature `cuda`).
    Fast,
}

/// Augmentation ranges. `Default` is no augmentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Maximum shift in crop pixels, uniform in [-shift_px, shift_px] per axis.
    pub shift_px: f32,
    /// Uniform scale factor range [lo, hi] about the crop centre.
    pub scale_range: [f32; 2],
    /// Strength j of colour jitter: brightness and contrast factors uniform in [1-j, 1+j],
    /// per-channel gains in [1-j/2, 1+j/2]. 0 disables.
    pub color_jitter: f32,
    /// Probability of a horizontal flip.
    pub flip_prob: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment::none()
    }
}

impl Augment {
    /// No augmentation: the loader returns the stored crops exactly.
    pub fn none() -> Self {
        Augment { shift_px: 0.0, scale_range: [1.0, 1.0], color_jitter: 0.0, flip_prob: 0.0 }
    }

    /// Mild augmentation for training on 240 px crops (our choice; the paper does not mention
    /// any): +-8 px (3 %) shifts and +-5 % scale mimic the jitter of a face detector's box,
    /// which is what test-time crops will have; colour jitter 0.1 covers camera white balance
    /// and exposure without changing what the SH lighting must explain much; flips double the
    /// identities seen.
    pub fn standard() -> Self {
        Augment { shift_px: 8.0, scale_range: [0.95, 1.05], color_jitter: 0.1, flip_prob: 0.5 }
    }

    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        let [lo, hi] = self.scale_range;
        let ok = self.shift_px.is_finite()
            && self.shift_px >= 0.0
            && lo.is_finite()
            && hi.is_finite()
            && lo > 0.0
            && lo <= hi
            && (0.0..1.0).contains(&self.color_jitter)
            && (0.0..=1.0).contains(&self.flip_prob);
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "invalid [augment]: shift_px = {}, scale_range = {:?}, color_jitter = {}, flip_prob = {}; need \
                 shift_px >= 0, 0 < scale_range[0] <= scale_range[1], color_jitter in [0, 1), flip_prob in [0, 1]",
                self.shift_px, self.scale_range, self.color_jitter, self.flip_prob
            )))
        }
    }
}

impl Config {
    /// Read a TOML config; unknown keys and bad values are errors naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = crate::io::read_text(path)?;
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
        if self.train.batch == 0 || self.train.steps == 0 {
            return bad(format!(
                "train.batch and train.steps must be positive (got {} / {})",
                self.train.batch, self.train.steps
            ));
        }
        if !((0.0..1.0).contains(&self.optim.rho) && self.optim.eps > 0.0 && self.optim.eps.is_finite()) {
            return bad(format!(
                "optim.rho must be in [0, 1) and optim.eps positive (got {} / {})",
                self.optim.rho, self.optim.eps
            ));
        }
        let o = &self.optim;
        for (name, lr) in
            [("lr_encoder", o.lr_encoder), ("lr_geometry", o.lr_geometry), ("lr_reflectance", o.lr_reflectance)]
        {
            // 0 is allowed: it freezes a group (used to isolate one kind of corrective).
            if !(lr >= 0.0 && lr.is_finite()) {
                return bad(format!("optim.{name} = {lr} must be a non-negative number"));
            }
        }
        let positive = |x: f32| x > 0.0 && x.is_finite();
        let c = &self.camera;
        if !(positive(c.focal) && positive(c.near) && positive(c.landmark_fill)) {
            return bad(format!(
                "camera.focal, camera.near and camera.landmark_fill must be positive numbers (got {} / {} / {})",
                c.focal, c.near, c.landmark_fill
            ));
        }
        let p = &self.params;
        if !(positive(p.rotation) && p.translation.iter().all(|&t| positive(t)) && positive(p.light)) {
            return bad(format!(
                "params.rotation, params.translation and params.light must be positive numbers (got {} / {:?} / {})",
                p.rotation, p.translation, p.light
            ));
        }
        if self.model.path.trim().is_empty() {
            return bad("model.path is empty: give a model file or \"demo\"".into());
        }
        let k = &self.correctives;
        if !(k.scale.iter().all(|&x| positive(x))
            && k.init_std.iter().chain([&k.head_std]).all(|&x| x >= 0.0 && x.is_finite()))
        {
            return bad(format!(
                "correctives.scale must be positive and init_std / head_std non-negative numbers (got {:?} / {:?} / {})",
                k.scale, k.init_std, k.head_std
            ));
        }
        if k.count > 0
            && k.head_std == 0.0
            && let Some(kind) = k.init_std.iter().position(|&x| x == 0.0)
        {
            // F = delta Theta with both factors zero: dL/dTheta = delta^T dL/dF and
            // dL/d(head rows) ~ dL/dF Theta^T are zero too, so the correctives never move.
            return bad(format!(
                "correctives.head_std = 0 with init_std[{kind}] = 0: both factors of the {} correction start at \
                 zero and neither would ever receive a gradient; make one of them positive",
                ["geometry", "reflectance"][kind]
            ));
        }
        if self.encoder.conv.len() != 5 {
            return bad(format!(
                "encoder.conv must list 5 convolutions (modified AlexNet), got {}",
                self.encoder.conv.len()
            ));
        }
        for (i, &[out, kernel, stride, _, pool]) in self.encoder.conv.iter().enumerate() {
            if out == 0 || kernel == 0 || stride == 0 || pool > 1 {
                return bad(format!(
                    "encoder.conv[{i}] = {:?}: channels, kernel and stride must be positive and the pool flag 0 or 1",
                    self.encoder.conv[i]
                ));
            }
        }
        if self.encoder.input_size == 0 || self.encoder.fc.contains(&0) {
            return bad(format!(
                "encoder.input_size ({}) and the encoder.fc widths ({:?}) must be positive",
                self.encoder.input_size, self.encoder.fc
            ));
        }
        self.encoder.feature_size()?;
        if !(self.loss.ref_p > 0.0 && self.loss.ref_p <= 2.0) {
            return bad(format!("loss.ref_p = {} is outside (0, 2]", self.loss.ref_p));
        }
        if !(self.loss.ref_beta >= 0.0 && self.loss.ref_beta.is_finite()) {
            return bad(format!("loss.ref_beta = {} must be a non-negative number", self.loss.ref_beta));
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
    fn run_records_name_relative_models_from_the_run_and_keep_absolute_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (run, model) = (dir.path().join("runs/r"), dir.path().join("m.safetensors"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(&model, b"x").unwrap();
        let abs = ModelConfig { path: model.to_string_lossy().into_owned(), ..Default::default() };
        assert_eq!(abs.path_for_run(&run), abs.path, "an absolute path is kept");
        assert_eq!(ModelConfig::default().path_for_run(&run), "demo");
        assert_eq!(relative_path(Path::new("/a/b/m"), Path::new("/a/c/d")), Some(PathBuf::from("../../b/m")));
        assert_eq!(relative_path(Path::new("/a/m"), Path::new("/a")), Some(PathBuf::from("m")));
        // Recorded relative to the run, found from the run directory.
        let rel = ModelConfig { path: "../../m.safetensors".into(), ..Default::default() };
        assert_eq!(rel.resolve_in_run(&run), Some(run.join("../../m.safetensors")));
        assert_eq!(ModelConfig { path: "nope".into(), ..Default::default() }.resolve_in_run(&run), None);
    }

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
        // Every number the trainer divides by, scales with or takes a power of is range-checked
        // at load time, with the key in the message.
        for (text, key) in [
            ("[camera]\nfocal = nan\n", "camera.focal"),
            ("[camera]\nnear = inf\n", "camera.near"),
            ("[optim]\neps = inf\n", "optim.eps"),
            ("[optim]\nlr_geometry = -0.1\n", "optim.lr_geometry"),
            ("[params]\nlight = 0.0\n", "params"),
            ("[correctives]\nscale = [100.0, 0.0]\n", "correctives.scale"),
            ("[correctives]\nhead_std = nan\n", "head_std"),
            ("[correctives]\nhead_std = 0.0\ninit_std = [0.01, 0.0]\n", "init_std[1] = 0"),
            ("[loss]\nref_p = 0.0\n", "loss.ref_p"),
            ("[loss]\nref_beta = -1.0\n", "loss.ref_beta"),
            (
                "[encoder]\ninput_size = 0\nconv = [[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0]]\nfc = [8]\n",
                "input_size",
            ),
            (
                "[encoder]\ninput_size = 16\nconv = [[8,3,1,1,2],[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0]]\nfc = [8]\n",
                "pool flag",
            ),
            (
                "[encoder]\ninput_size = 16\nconv = [[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0],[8,3,1,1,0]]\nfc = [0]\n",
                "fc",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.contains("bad.toml") && e.contains(key), "{text}: {e}");
        }
        std::fs::write(&p, "[optim]\nlr_reflectance = 0.0\n").unwrap();
        assert!(Config::load(&p).is_ok(), "lr 0 freezes a group");
        std::fs::write(&p, "[correctives]\nhead_std = 0.0\ninit_std = [0.01, 0.001]\n").unwrap();
        assert!(Config::load(&p).is_ok(), "random bases with a zero head still learn");
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
