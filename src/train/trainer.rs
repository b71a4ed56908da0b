//! The training loop of Sec. 7: pretraining of the base level (`fml train`) and joint learning
//! of encoder and corrective bases (`fml finetune`), with logging, validation, atomic
//! checkpoints and exact resumption.

use super::adadelta::AdaDelta;
use crate::checkpoint::{self, Meta};
use crate::config::Config;
use crate::data::dataset::Split;
use crate::data::loader::{Loader, LoaderConfig, Position};
use crate::encoder;
use crate::error::{Error, Result};
use crate::face_model::FaceModel;
use crate::loss::{Objective, TrainBatch};
use crate::network::FaceNet;
use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which stage of Sec. 7 to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// Base level only (paper: 200k iterations, lr 0.01).
    Pretrain,
    /// Encoder plus correctives, initialised from a pretraining run's checkpoint.
    Finetune { from: PathBuf },
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Finetune { .. } => "finetune",
        }
    }
}

/// What `fml train` / `fml finetune` were asked to do.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub config: Config,
    pub stage: Stage,
    /// Run directory (config, log, checkpoint).
    pub out: PathBuf,
    /// Continue the run in `out` from its checkpoint.
    pub resume: bool,
    /// Progress bar (stderr) when on a terminal; plain log lines otherwise.
    pub progress: bool,
    /// Stop after this many completed steps even if `train.steps` is larger (a deliberate
    /// interruption, used by tests and for time-boxed runs); the checkpoint is written.
    pub stop_at: Option<u64>,
}

impl TrainOptions {
    /// "pretrain" or "finetune".
    pub fn stage_name(&self) -> &'static str {
        self.stage.name()
    }
}

/// Summary of a finished (or stopped) run.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub out: PathBuf,
    pub step: u64,
    /// Last training step's terms.
    pub last: Vec<(String, f64)>,
    /// Last validation means, if any.
    pub validation: Option<Vec<(String, f64)>>,
    pub images_per_sec: f64,
    /// Stopped early by [`super::interrupt::request_stop`] (Ctrl-C), with a checkpoint.
    pub interrupted: bool,
}

/// The face model a config names ("demo" or a file), truncated as configured.
pub fn load_face_model(cfg: &crate::config::ModelConfig) -> Result<FaceModel> {
    let mut m = if cfg.path == "demo" { crate::face_model::demo::demo_model() } else { FaceModel::load(&cfg.path)? };
    if cfg.shape_modes.is_some() || cfg.expr_modes.is_some() || cfg.albedo_modes.is_some() {
        m.truncate(cfg.shape_modes, cfg.expr_modes, cfg.albedo_modes)
            .map_err(|e| Error::invalid(format!("[model] of the config (model {}): {e}", cfg.path)))?;
    }
    Ok(m)
}

/// "cpu", "cuda" or "auto" (CUDA when this build has it and a GPU is usable, else the CPU with a
/// note on stderr).
pub fn select_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                return Err(Error::invalid("device cuda: this fml was built without the `cuda` feature"));
            }
            open_cuda().map_err(|e| Error::invalid(format!("device cuda: {e}")))
        }
        // Not candle's `cuda_if_available`: that only asks whether the build has CUDA, so a CUDA
        // build on a machine without a GPU (or driver) failed every default command.
        "auto" if cfg!(feature = "cuda") => Ok(open_cuda().unwrap_or_else(|e| {
            let _ = writeln!(std::io::stderr(), "note: device auto: {e}; running on the CPU");
            Device::Cpu
        })),
        "auto" => Ok(Device::Cpu),
        other => Err(Error::invalid(format!("unknown device {other:?} (cpu, cuda or auto)"))),
    }
}

/// CUDA device 0, or why not in one line (candle's error without its backtrace).
fn open_cuda() -> std::result::Result<Device, String> {
    Device::new_cuda(0).map_err(|e| {
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        format!("no usable CUDA device 0 ({e}; is a GPU visible and its driver installed?)")
    })
}

/// The pretraining head `[P0, F]` grown to `[P0 + 2C, F]` with rows for the corrective
/// coefficients (they sit last in the parameter vector): small random weights and zero biases
/// (`CorrectiveConfig::head_std`). The bases start at zero, so finetuning starts exactly where
/// pretraining ended.
fn grow_head(t: &Tensor, rows: usize, std: f32, seed: u64) -> Result<Tensor> {
    let have = t.dim(0)?;
    if have == rows {
        return Ok(t.clone());
    }
    if have > rows {
        return Err(Error::invalid(format!("pretrained head has {have} outputs, more than the {rows} needed")));
    }
    let mut shape = t.dims().to_vec();
    shape[0] = rows - have;
    let extra = if shape.len() == 2 {
        let mut rng = crate::rng::Rng::new(seed ^ 0x6E_AD5);
        let w = encoder::head_rows(shape[0], shape[1], 0, std, &mut rng);
        Tensor::from_vec(w, shape, t.device())?
    } else {
        Tensor::zeros(shape, t.dtype(), t.device())?
    };
    Ok(Tensor::cat(&[t, &extra], 0)?)
}

fn open_log(out: &Path, keep_through: u64) -> Result<std::fs::File> {
    let path = out.join("log.jsonl");
    // Drop lines of steps after the checkpoint (all of them on a fresh start, e.g. after a run
    // stopped before its first checkpoint): they are about to be redone.
    if let Ok(text) = std::fs::read_to_string(&path) {
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= keep_through)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::io::write_atomic_bytes(&path, kept.as_bytes())?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))
}

/// Dotted keys whose values differ between two configs (tables compared leaf by leaf).
fn config_differences(a: &Config, b: &Config) -> Vec<String> {
    fn walk(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
        match (a, b) {
            (toml::Value::Table(ta), toml::Value::Table(tb)) => {
                let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    match (ta.get(k), tb.get(k)) {
                        (Some(x), Some(y)) => walk(&key, x, y, out),
                        _ => out.push(key),
                    }
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (toml::Value::try_from(a), toml::Value::try_from(b)) else {
        return vec!["<config>".into()];
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

/// Settings a resumed run may change without changing what it computes: the length of the
/// run, where it runs, how often it validates and checkpoints, and where its dataset lies.
/// (`train.correctives` follows the stage, which the checkpoint fixes; older runs recorded false.)
const RESUMABLE_CHANGES: [&str; 8] = [
    "train.steps",
    "train.correctives",
    "train.device",
    "train.tf32",
    "train.val_every",
    "train.val_batches",
    "train.checkpoint_every",
    "data.dataset",
];

fn json_terms(terms: &[(String, f64)]) -> serde_json::Value {
    serde_json::Value::Object(terms.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect())
}

/// Number of base-level outputs (everything but the corrective coefficients) for a model.
fn base_outputs(face_model: &FaceModel) -> usize {
    face_model.num_shape() + face_model.num_expr() + face_model.num_albedo() + crate::network::params::FIXED
}

/// Run (or resume) a training stage.
pub fn train(opts: &TrainOptions) -> Result<TrainReport> {
    let correctives = matches!(opts.stage, Stage::Finetune { .. });
    if !correctives && opts.config.train.correctives {
        return Err(Error::invalid(
            "train.correctives = true: `fml train` learns the base level only; learn correctives with \
             `fml finetune --from RUN`",
        ));
    }
    if correctives && opts.config.correctives.count == 0 {
        return Err(Error::invalid(
            "correctives.count = 0: finetuning learns C > 0 corrective coefficients (paper: 500)",
        ));
    }
    // The effective config records the stage: a finetuning run's config.toml says
    // `correctives = true` (what `fml bench infer` and readers of the run go by).
    let mut effective = opts.config.clone();
    effective.train.correctives = correctives;
    let cfg = &effective;
    cfg.validate()?;
    let device = select_device(&cfg.train.device)?;
    // Set (or reset) on every run: candle's flag is process-wide and outlives a previous run.
    if !crate::kernel::set_tf32(&device, cfg.train.tf32) && cfg.train.tf32 {
        let _ = writeln!(std::io::stderr(), "{}", crate::kernel::TF32_CPU_NOTE);
    }
    let face_model = load_face_model(&cfg.model).map_err(|e| match e {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => Error::invalid(format!(
            "model.path = {}: not found (relative paths are read from the working directory)",
            path.display()
        )),
        e => e,
    })?;
    // The run directory is created only once every input has been checked (below), so a run
    // that cannot start leaves nothing behind.
    let ckpt_path = opts.out.join(checkpoint::FILE);

    let varmap = VarMap::new();
    let mut resumed: Option<checkpoint::Checkpoint> = None;
    let mut from_ck: Option<checkpoint::Checkpoint> = None;
    if opts.resume {
        if !ckpt_path.exists() {
            return Err(Error::invalid(format!(
                "nothing to resume in {}: no checkpoint yet (start the run without --resume)",
                opts.out.display()
            )));
        }
        let ran = opts.out.join("config.toml");
        if ran.exists() {
            let mut before = Config::load(&ran)?;
            // The record's model path is run-relative (or, in older runs, relative to where that
            // training ran): the same file given another way is the same model.
            let same_file = |a: Option<PathBuf>, b: &Path| {
                a.and_then(|a| a.canonicalize().ok()).is_some_and(|a| b.canonicalize().is_ok_and(|b| a == b))
            };
            if same_file(before.model.resolve_in_run(&opts.out), Path::new(&cfg.model.path)) {
                before.model.path = cfg.model.path.clone();
            }
            let changed: Vec<String> = config_differences(&before, cfg)
                .into_iter()
                .filter(|k| !RESUMABLE_CHANGES.contains(&k.as_str()))
                .collect();
            if !changed.is_empty() {
                return Err(Error::invalid(format!(
                    "--resume would not continue the same run: {} {} from {} (resume with --config {} \
                     and --steps to extend it)",
                    changed.join(", "),
                    if changed.len() == 1 { "differs" } else { "differ" },
                    ran.display(),
                    ran.display()
                )));
            }
        }
        let ck = checkpoint::load(&ckpt_path, &device)?;
        // Checked even without the run's config.toml (deleted, or a copied checkpoint): every
        // random draw (batch order, augmentation, E_glo partners) follows the seed.
        if ck.meta.seed != cfg.train.seed {
            return Err(Error::invalid(format!(
                "--resume would not continue the same run: {} was trained with train.seed = {}, this config has {}",
                ckpt_path.display(),
                ck.meta.seed,
                cfg.train.seed
            )));
        }
        if ck.meta.stage != opts.stage.name() {
            return Err(Error::invalid(format!(
                "{} is a {} checkpoint, not {}",
                ckpt_path.display(),
                ck.meta.stage,
                opts.stage.name()
            )));
        }
        checkpoint::restore_vars(&ck, &varmap, &[encoder::PREFIX, "correctives."])?;
        resumed = Some(ck);
    } else {
        if ckpt_path.exists() {
            return Err(Error::invalid(format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                opts.out.display()
            )));
        }
        if let Stage::Finetune { from } = &opts.stage {
            let src = if from.is_dir() { from.join(checkpoint::FILE) } else { from.clone() };
            let ck = checkpoint::load(&src, &device)?;
            if ck.meta.stage != Stage::Pretrain.name() {
                // Its corrective bases would not come along (finetuning starts them at zero), while
                // the head's corrective rows would: an inconsistent start.
                return Err(Error::format(
                    &src,
                    format!(
                        "a {} checkpoint: --from takes a pretraining run (continue this one with --resume)",
                        ck.meta.stage
                    ),
                ));
            }
            // The pretrained weights mean something only under the settings they were trained
            // with: the crop size (240 and 256 px give the same weight shapes), the output scales
            // and the camera. A run's recorded config says what those were.
            let recorded = src.parent().unwrap_or(Path::new(".")).join("config.toml");
            if recorded.is_file() {
                let theirs = Config::load(&recorded)?;
                let keys: Vec<String> = config_differences(&theirs, cfg)
                    .into_iter()
                    .filter(|k| ["encoder.", "params.", "camera."].iter().any(|s| k.starts_with(s)))
                    .collect();
                let mut sections: Vec<String> =
                    keys.iter().map(|k| format!("[{}]", k.split('.').next().unwrap_or(k))).collect();
                sections.dedup();
                if !keys.is_empty() {
                    return Err(Error::invalid(format!(
                        "{} was pretrained with other {} settings ({} differ from {}); finetuning reads its \
                         weights through this config's, so they must be the same",
                        src.display(),
                        sections.join(", "),
                        keys.join(", "),
                        recorded.display()
                    )));
                }
            }
            let ours = [face_model.num_shape(), face_model.num_expr(), face_model.num_albedo()];
            if let Some(theirs) = ck.meta.modes.filter(|m| *m != ours) {
                return Err(Error::format(
                    &src,
                    format!(
                        "pretrained for {theirs:?} identity / expression / reflectance modes; this config's model \
                         has {ours:?} (use the pretraining run's face model and mode counts)"
                    ),
                ));
            }
            if ck.meta.num_vertices != face_model.num_vertices() {
                return Err(Error::invalid(format!(
                    "{} was trained on a model with {} vertices; this config's model has {}",
                    src.display(),
                    ck.meta.num_vertices,
                    face_model.num_vertices()
                )));
            }
            // The head is grown by appending corrective rows, so the base outputs must be the
            // same ones: a run with other mode counts would have its expression, reflectance and
            // pose outputs read as other coefficients.
            let base = base_outputs(&face_model);
            let pretrained_base = ck.meta.num_outputs.saturating_sub(2 * ck.meta.correctives);
            if pretrained_base != base {
                return Err(Error::invalid(format!(
                    "{} regresses {} base-level parameters; this config's model needs {} (same face model \
                     and mode counts as the pretraining run?)",
                    src.display(),
                    pretrained_base,
                    base
                )));
            }
            checkpoint::restore_vars(&ck, &varmap, &[encoder::PREFIX])?;
            from_ck = Some(ck);
        }
    }
    // Grow a pretrained head to the finetuning layout before the encoder is built over it.
    let rows = base_outputs(&face_model) + if correctives { 2 * cfg.correctives.count } else { 0 };
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for name in [format!("{}.head.weight", encoder::PREFIX), format!("{}.head.bias", encoder::PREFIX)] {
            if let Some(v) = data.get(&name)
                && v.dim(0)? != rows
            {
                let grown = grow_head(v.as_tensor(), rows, cfg.correctives.head_std, cfg.train.seed)?;
                data.insert(name, candle_core::Var::from_tensor(&grown)?);
            }
        }
    }
    // Restored weights whose shapes the config's encoder does not have: name their file.
    let restored_from = resumed.as_ref().or(from_ck.as_ref()).map(|ck| ck.path.clone());
    let net = FaceNet::new(&face_model, cfg, correctives, cfg.train.backend, &varmap, &device).map_err(|e| {
        match &restored_from {
            Some(p) => Error::format(p, format!("does not fit this config's network: {e}")),
            None => e,
        }
    })?;
    if let Some(ck) = &resumed {
        checkpoint::check_complete(ck, &varmap, &[encoder::PREFIX, "correctives."])?;
    }
    if let Some(ck) = &from_ck {
        checkpoint::check_complete(ck, &varmap, &[encoder::PREFIX])?;
    }
    let objective = Objective::new(&net, &cfg.loss, cfg.train.seed)?;

    // Parameter groups (Sec. 7): encoder / base level, geometry and reflectance correctives.
    let mut opt = AdaDelta::for_varmap(&varmap, &cfg.optim)?;

    let loader = Loader::new(
        &cfg.data.dataset,
        // The defaults are the training loader: shuffled, full batches of the train split.
        LoaderConfig {
            batch_size: cfg.train.batch,
            seed: cfg.train.seed,
            augment: cfg.augment.clone(),
            ..LoaderConfig::default()
        },
    )
    .map_err(|e| match e {
        // Say where the path came from: a relative data.dataset is read from the working directory.
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => Error::invalid(format!(
            "data.dataset = {}: not found (relative paths are read from the working directory; \
             --data overrides it)",
            path.display()
        )),
        e => e,
    })?;
    if loader.image_size() != cfg.encoder.input_size {
        return Err(Error::invalid(format!(
            "{} holds {s}x{s} crops but encoder.input_size is {}",
            cfg.data.dataset.display(),
            cfg.encoder.input_size,
            s = loader.image_size()
        )));
    }
    let splits = [loader.dataset().indices(Some(Split::Train)).len(), loader.dataset().indices(Some(Split::Val)).len()];
    if let Some(ck) = &resumed
        && let Some(before) = ck.meta.data.filter(|d| *d != splits)
    {
        return Err(Error::invalid(format!(
            "--resume would not continue the same run: {} holds {} training and {} validation faces, the run \
             was trained on {} and {} (a re-prepared dataset puts other faces where the run stopped)",
            cfg.data.dataset.display(),
            splits[0],
            splits[1],
            before[0],
            before[1]
        )));
    }
    let has_val = splits[1] > 0 && cfg.train.val_batches > 0;
    // Validation needs no gradients: the inference form (detached views of the same weights, so
    // it sees every update) records no graph and frees each activation once it is consumed.
    let val_net = if has_val { Some(net.for_inference()) } else { None };

    // Where a finetuning run started: its own record when resumed (--from is not read then),
    // else the file --from was loaded from.
    let finetuned_from = match (&resumed, &from_ck) {
        (Some(ck), _) => ck.meta.finetuned_from.clone(),
        (None, Some(ck)) => Some(std::fs::canonicalize(&ck.path).unwrap_or_else(|_| ck.path.clone())),
        (None, None) => None,
    };
    let (mut step, mut position) = (0u64, Position::default());
    if let Some(ck) = &resumed {
        opt.load_state(&ck.tensors).map_err(|e| {
            Error::format(
                &ck.path,
                format!("{e} (a weights-only export cannot be resumed; finetune --from it instead)"),
            )
        })?;
        step = ck.meta.step;
        position = ck.meta.loader;
    }
    // The record names the face model relative to the run directory (readable from anywhere).
    crate::io::create_dir(&opts.out)?;
    let mut record = cfg.clone();
    record.model.path = cfg.model.path_for_run(&opts.out);
    crate::io::write_atomic_bytes(opts.out.join("config.toml"), record.to_toml().as_bytes())?;
    let mut log = open_log(&opts.out, resumed.as_ref().map_or(0, |c| c.meta.step))?;
    let target = opts.stop_at.map_or(cfg.train.steps, |s| s.min(cfg.train.steps));

    let meta_at = |step: u64, loader: Position| Meta {
        format_version: checkpoint::FORMAT_VERSION,
        stage: opts.stage.name().into(),
        step,
        loader,
        seed: cfg.train.seed,
        num_vertices: face_model.num_vertices(),
        num_outputs: net.layout.num_outputs(),
        correctives: net.layout.correctives,
        modes: Some([face_model.num_shape(), face_model.num_expr(), face_model.num_albedo()]),
        finetuned_from: finetuned_from.clone(),
        data: Some(splits),
    };
    let save = |step: u64, pos: Position, opt: &AdaDelta| {
        checkpoint::save(&ckpt_path, &varmap, &opt.state(), &meta_at(step, pos))
    };

    let tty = opts.progress && std::io::stderr().is_terminal();
    let bar = if tty {
        let b = indicatif::ProgressBar::new(target);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
        b.set_position(step);
        Some(b)
    } else {
        None
    };
    let plain_every = (target / 20).max(1);

    let mut last = Vec::new();
    let mut validation = None;
    let mut interrupted = false;
    let start = Instant::now();
    let first_step = step;
    let mut batches = loader.iter_from(position);
    while step < target {
        let batch = batches.next().ok_or_else(|| Error::invalid("the data loader stopped"))??;
        let b = batch.len();
        let tb = TrainBatch::from_host(batch.images, batch.landmarks, batch.confidence, b, batch.size, &device)?;
        // A NaN/Inf anywhere (parameters, rendering, loss) stops here, before any update: the
        // last checkpoint stays as it was.
        let (terms, values) = (|| -> Result<_> {
            let pred = net.predict(&tb.images)?;
            let terms = objective.compute(&net, &pred, &tb)?;
            let values = terms.values()?;
            Ok((terms, values))
        })()
        .map_err(|e| match e {
            Error::NonFinite(m) => Error::NonFinite(format!("step {}: {m}", step + 1)),
            other => other,
        })?;
        let grads = terms.total.backward()?;
        if let Some(var) = opt.non_finite_gradient(&grads)? {
            return Err(Error::NonFinite(format!(
                "step {}: the gradient of {var} is NaN or infinite although every loss term is finite; \
                 nothing was updated and the last checkpoint is intact",
                step + 1
            )));
        }
        opt.step(&grads)?;
        step += 1;
        position = batch.next;
        let elapsed = start.elapsed().as_secs_f64();
        let ips = (step - first_step) as f64 * b as f64 / elapsed.max(1e-9);
        let line = serde_json::json!({"step": step, "split": "train", "loss": json_terms(&values), "images_per_s": ips, "lr": opt.learning_rate()});
        writeln!(log, "{line}").map_err(|e| Error::io(opts.out.join("log.jsonl"), e))?;
        let total = values[0].1;
        let px = values.iter().find(|(k, _)| k == "landmark_px").map_or(0.0, |v| v.1);
        match &bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {total:.4} lmk {px:.2}px {ips:.1} img/s"));
            }
            None if opts.progress && (step % plain_every == 0 || step == target) => {
                // Not eprintln!: a closed stderr (`fml train ... 2>&1 | head`) must not kill a run.
                let _ = writeln!(
                    std::io::stderr(),
                    "step {step}/{target} loss {total:.5} landmarks {px:.2} px {ips:.1} img/s"
                );
            }
            None => {}
        }
        last = values;
        if let Some(val_net) = val_net.as_ref().filter(|_| cfg.train.val_every > 0)
            && (step % cfg.train.val_every == 0 || step == target)
        {
            let v = validate(val_net, &objective, &loader, cfg.train.val_batches, &device).map_err(|e| match e {
                Error::NonFinite(m) => Error::NonFinite(format!("validation after step {step}: {m}")),
                other => other,
            })?;
            let line = serde_json::json!({"step": step, "split": "val", "loss": json_terms(&v)});
            writeln!(log, "{line}").map_err(|e| Error::io(opts.out.join("log.jsonl"), e))?;
            validation = Some(v);
        }
        if super::interrupt::stop_requested() && step < target {
            interrupted = true;
            break;
        }
        if cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0 && step != target {
            save(step, position, &opt)?;
        }
    }
    drop(batches);
    save(step, position, &opt)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let images = (step - first_step) as f64 * cfg.train.batch as f64;
    Ok(TrainReport {
        out: opts.out.clone(),
        step,
        last,
        validation,
        images_per_sec: images / elapsed.max(1e-9),
        interrupted,
    })
}

/// Mean loss terms over (at most `max_batches`) validation batches, without updates.
pub fn validate(
    net: &FaceNet,
    objective: &Objective,
    train_loader: &Loader,
    max_batches: usize,
    device: &Device,
) -> Result<Vec<(String, f64)>> {
    let mut cfg = train_loader.config().clone();
    cfg.split = Some(Split::Val);
    cfg.shuffle = false;
    cfg.drop_last = false;
    cfg.augment = crate::data::augment::Augment::none();
    let loader = Loader::new(train_loader.dataset().path(), cfg)?;
    let mut sums: Vec<(String, f64)> = Vec::new();
    let mut count = 0usize;
    for batch in loader.iter_epoch(0).take(max_batches) {
        let batch = batch?;
        let b = batch.len();
        let tb = TrainBatch::from_host(batch.images, batch.landmarks, batch.confidence, b, batch.size, device)?;
        let pred = net.predict(&tb.images)?;
        let values = objective.compute(net, &pred, &tb)?.values()?;
        if sums.is_empty() {
            sums = values.iter().map(|(k, _)| (k.clone(), 0.0)).collect();
        }
        for (s, (_, v)) in sums.iter_mut().zip(&values) {
            s.1 += v * b as f64;
        }
        count += b;
    }
    for s in &mut sums {
        s.1 /= count.max(1) as f64;
    }
    Ok(sums)
}
