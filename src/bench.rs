//! `fml bench`: speed measurements of the parts the paper times — inference (latency at batch 1
//! and throughput at the best batch; the paper's figure to beat is 4 ms per image, 250 Hz), the
//! image formation layer's forward and backward pass with its memory-traffic floor, training
//! steps, and the data loader. These functions only measure and report; nothing here asserts a
//! speed.
//!
//! Timing rules: every measurement is preceded by warm-up runs (first-use allocations, kernel
//! loading), ends with a device synchronisation (CUDA work is asynchronous), and reports the
//! median of the timed runs (robust to the load of other processes on a shared machine).

use crate::config::Config;
use crate::data::dataset::write_synthetic;
use crate::data::loader::{Loader, LoaderConfig, Position};
use crate::error::{Error, Result};
use crate::face_model::FaceModel;
use crate::loss::{Objective, TrainBatch};
use crate::network::FaceNet;
use crate::render::camera::Intrinsics;
use crate::render::layer::{Backend, ImageFormation, RenderInput};
use crate::rng::Rng;
use crate::train::adadelta::AdaDelta;
use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer, VarMap};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The paper's inference time per image (abstract and Sec. 7: "over 250 Hz", 4 ms).
pub const PAPER_MS_PER_IMAGE: f64 = 4.0;
/// The paper's training rate: (200k + 190k) iterations x 5 images in 16 hours (Sec. 7), about 34
/// images/s.
pub const PAPER_TRAIN_IMAGES_PER_S: f64 = 390_000.0 * 5.0 / (16.0 * 3600.0);

/// "cpu" or "cuda" (the name the JSON outputs use).
pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Median of a non-empty list (mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    crate::eval::median(v)
}

/// Run `f` `warmup` times untimed, then time it (synchronising `device` after each run) at least
/// `min_runs` times and until `min_seconds` have passed or `max_runs` runs were made.
/// Returns the milliseconds of each timed run.
fn time_runs(
    device: &Device,
    warmup: usize,
    min_runs: usize,
    max_runs: usize,
    min_seconds: f64,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < min_runs.max(1) || (out.len() < max_runs && start.elapsed().as_secs_f64() < min_seconds) {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// A scratch folder under the system temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(what: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("fml-bench-{what}-{}-{nanos}", std::process::id()));
        crate::io::create_dir(&p)?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network with fresh (untrained) weights for `cfg`: the same computation as a trained one
/// (the zero output head only changes values, not cost). In inference form
/// ([`FaceNet::for_inference`]), as `infer::load_run` gives trained ones.
pub fn untrained_net(cfg: &Config, correctives: bool, device: &Device) -> Result<FaceNet> {
    let face_model = crate::train::load_face_model(&cfg.model)?;
    Ok(FaceNet::new(&face_model, cfg, correctives, cfg.train.backend, &VarMap::new(), device)?.for_inference())
}

// ---------------------------------------------------------------------------------------------
// Inference

/// What [`bench_infer`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct InferBenchConfig {
    /// Batch sizes for the throughput sweep, ascending; batch 1 is always measured (latency).
    pub batches: Vec<usize>,
    /// Timed runs at batch 1 (the latency is their median), after `warmup` runs.
    pub latency_runs: usize,
    pub warmup: usize,
    /// Stop growing the batch after a size whose single run takes longer than this (s); the
    /// sweep also stops at the first size that fails (e.g. out of device memory).
    pub max_seconds: f64,
}

impl Default for InferBenchConfig {
    fn default() -> Self {
        InferBenchConfig {
            batches: vec![1, 8, 32, 128, 512, 2048, 8192],
            latency_runs: 50,
            warmup: 5,
            max_seconds: 2.0,
        }
    }
}

/// One batch size of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchTiming {
    pub batch: usize,
    /// Median wall time of one forward pass of the whole batch.
    pub ms_per_batch: f64,
    pub img_s: f64,
}

/// Inference speed (the JSON of `fml bench infer --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InferReport {
    pub device: String,
    /// The config file, "checkpoint" or "default".
    pub config: String,
    pub input_size: usize,
    /// Median time of one image at batch 1.
    pub latency_ms_b1: f64,
    pub hz_b1: f64,
    pub best_batch: usize,
    pub throughput_img_s: f64,
    pub per_batch: Vec<BatchTiming>,
    /// Why the sweep ended before its last batch size, if it did.
    #[serde(skip)]
    pub stopped: Option<String>,
}

impl InferReport {
    /// The printed table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "inference on {} ({}, {}x{} crops)",
            self.device, self.config, self.input_size, self.input_size
        );
        let _ = writeln!(
            s,
            "latency at batch 1: {:.3} ms ({:.1} Hz); the paper: {PAPER_MS_PER_IMAGE} ms ({} Hz)",
            self.latency_ms_b1,
            self.hz_b1,
            1000.0 / PAPER_MS_PER_IMAGE
        );
        let _ = writeln!(s, "{:>7} {:>14} {:>12} {:>12}", "batch", "ms/batch", "ms/image", "images/s");
        for b in &self.per_batch {
            let _ = writeln!(
                s,
                "{:>7} {:>14.3} {:>12.4} {:>12.1}",
                b.batch,
                b.ms_per_batch,
                b.ms_per_batch / b.batch as f64,
                b.img_s
            );
        }
        let _ = writeln!(s, "best: batch {} at {:.1} images/s", self.best_batch, self.throughput_img_s);
        if let Some(why) = &self.stopped {
            let _ = writeln!(s, "sweep stopped: {why}");
        }
        s
    }
}

/// Time `net.predict` (encoder, parameter split, both levels of the face model) on random crops
/// already on the device; the upload of the input and the reading of results are not timed, as
/// in the usual framework benchmarks (and in the PyTorch peer) — decoding and cropping images
/// is a separate cost.
pub fn bench_infer(net: &FaceNet, config_label: &str, cfg: &InferBenchConfig) -> Result<InferReport> {
    if cfg.batches.contains(&0) {
        return Err(Error::invalid("bench infer: batch sizes must be positive"));
    }
    let mut batches: Vec<usize> = cfg.batches.clone();
    batches.push(1);
    batches.sort_unstable();
    batches.dedup();
    let s = net.intrinsics().width;
    let device = &net.device;
    let mut rng = Rng::new(7);
    let one: Vec<f32> = (0..3 * s * s).map(|_| rng.uniform() as f32).collect();
    let x1 = Tensor::from_vec(one, (1, 3, s, s), device)?; // [1, 3, S, S]
    // Large batches repeat one random crop on the device: the cost does not depend on the
    // pixel values, and generating gigabytes of random pixels on the host would dominate.
    let input = |b: usize| -> Result<Tensor> { Ok(x1.broadcast_as((b, 3, s, s))?.contiguous()?) }; // [B, 3, S, S]
    let run = |x: &Tensor| -> Result<()> {
        let p = net.predict(x)?;
        drop(p);
        Ok(())
    };

    let runs = cfg.latency_runs.max(1);
    let lat = time_runs(device, cfg.warmup, runs.min(5), runs, 10.0, || run(&x1))?;
    let latency = median(&lat);
    let mut per_batch = vec![BatchTiming { batch: 1, ms_per_batch: latency, img_s: 1e3 / latency }];
    let mut stopped = None;
    for &b in batches.iter().filter(|&&b| b > 1) {
        let attempt = (|| -> Result<(Vec<f64>, bool)> {
            let x = input(b)?;
            let t = Instant::now();
            run(&x)?;
            device.synchronize()?;
            let first = t.elapsed().as_secs_f64();
            // A slow size gets one timed run and ends the sweep.
            let slow = first > cfg.max_seconds;
            let runs = if slow {
                time_runs(device, 0, 1, 1, 0.0, || run(&x))?
            } else {
                time_runs(device, 1, 3, 20, 1.0, || run(&x))?
            };
            Ok((runs, slow))
        })();
        match attempt {
            Ok((runs, slow)) => {
                let ms = median(&runs);
                per_batch.push(BatchTiming { batch: b, ms_per_batch: ms, img_s: b as f64 * 1e3 / ms });
                if slow {
                    stopped = Some(format!("one run at batch {b} took over {} s", cfg.max_seconds));
                    break;
                }
            }
            Err(e) => {
                stopped = Some(format!("batch {b} failed: {e}"));
                break;
            }
        }
    }
    let best = per_batch.iter().max_by(|a, b| a.img_s.total_cmp(&b.img_s)).cloned().expect("batch 1 is measured");
    Ok(InferReport {
        device: device_name(device).to_string(),
        config: config_label.to_string(),
        input_size: s,
        latency_ms_b1: latency,
        hz_b1: 1e3 / latency,
        best_batch: best.batch,
        throughput_img_s: best.img_s,
        per_batch,
        stopped,
    })
}

// ---------------------------------------------------------------------------------------------
// Image formation layer

/// What [`bench_render`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderBenchConfig {
    /// Meshes per batch B.
    pub batch: usize,
    /// Vertices per mesh N.
    pub vertices: usize,
    /// Side of the sampled images (pixels).
    pub image_size: usize,
    pub backend: Backend,
    /// Timed runs (median reported) after `warmup` runs.
    pub runs: usize,
    pub warmup: usize,
}

impl Default for RenderBenchConfig {
    fn default() -> Self {
        RenderBenchConfig { batch: 64, vertices: 30_000, image_size: 240, backend: Backend::Fast, runs: 10, warmup: 2 }
    }
}

/// Image formation layer speed (the JSON of `fml bench render --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RenderReport {
    pub device: String,
    pub batch: usize,
    pub vertices: usize,
    /// Median forward time: rigid transform, normals, shading, projection + sampling, visibility,
    /// photometric term.
    pub fwd_ms: f64,
    /// Median forward + backward time (gradients for geometry, reflectance, pose and light).
    pub fwd_bwd_ms: f64,
    /// Bytes the forward + backward pass must move at least ([`render_bytes_floor`]).
    pub bytes_floor: u64,
    /// `bytes_floor / fwd_bwd time`: the achieved fraction of the device bandwidth is this over
    /// the device's bandwidth (about 3350 GB/s on an H100 SXM).
    pub gb_s: f64,
    #[serde(skip)]
    pub triangles: usize,
    #[serde(skip)]
    pub image_size: usize,
    #[serde(skip)]
    pub backend: Backend,
    /// The same floor for the forward pass alone.
    #[serde(skip)]
    pub bytes_floor_fwd: u64,
}

impl RenderReport {
    /// One printed line.
    pub fn line(&self) -> String {
        format!(
            "{:<9} B={:<4} N={:<7} fwd {:>9.3} ms  fwd+bwd {:>9.3} ms  floor {:>8.1} MB  {:>7.2} GB/s  ({:.1} Mvertex/s fwd+bwd)",
            format!("{:?}", self.backend).to_lowercase(),
            self.batch,
            self.vertices,
            self.fwd_ms,
            self.fwd_bwd_ms,
            self.bytes_floor as f64 / 1e6,
            self.gb_s,
            (self.batch * self.vertices) as f64 / (self.fwd_bwd_ms * 1e3),
        )
    }
}

/// A connected triangle grid of exactly `n` vertices shaped as a dome facing +z (a face-sized
/// 160 x 160 mm patch, 30 mm high), counter-clockwise seen from +z so normals point at a
/// camera on the +z side: rows of `ceil(sqrt(n))` vertices, the last row partial.
///
/// # Shapes
/// -> vertices `[n, 3]`, triangles `[F, 3]`.
pub fn synthetic_grid(n: usize) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
    let cols = (n as f64).sqrt().ceil().max(2.0) as usize;
    let rows = n.div_ceil(cols);
    let mut v = Vec::with_capacity(n);
    for k in 0..n {
        let (r, c) = (k / cols, k % cols);
        let x = -80.0 + 160.0 * c as f32 / (cols - 1) as f32;
        let y = -80.0 + 160.0 * r as f32 / (rows.max(2) - 1) as f32;
        let z = 30.0 * (1.0 - (x * x + y * y) / (2.0 * 80.0 * 80.0));
        v.push([x, y, z]);
    }
    let mut t = Vec::new();
    let id = |r: usize, c: usize| (r * cols + c) as u32;
    for r in 0..rows.saturating_sub(1) {
        let below = if r + 2 == rows { n - (r + 1) * cols } else { cols }; // vertices in row r + 1
        for c in 0..cols - 1 {
            // (r, c) -> (r, c+1) -> (r+1, c+1) runs counter-clockwise with +x right, +y up.
            if c + 1 < below {
                t.push([id(r, c), id(r, c + 1), id(r + 1, c + 1)]);
                t.push([id(r, c), id(r + 1, c + 1), id(r + 1, c)]);
            } else if c < below {
                t.push([id(r, c), id(r, c + 1), id(r + 1, c)]);
            }
        }
    }
    (v, t)
}

/// The least memory traffic (bytes, f32) of the image formation layer for `b` meshes of `n`
/// vertices and `f` triangles sampling `size x size` images: what a perfectly fused
/// implementation must still read and write once.
///
/// Forward: geometry and reflectance in (`2 x 12 B N`), the sampled texels (`4 x 12` bytes per
/// vertex for the bilinear footprint, at most the whole image once, `12 B S^2`), the topology
/// (`12 F` triangles + `4 (N + 1) + 12 F` vertex adjacency, shared by the batch, read once) and
/// `B` loss values out. Backward adds the gradients out (`2 x 12 B N`); a fused
/// forward-backward recomputes the forward instead of storing it, so nothing else is added.
/// Pose and light parameters (`33 B` floats) are included for completeness.
pub fn render_bytes_floor(b: usize, n: usize, f: usize, size: usize, backward: bool) -> u64 {
    let (b, n, f, s) = (b as u64, n as u64, f as u64, size as u64);
    let inputs = 2 * 12 * b * n + 4 * 33 * b;
    let texels = (48 * b * n).min(12 * b * s * s);
    let topology = 12 * f + 4 * (n + 1) + 12 * f;
    let outputs = 4 * b + if backward { 2 * 12 * b * n + 4 * 33 * b } else { 0 };
    inputs + texels + topology + outputs
}

/// Time the image formation layer (forward, and forward + backward) on a synthetic batch.
pub fn bench_render(device: &Device, cfg: &RenderBenchConfig) -> Result<RenderReport> {
    let (b, n, s) = (cfg.batch, cfg.vertices, cfg.image_size);
    if b == 0 || n < 3 || s < 2 {
        return Err(Error::invalid(format!(
            "bench render: need batch >= 1, vertices >= 3, image size >= 2 (got {b}, {n}, {s})"
        )));
    }
    let (verts, tris) = synthetic_grid(n);
    let flat: Vec<f32> = verts.iter().flatten().copied().collect();
    let model = FaceModel {
        mean_shape: flat.clone(),
        shape_basis: Vec::new(),
        shape_std: Vec::new(),
        expr_basis: Vec::new(),
        expr_std: Vec::new(),
        mean_albedo: vec![0.6; 3 * n],
        albedo_basis: Vec::new(),
        albedo_std: Vec::new(),
        triangles: tris.clone(),
        landmarks: vec![0; 68],
        contour_right: vec![0],
        contour_left: vec![1],
        skin_mask: vec![0, 1],
        face_region: (0..n as u32).collect(),
        metadata: Default::default(),
    };
    // 1000 px focal at 240 px, scaled: the 160 mm patch spans 2/3 of the image at 1 m.
    let k = Intrinsics { focal: 1000.0 * s as f32 / 240.0, width: s, height: s, near: 10.0 };
    let layer = ImageFormation::new(&model, k, cfg.backend, device)?;
    let mut rng = Rng::new(11);
    let jitter: Vec<f32> =
        (0..b).flat_map(|_| flat.iter().map(|&x| x + 0.5 * rng.normal() as f32).collect::<Vec<_>>()).collect();
    let vertices = Var::from_tensor(&Tensor::from_vec(jitter, (b, n, 3), device)?)?; // [B, N, 3]
    let refl: Vec<f32> = (0..b * n * 3).map(|_| rng.range(0.3, 0.8) as f32).collect();
    let reflectance = Var::from_tensor(&Tensor::from_vec(refl, (b, n, 3), device)?)?; // [B, N, 3]
    let rotation = Var::from_tensor(&Tensor::zeros((b, 3), candle_core::DType::F32, device)?)?; // [B, 3]
    let tr: Vec<f32> = (0..b).flat_map(|_| [0.0, 0.0, -1000.0]).collect();
    let translation = Var::from_tensor(&Tensor::from_vec(tr, (b, 3), device)?)?; // [B, 3]
    let g: Vec<f32> = (0..b).flat_map(|_| crate::render::sh::neutral()).collect();
    let gamma = Var::from_tensor(&Tensor::from_vec(g, (b, 27), device)?)?; // [B, 27]
    let img: Vec<f32> = (0..b * s * s * 3).map(|_| rng.uniform() as f32).collect();
    let image = Tensor::from_vec(img, (b, s, s, 3), device)?; // [B, S, S, 3]
    let forward = || -> Result<Tensor> {
        let r = layer.render(&RenderInput {
            vertices: vertices.as_tensor(),
            reflectance: reflectance.as_tensor(),
            rotation: rotation.as_tensor(),
            translation: translation.as_tensor(),
            gamma: gamma.as_tensor(),
            image: &image,
        })?;
        Ok(layer.photometric(&r)?.sum_all()?)
    };
    let runs = cfg.runs.max(1);
    let fwd = time_runs(device, cfg.warmup, runs, runs, 0.0, || forward().map(drop))?;
    let fwd_bwd = time_runs(device, cfg.warmup, runs, runs, 0.0, || {
        let grads = forward()?.backward()?;
        drop(grads);
        Ok(())
    })?;
    let (fwd_ms, fwd_bwd_ms) = (median(&fwd), median(&fwd_bwd));
    let bytes_floor = render_bytes_floor(b, n, tris.len(), s, true);
    Ok(RenderReport {
        device: device_name(device).to_string(),
        batch: b,
        vertices: n,
        fwd_ms,
        fwd_bwd_ms,
        bytes_floor,
        gb_s: bytes_floor as f64 / (fwd_bwd_ms * 1e-3) / 1e9,
        triangles: tris.len(),
        image_size: s,
        backend: cfg.backend,
        bytes_floor_fwd: render_bytes_floor(b, n, tris.len(), s, false),
    })
}

// ---------------------------------------------------------------------------------------------
// Training

/// Which training stage to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BenchStage {
    /// Base level only (`fml train`).
    Pretrain,
    /// Encoder plus corrective bases (`fml finetune`): both levels rendered, all regularisers.
    Finetune,
}

/// What [`bench_train`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainBenchConfig {
    pub stage: BenchStage,
    /// Images per step (None: the config's `train.batch`).
    pub batch: Option<usize>,
    /// Timed steps, after `warmup` untimed ones.
    pub steps: usize,
    pub warmup: usize,
}

impl Default for TrainBenchConfig {
    fn default() -> Self {
        TrainBenchConfig { stage: BenchStage::Pretrain, batch: None, steps: 10, warmup: 2 }
    }
}

/// Training speed (the JSON of `fml bench train --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainBenchReport {
    pub device: String,
    pub config: String,
    pub stage: BenchStage,
    pub batch: usize,
    pub steps: usize,
    pub images_per_s: f64,
    pub ms_per_step: f64,
}

impl BenchStage {
    /// "pretrain" or "finetune".
    pub fn name(self) -> &'static str {
        match self {
            BenchStage::Pretrain => "pretrain",
            BenchStage::Finetune => "finetune",
        }
    }
}

impl TrainBenchReport {
    pub fn line(&self) -> String {
        format!(
            "training ({}, {}) on {}: batch {}, {} steps: {:.1} images/s, {:.2} ms per step (the paper: about {PAPER_TRAIN_IMAGES_PER_S:.0} images/s)",
            self.stage.name(),
            self.config,
            self.device,
            self.batch,
            self.steps,
            self.images_per_s,
            self.ms_per_step
        )
    }
}

/// Time training steps exactly as `fml train` / `fml finetune` take them (load a batch through the
/// prefetching loader, predict, every loss term, backward, AdaDelta update with the run's
/// learning-rate groups) on a synthetic dataset written with
/// [`write_synthetic`](crate::data::dataset::write_synthetic) at the config's input size. Weights
/// are fresh (finetuning does not need a pretrained encoder to cost the same).
pub fn bench_train(cfg: &Config, label: &str, device: &Device, tb: &TrainBenchConfig) -> Result<TrainBenchReport> {
    let mut cfg = cfg.clone();
    if let Some(b) = tb.batch {
        cfg.train.batch = b;
    }
    cfg.validate()?;
    if tb.steps == 0 {
        return Err(Error::invalid("bench train: steps must be at least 1"));
    }
    let batch = cfg.train.batch;
    let correctives = tb.stage == BenchStage::Finetune;
    let face_model = crate::train::load_face_model(&cfg.model)?;
    let varmap = VarMap::new();
    let net = FaceNet::new(&face_model, &cfg, correctives, cfg.train.backend, &varmap, device)?;
    let objective = Objective::new(&net, &cfg.loss, cfg.train.seed)?;
    let mut opt = AdaDelta::for_varmap(&varmap, &cfg.optim)?;

    let scratch = ScratchDir::new("train")?;
    let data = scratch.0.join("synthetic.fmlds");
    // Every 10th record is validation: enough training records for two full batches.
    let count = (2 * batch * 10).div_ceil(9) + 10;
    write_synthetic(&data, count, cfg.encoder.input_size as u32, cfg.train.seed)?;
    let loader = Loader::new(
        &data,
        // The defaults are the training loader: shuffled, full batches of the train split.
        LoaderConfig {
            batch_size: batch,
            seed: cfg.train.seed,
            augment: cfg.augment.clone(),
            ..LoaderConfig::default()
        },
    )?;
    let mut batches = loader.iter_from(Position::default());
    let mut step = |i: usize| -> Result<()> {
        let batch = batches.next().ok_or_else(|| Error::invalid("bench train: the data loader stopped"))??;
        let b = batch.len();
        let tb = TrainBatch::from_host(batch.images, batch.landmarks, batch.confidence, b, batch.size, device)?;
        let pred = net.predict(&tb.images)?;
        let terms = objective.compute(&net, &pred, &tb)?;
        terms.values().map_err(|e| Error::NonFinite(format!("bench train step {}: {e}", i + 1)))?;
        let grads = terms.total.backward()?;
        opt.step(&grads)?;
        Ok(())
    };
    for i in 0..tb.warmup {
        step(i)?;
    }
    device.synchronize()?;
    let start = Instant::now();
    for i in 0..tb.steps {
        step(tb.warmup + i)?;
    }
    device.synchronize()?;
    let secs = start.elapsed().as_secs_f64();
    Ok(TrainBenchReport {
        device: device_name(device).to_string(),
        config: label.to_string(),
        stage: tb.stage,
        batch,
        steps: tb.steps,
        images_per_s: (tb.steps * batch) as f64 / secs,
        ms_per_step: secs * 1e3 / tb.steps as f64,
    })
}

// ---------------------------------------------------------------------------------------------
// Data loader

/// Loader speed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoaderBenchReport {
    /// The dataset file, or "synthetic" when one was written for the measurement.
    pub dataset: String,
    pub batch: usize,
    pub size: usize,
    pub images_per_s: f64,
}

impl LoaderBenchReport {
    pub fn line(&self) -> String {
        format!(
            "loader ({}, {}x{} crops, standard augmentation, batch {}): {:.0} images/s",
            self.dataset, self.size, self.size, self.batch, self.images_per_s
        )
    }
}

/// [`bench_loader`](crate::data::bench_loader) on `dataset`, or on a synthetic dataset of
/// `count` faces of `size` pixels written to a temporary folder when `dataset` is None.
pub fn bench_loader(dataset: Option<&Path>, batch: usize, size: usize, count: usize) -> Result<LoaderBenchReport> {
    match dataset {
        Some(p) => {
            let ds = crate::data::Dataset::open(p)?;
            let images_per_s = crate::data::bench_loader(p, batch)?;
            Ok(LoaderBenchReport { dataset: p.display().to_string(), batch, size: ds.size() as usize, images_per_s })
        }
        None => {
            let scratch = ScratchDir::new("loader")?;
            let p = scratch.0.join("synthetic.fmlds");
            write_synthetic(&p, count.max(batch), size as u32, 1)?;
            let images_per_s = crate::data::bench_loader(&p, batch)?;
            Ok(LoaderBenchReport { dataset: "synthetic".into(), batch, size, images_per_s })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_exact_count_and_faces_the_camera() {
        for n in [3, 4, 10, 17, 100, 1001] {
            let (v, t) = synthetic_grid(n);
            assert_eq!(v.len(), n);
            assert!(!t.is_empty());
            let mut used = vec![false; n];
            for tri in &t {
                for &i in tri {
                    assert!((i as usize) < n);
                    used[i as usize] = true;
                }
                // Counter-clockwise seen from +z: positive z of the cross product.
                let [a, b, c] = tri.map(|i| v[i as usize]);
                let z = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
                assert!(z > 0.0, "n {n}: {tri:?}");
            }
            assert!(used.iter().all(|&u| u), "n {n}: isolated vertex");
        }
    }

    #[test]
    fn bytes_floor_counts_what_must_move() {
        // B = 1, N = 1, no triangles, huge image: 24 in + 48 texels + 4 adjacency + 132 pose and
        // light + 4 out (forward); backward adds 24 + 132.
        assert_eq!(render_bytes_floor(1, 1, 0, 100, false), 24 + 132 + 48 + 8 + 4);
        assert_eq!(render_bytes_floor(1, 1, 0, 100, true), 24 + 132 + 48 + 8 + 4 + 24 + 132);
        // Texels are capped by the image.
        assert_eq!(render_bytes_floor(1, 1000, 0, 2, false), 24_000 + 132 + 48 + 4 * 1001 + 4);
    }

    #[test]
    fn render_bench_runs_and_reports_consistent_numbers() {
        let cfg =
            RenderBenchConfig { batch: 2, vertices: 200, image_size: 32, runs: 2, warmup: 1, ..Default::default() };
        let r = bench_render(&Device::Cpu, &cfg).unwrap();
        assert!(r.fwd_ms > 0.0 && r.fwd_bwd_ms > 0.0);
        assert_eq!(r.bytes_floor, render_bytes_floor(2, 200, r.triangles, 32, true));
        assert!((r.gb_s - r.bytes_floor as f64 / (r.fwd_bwd_ms * 1e6)).abs() < 1e-9 * r.gb_s.max(1.0));
        let reference = bench_render(&Device::Cpu, &RenderBenchConfig { backend: Backend::Reference, ..cfg }).unwrap();
        assert_eq!(reference.backend, Backend::Reference);
        assert!(bench_render(&Device::Cpu, &RenderBenchConfig { vertices: 2, ..Default::default() }).is_err());
    }
}
