//! Command-line interface: clap derive definitions and dispatch to the library.

/// `println!` / `print!` / `eprintln!` that ignore a closed pipe (`fml ... | head`): the work
/// is done (or checkpointed) by the time anything is printed, and the std macros would turn a
/// reader that stopped early into a panic.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

use clap::{Args, Parser, Subcommand, ValueEnum};
use fml::face_model::FaceModel;
use fml::face_model::import::{ContourOptions, ImportFormat, ImportOptions, Origin};
use std::path::{Path, PathBuf};

/// fml: monocular 3D face reconstruction with a self-supervised multi-level face model.
#[derive(Parser, Debug)]
#[command(name = "fml", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--land-map` and `--land-y-up`, for the commands that read landmark files (prepare,
/// reconstruct, eval).
#[derive(Args, Debug, Default)]
pub struct LandMapArg {
    /// Point order of .land files that are neither 68 (iBUG) nor 66 (tracker) points, e.g.
    /// FaceWarehouse's 74. A text file: the scheme's point count on the first line, then 68
    /// lines, one per iBUG-68 point in iBUG order, each holding that point's 0-based index in
    /// the .land file, or "-" when the scheme lacks it (confidence 0); "#" starts a comment.
    #[arg(long, value_name = "FILE")]
    pub land_map: Option<PathBuf>,
    /// .land files measure y from the bottom edge of the image.
    #[arg(long)]
    pub land_y_up: bool,
}

impl LandMapArg {
    fn apply(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.land_map {
            fml::data::landmarks::set_land_map(Some(fml::data::LandMap::read(p)?));
        }
        fml::data::landmarks::set_land_y_up(self.land_y_up);
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The end-to-end demo on built-in data: a synthetic face reconstructed by the shipped
    /// default network (mesh, overlay, parameters, error against the synthetic ground truth).
    Demo(DemoArgs),
    /// Face models: generate the demo model, import, inspect.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Render a synthetic labelled face data set (images, .pts landmarks, meshes, parameters).
    Synth(SynthArgs),
    /// Crop faces from images with landmarks and pack them into a training dataset file.
    Prepare(PrepareArgs),
    /// Pretrain the encoder on the base level (paper Sec. 7: 200k iterations, batch 5).
    Train(TrainArgs),
    /// Jointly learn the encoder and the corrective bases, starting from a pretraining run.
    Finetune(FinetuneArgs),
    /// Reconstruct faces: images, folders or .txt lists in; meshes (+ parameters, overlays) out.
    Reconstruct(ReconstructArgs),
    /// Write a weights-only copy of a run (config + checkpoint without optimiser state).
    Export(ExportArgs),
    /// Evaluate a trained network on FaceWarehouse-layout data: geometric error after similarity
    /// alignment (paper Table 1) and photometric error (Fig. 11), base and final level.
    Eval(EvalArgs),
    /// Measure speeds: inference latency and throughput, the image formation layer, training
    /// steps, the data loader.
    Bench(BenchArgs),
}

/// `fml eval --facewarehouse DIR`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// FaceWarehouse-layout folder: Tester_*/TrainingPose/pose_*.png with pose_*.pts (or .land)
    /// for the crop, pose_*.obj (ground truth, any topology) and optionally pose_*.json (3D
    /// landmarks, as `fml synth --layout facewarehouse` writes).
    #[arg(long, value_name = "DIR")]
    pub facewarehouse: PathBuf,
    /// Trained run (directory or checkpoint file) [default: the built-in default model].
    #[arg(long, value_name = "RUN")]
    pub checkpoint: Option<PathBuf>,
    /// Take the base-level numbers (geometric and photometric) from this run, e.g. the
    /// pretraining run the finetuned --checkpoint started from: Sec. 7 compares the final level
    /// with the base level "obtained from the pretrained network" (said of Fig. 4; we read Table
    /// 1's "Coarse" column the same way). Default: the checkpoint's own base level.
    #[arg(long, value_name = "RUN")]
    pub base_checkpoint: Option<PathBuf>,
    /// Also write the summary and per-mesh numbers as JSON.
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Radius (mm) of the ground-truth face region around the nose tip.
    #[arg(long, value_name = "MM", default_value_t = fml::infer::eval::EvalConfig::default().radius_mm, value_parser = parse_positive::<f32>, allow_negative_numbers = true)]
    pub radius: f32,
    /// Factor from ground-truth units (meshes, 3D landmarks) to mm.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0, value_parser = parse_positive::<f32>, allow_negative_numbers = true)]
    pub gt_scale: f32,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Let f32 matrix products on CUDA use TF32 tensor cores: faster, at an accuracy cost not
    /// measured for fml. No effect on the CPU.
    #[arg(long)]
    pub tf32: bool,
    /// Faces per network batch.
    #[arg(long, default_value_t = fml::infer::eval::EvalConfig::default().batch)]
    pub batch: usize,
    /// Upper bound on ICP iterations per mesh.
    #[arg(long, value_name = "N", default_value_t = fml::eval::IcpConfig::default().max_iterations)]
    pub icp_iterations: usize,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub land_map: LandMapArg,
}

/// What `fml bench` measures.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchWhat {
    /// Inference latency (batch 1) and throughput (batch sweep).
    Infer,
    /// Image formation layer forward and forward + backward.
    Render,
    /// Training steps (images/s).
    Train,
    /// The data loader (images/s).
    Loader,
    /// All of the above.
    All,
}

/// `fml bench [infer|render|train|loader|all]`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value_t = BenchWhat::All)]
    pub what: BenchWhat,
    /// infer: an untrained network of this run configuration; train: the configuration to train
    /// [default: a trained --checkpoint or the default model for infer, the built-in (paper:
    /// AlexNet, 240 px) configuration for train].
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// infer: a trained run (directory or checkpoint file).
    #[arg(long, value_name = "RUN")]
    pub checkpoint: Option<PathBuf>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Let f32 matrix products on CUDA use TF32 tensor cores: faster, at an accuracy cost not
    /// measured for fml. No effect on the CPU.
    #[arg(long)]
    pub tf32: bool,
    /// Write the measurements as JSON (with `all`: one object per part).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// infer: batch sizes of the throughput sweep (comma separated) [default: 1,8,32,128,512,2048,8192].
    #[arg(long, value_delimiter = ',')]
    pub batches: Option<Vec<usize>>,
    /// infer: stop the sweep after a batch size one run of which takes longer (seconds).
    #[arg(long, default_value_t = 2.0, value_parser = parse_positive::<f64>, allow_negative_numbers = true)]
    pub max_seconds: f64,
    /// infer: timed runs at batch 1 (fewer when they take over 10 s in all).
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// render: meshes per batch [64]; train: images per step [the config's]; loader: batch [32].
    #[arg(long)]
    pub batch: Option<usize>,
    /// render: vertices per mesh.
    #[arg(long, default_value_t = 30_000)]
    pub vertices: usize,
    /// render: side of the sampled images; loader: side of the synthetic crops.
    #[arg(long, default_value_t = 240)]
    pub size: usize,
    /// train: which stage's steps.
    #[arg(long, value_enum, default_value_t = fml::bench::BenchStage::Pretrain)]
    pub stage: fml::bench::BenchStage,
    /// train: timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// train: untimed warm-up steps before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// loader: a dataset file (.fmlds) [default: a synthetic one in a temporary folder].
    #[arg(long, value_name = "DATASET")]
    pub data: Option<PathBuf>,
}

/// `fml reconstruct INPUT... -o OUT`.
#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// Images, folders (searched recursively) or .txt lists (one image path per line, relative to
    /// the list). An image's sibling x.pts / x.land, if present, gives the crop.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// One image: the mesh file (.obj or .ply). Several inputs, a folder or a list: a directory
    /// receiving NAME.obj (+ NAME.json, NAME.overlay.png) per image.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Trained run (directory or checkpoint file) [default: the built-in model, $FML_DEFAULT_MODEL].
    #[arg(long, value_name = "RUN")]
    pub checkpoint: Option<PathBuf>,
    /// Model level to output [default: final if the checkpoint has correctives, else base].
    #[arg(long, value_enum)]
    pub level: Option<fml::infer::Level>,
    /// The crop as x,y,w,h in source pixels (made square about its centre); for every image.
    #[arg(long, value_name = "X,Y,W,H", value_parser = parse_bbox, conflicts_with_all = ["landmarks", "whole"])]
    pub bbox: Option<[f32; 4]>,
    /// Landmark file (.pts / .land) of the one input image: the crop `fml prepare` makes.
    #[arg(long, value_name = "FILE", conflicts_with = "whole")]
    pub landmarks: Option<PathBuf>,
    /// Take every image as a ready face crop (ignore sibling landmark files).
    #[arg(long)]
    pub whole: bool,
    /// Crop side as a multiple of the landmark box (as in `fml prepare`).
    #[arg(long, default_value_t = 1.3, value_parser = parse_positive::<f32>, allow_negative_numbers = true)]
    pub margin: f32,
    /// Vertex colours shaded by the predicted light instead of the reflectance.
    #[arg(long)]
    pub shaded: bool,
    /// Write every regressed parameter as JSON: to P.json for one image (default: beside the
    /// mesh), as NAME.json beside each mesh otherwise.
    #[arg(long, value_name = "P.json", num_args = 0..=1)]
    pub params: Option<Option<PathBuf>>,
    /// Draw the reconstruction over the input image: to O.png for one image (default: beside the
    /// mesh as NAME.overlay.png), as NAME.overlay.png beside each mesh otherwise.
    #[arg(long, value_name = "O.png", num_args = 0..=1)]
    pub overlay: Option<Option<PathBuf>>,
    /// Opacity of the reconstruction in the overlay (0..=1).
    #[arg(long, default_value_t = 0.6, value_parser = parse_unit, allow_negative_numbers = true)]
    pub overlay_alpha: f32,
    /// Images per network batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Let f32 matrix products on CUDA use TF32 tensor cores: faster, at an accuracy cost not
    /// measured for fml. No effect on the CPU.
    #[arg(long)]
    pub tf32: bool,
    /// Frame of the mesh vertices: model (the unposed face) or camera (R v + t).
    #[arg(long, value_enum, default_value_t = fml::infer::Frame::Model)]
    pub frame: fml::infer::Frame,
    /// Mesh format when writing into a directory.
    #[arg(long, value_enum, default_value_t = fml::infer::MeshFormat::Obj)]
    pub mesh_format: fml::infer::MeshFormat,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub land_map: LandMapArg,
}

/// A number in [0, 1].
fn parse_unit(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a number in [0, 1]")),
    }
}

/// A number in [0, 1) (a fraction that must leave something over).
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a number in [0, 1)")),
    }
}

/// A finite number > 0 (a size, scale or duration). The options that take one accept a leading
/// `-` (`allow_negative_numbers`) so that "-5" is reported as a negative value, not as an
/// unknown option.
fn parse_positive<T: std::str::FromStr + Into<f64> + Copy>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(x) if x.into().is_finite() && x.into() > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a finite positive number")),
    }
}

/// A finite number >= 0.
fn parse_nonneg<T: std::str::FromStr + Into<f64> + Copy>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(x) if x.into().is_finite() && x.into() >= 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a finite number >= 0")),
    }
}

fn parse_bbox(s: &str) -> Result<[f32; 4], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|_| format!("{x:?} is not a number (expected x,y,w,h)")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [x, y, w, h] if v.iter().all(|a| a.is_finite()) && w > 0.0 && h > 0.0 => Ok([x, y, w, h]),
        [_, _, _, _] => Err("need finite x,y and positive w,h".into()),
        _ => Err(format!("{} numbers given, expected 4: x,y,w,h", v.len())),
    }
}

impl ReconstructArgs {
    fn request(&self) -> fml::infer::Request {
        use fml::infer::{CropChoice, Extra};
        let extra = |x: &Option<Option<PathBuf>>| match x {
            None => Extra::Off,
            Some(None) => Extra::Beside,
            Some(Some(p)) => Extra::At(p.clone()),
        };
        let crop = match (&self.bbox, &self.landmarks, self.whole) {
            (Some(b), _, _) => CropChoice::BBox(*b),
            (_, Some(l), _) => CropChoice::Landmarks(l.clone()),
            (_, _, true) => CropChoice::Whole,
            _ => CropChoice::Auto,
        };
        fml::infer::Request {
            inputs: self.inputs.clone(),
            output: self.output.clone(),
            params: extra(&self.params),
            overlay: extra(&self.overlay),
            mesh_format: self.mesh_format,
            crop,
        }
    }
}

/// `fml export RUN -o DIR`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run directory or its checkpoint file.
    pub run: PathBuf,
    /// Output directory (config.toml + checkpoint.safetensors, and the face model file if any).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
}

/// `fml demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(short, long, default_value = "out/demo")]
    pub output: PathBuf,
    /// A trained run to use instead of the built-in default network.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Seed of the synthetic faces.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Synthetic faces to reconstruct and measure (the outputs are written for the first).
    #[arg(long, default_value_t = 16)]
    pub faces: usize,
}

fn run_demo(a: DemoArgs) -> anyhow::Result<()> {
    let r = fml::demo::run_demo(&a.output, a.checkpoint.as_deref(), a.seed, a.faces)?;
    outln!(
        "{}
",
        r.model_summary
    );
    outln!("input (synthetic, with ground truth): {} (first of {})", r.image.display(), r.faces);
    outln!("network:                              {}", r.run.display());
    outln!("reconstruction:                       {}", r.mesh.display());
    outln!("overlay:                              {}", r.overlay.display());
    outln!("parameters:                           {}", r.params.display());
    outln!("\ngeometric error against the ground truth after similarity alignment, mean of {} faces:", r.faces);
    let [vb, vf, vm] = r.vertex_error_mm;
    outln!("               point-to-surface   per vertex (same topology)");
    outln!("  mean face    {:>8.2} mm        {vm:>8.2} mm", r.error_mean_face_mm);
    outln!("  base level   {:>8.2} mm        {vb:>8.2} mm", r.error_base_mm);
    if let Some(f) = r.error_final_mm {
        outln!("  final level  {f:>8.2} mm        {vf:>8.2} mm");
    }
    Ok(())
}

/// Options shared by `fml train` and `fml finetune`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run configuration (TOML), e.g. configs/base.toml.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Run directory for the effective config, log.jsonl and checkpoint
    /// [default: runs/<config name>].
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override train.steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override data.dataset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Override train.device (cpu, cuda, auto).
    #[arg(long)]
    pub device: Option<String>,
    /// Set train.tf32: f32 matrix products on CUDA in TF32 (faster, accuracy cost not measured
    /// for fml; no effect on the CPU).
    #[arg(long)]
    pub tf32: bool,
    /// Stop (with a checkpoint) after this many steps in all, to continue later with --resume.
    #[arg(long, value_name = "STEP", value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_at: Option<u64>,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `fml train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// `fml finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The pretraining run (its directory or checkpoint file). Not needed with --resume: the run
    /// continues from its own checkpoint (which records the run it started from) and a value
    /// given is not read.
    #[arg(long, required_unless_present = "resume")]
    pub from: Option<PathBuf>,
}

impl RunArgs {
    fn options(&self, stage: fml::train::Stage) -> anyhow::Result<fml::train::TrainOptions> {
        let mut config = fml::config::Config::load(&self.config)?;
        if let Some(s) = self.steps {
            config.train.steps = s;
        }
        if let Some(d) = &self.data {
            config.data.dataset = d.clone();
        }
        if let Some(d) = &self.device {
            config.train.device = d.clone();
        }
        if self.tf32 {
            config.train.tf32 = true;
        }
        let out = match &self.out {
            Some(o) => o.clone(),
            None => {
                let stem =
                    self.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
                PathBuf::from("runs").join(stem)
            }
        };
        Ok(fml::train::TrainOptions {
            config,
            stage,
            out,
            resume: self.resume,
            progress: !self.quiet,
            stop_at: self.stop_at,
        })
    }
}

fn run_training(opts: fml::train::TrainOptions) -> anyhow::Result<()> {
    fml::train::interrupt::install_signal_handlers();
    let r = fml::train::train(&opts)?;
    if r.interrupted {
        // An error exit (the run did not finish), after the checkpoint is safely written.
        anyhow::bail!(
            "interrupted at step {} of {}; checkpoint written to {}: continue with --resume",
            r.step,
            opts.config.train.steps,
            r.out.display()
        );
    }
    if r.last.is_empty() {
        outln!(
            "{} run {} is already at step {} (target {}: train.steps, or --stop-at): nothing to train",
            opts.stage_name(),
            r.out.display(),
            r.step,
            opts.stop_at.map_or(opts.config.train.steps, |s| s.min(opts.config.train.steps))
        );
        return Ok(());
    }
    let fmt = |v: &[(String, f64)]| v.iter().map(|(k, x)| format!("{k} {x:.5}")).collect::<Vec<_>>().join(", ");
    outln!("{} at step {}: {}", opts.stage_name(), r.step, fmt(&r.last));
    if let Some(v) = &r.validation {
        outln!("validation: {}", fmt(v));
    }
    outln!("{:.1} images/s; run directory {}", r.images_per_sec, r.out.display());
    Ok(())
}

/// File layout of `fml synth`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutArg {
    /// DIR/{i:06}.{png,pts,obj,json}, one identity per image.
    Flat,
    /// DIR/Tester_{k}/TrainingPose/pose_{j}.{png,pts,obj,json}, identities shared by poses.
    Facewarehouse,
}

/// Options of `fml synth`. Unset options keep the value of `--config` or the default.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Number of images (FaceWarehouse layout: or give --testers).
    #[arg(long)]
    pub count: Option<usize>,
    /// Random seed; the same seed writes the same bytes.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// World model (.safetensors); default: the built-in demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Image width and height in pixels [default: 240].
    #[arg(long)]
    pub size: Option<usize>,
    /// File layout [default: flat].
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// FaceWarehouse layout: number of testers (count = testers x poses).
    #[arg(long)]
    pub testers: Option<usize>,
    /// FaceWarehouse layout: poses per tester [default: 20].
    #[arg(long)]
    pub poses: Option<usize>,
    /// Scale of the expression prior's standard deviations [default: 0.6].
    #[arg(long, value_parser = parse_nonneg::<f32>, allow_negative_numbers = true)]
    pub expr_scale: Option<f32>,
    /// Largest head yaw in degrees [default: 40].
    #[arg(long, value_parser = parse_nonneg::<f32>, allow_negative_numbers = true)]
    pub max_yaw: Option<f32>,
    /// Settings file (TOML, any subset of the synth settings recorded in synth.json's "config").
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not show the progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

impl SynthArgs {
    /// The generator settings: the settings file (or defaults), then these options.
    pub fn to_config(&self) -> anyhow::Result<fml::synth::SynthConfig> {
        use fml::synth::{Layout, SynthConfig};
        let mut cfg = match &self.config {
            Some(path) => SynthConfig::load_toml(path)?,
            None => SynthConfig::default(),
        };
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = &self.model {
            cfg.model = Some(v.clone());
        }
        if let Some(v) = self.size {
            cfg.size = v;
        }
        if let Some(v) = self.layout {
            cfg.layout = match v {
                LayoutArg::Flat => Layout::Flat,
                LayoutArg::Facewarehouse => Layout::FaceWarehouse,
            };
        }
        if let Some(v) = self.poses {
            cfg.poses_per_tester = v;
        }
        if let Some(v) = self.expr_scale {
            cfg.expr_scale = v;
        }
        if let Some(v) = self.max_yaw {
            cfg.yaw_deg = v;
        }
        if self.testers.is_some() && cfg.layout != Layout::FaceWarehouse {
            anyhow::bail!("--testers needs --layout facewarehouse");
        }
        match (self.count, self.testers) {
            (Some(c), Some(t)) if c != t * cfg.poses_per_tester => anyhow::bail!(
                "--count {c} disagrees with --testers {t} x {} poses; give one of them",
                cfg.poses_per_tester
            ),
            (Some(c), _) => cfg.count = c,
            (None, Some(t)) => cfg.count = t * cfg.poses_per_tester,
            (None, None) if self.config.is_some() => {}
            (None, None) => anyhow::bail!("give --count (or --testers with --layout facewarehouse)"),
        }
        cfg.progress = !self.quiet;
        Ok(cfg)
    }
}

/// `fml prepare INPUT... -o DATASET`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Image folders (searched recursively; `x.png` needs a sibling `x.pts` or `x.land`),
    /// single images, or manifests (.json / .csv).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output dataset file (conventionally .fmlds); written atomically.
    #[arg(short, long, value_name = "DATASET")]
    pub output: PathBuf,
    /// Side of the square crops in pixels.
    #[arg(long, default_value_t = 240)]
    pub size: u32,
    /// Fraction of faces put in the validation split.
    #[arg(long, default_value_t = 0.02, value_parser = parse_fraction, allow_negative_numbers = true)]
    pub val_fraction: f64,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip faces whose landmark box is smaller than this (larger side, source pixels).
    #[arg(long, value_name = "PIXELS", default_value_t = 40.0, value_parser = parse_nonneg::<f32>, allow_negative_numbers = true)]
    pub min_face: f32,
    /// Crop side as a multiple of the landmark box's larger side.
    #[arg(long, default_value_t = 1.3, value_parser = parse_positive::<f32>, allow_negative_numbers = true)]
    pub margin: f32,
    /// Fill for crop pixels outside the image.
    #[arg(long, value_enum, default_value_t = fml::data::crop::Pad::Edge)]
    pub pad: fml::data::crop::Pad,
    /// Skip faces whose mean landmark confidence is below this.
    #[arg(long, default_value_t = 0.0, value_parser = parse_unit, allow_negative_numbers = true)]
    pub min_confidence: f32,
    /// How far (fraction of the face size) a landmark may lie outside the image.
    #[arg(long, default_value_t = 0.05, value_parser = parse_nonneg::<f32>, allow_negative_numbers = true)]
    pub outside_tolerance: f32,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub land_map: LandMapArg,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Write the built-in procedural demo model (not a real face).
    Demo {
        /// Output model file (.safetensors).
        #[arg(short, long, default_value = "demo_model.safetensors")]
        output: PathBuf,
        /// Also write the mean face (with mean reflectance) as a mesh (.obj or .ply).
        #[arg(long)]
        mesh: Option<PathBuf>,
        #[command(flatten)]
        truncate: Truncate,
    },
    /// Import a face model (ICT-FaceKit folder, Basel Face Model .mat, native) as a native model.
    Import(ImportArgs),
    /// Print a model's summary: vertices, triangles, modes, units, landmarks, license.
    Inspect {
        /// Model file (.safetensors).
        model: PathBuf,
    },
}

/// Source formats of `fml model import`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FormatArg {
    /// ICT-FaceKit `FaceXModel/` folder (OBJ files, cm).
    Ict,
    /// Deep3DFaceRecon's `BFM_model_front.mat` (decimetres).
    BfmFront,
    /// Basel Face Model 2009 `01_MorphableModel.mat` (micrometres; needs --landmarks or --landmarks-from).
    Bfm2009,
    /// A native .safetensors model (re-save, truncate, new landmarks).
    Native,
}

/// Origin placement choices of `fml model import`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OriginArg {
    /// Keep the source's origin (default for ict and native).
    Keep,
    /// Mean of the vertices (default for the BFM formats).
    Centroid,
    /// Midpoint of the two eye centres.
    Eyes,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Source format.
    #[arg(long, value_enum)]
    pub format: FormatArg,
    /// Input: the FaceXModel/ folder (ict) or the file (.mat, .safetensors).
    pub input: PathBuf,
    /// Output model file (.safetensors).
    #[arg(short, long)]
    pub output: PathBuf,
    /// 68 iBUG landmark vertex indices (whitespace/comma separated or a JSON list), 0-based.
    #[arg(long, value_name = "FILE")]
    pub landmarks: Option<PathBuf>,
    /// The --landmarks file counts vertices from 1.
    #[arg(long)]
    pub landmarks_one_based: bool,
    /// Copy landmarks and contour candidates from a native model with the same vertex numbering.
    #[arg(long, value_name = "MODEL")]
    pub landmarks_from: Option<PathBuf>,
    /// ict: keep only vertices 0..K (9409 is ICT's face region) and the triangles inside them.
    #[arg(long, value_name = "K")]
    pub vertices: Option<usize>,
    /// ict: read only the first K identity OBJs.
    #[arg(long, value_name = "K")]
    pub identities: Option<usize>,
    /// Factor from source units to mm (defaults: ict 10, bfm-front 100, bfm2009 0.001).
    #[arg(long, value_name = "FACTOR", value_parser = parse_positive::<f64>, allow_negative_numbers = true)]
    pub scale: Option<f64>,
    /// Where to put the origin (default: keep for ict/native, centroid for BFM).
    #[arg(long, value_enum)]
    pub origin: Option<OriginArg>,
    /// Derived contour candidates: half-width (mm) of the band around the jaw line.
    #[arg(long, value_name = "MM", default_value_t = ContourOptions::default().band_mm, value_parser = parse_nonneg::<f32>, allow_negative_numbers = true)]
    pub contour_band: f32,
    /// Derived contour candidates: how far (mm) behind the jaw line they may lie.
    #[arg(long, value_name = "MM", default_value_t = ContourOptions::default().depth_mm, value_parser = parse_nonneg::<f32>, allow_negative_numbers = true)]
    pub contour_depth: f32,
    /// Restrict the face region (photometric term, evaluation) to vertices 0..K.
    #[arg(long, value_name = "K")]
    pub face_vertices: Option<usize>,
    /// Model name (metadata).
    #[arg(long)]
    pub name: Option<String>,
    /// License text (metadata).
    #[arg(long)]
    pub license: Option<String>,
    /// Also write the mean face (with mean reflectance) as a mesh (.obj or .ply).
    #[arg(long)]
    pub mesh: Option<PathBuf>,
    #[command(flatten)]
    pub truncate: Truncate,
}

impl ImportArgs {
    fn options(&self) -> anyhow::Result<ImportOptions> {
        for (name, v) in [("--contour-band", self.contour_band), ("--contour-depth", self.contour_depth)] {
            if !(v.is_finite() && v >= 0.0) {
                anyhow::bail!("{name} {v}: must be a non-negative number of mm");
            }
        }
        Ok(ImportOptions {
            landmarks: self.landmarks.clone(),
            landmarks_one_based: self.landmarks_one_based,
            landmarks_from: self.landmarks_from.clone(),
            vertices: self.vertices,
            identities: self.identities,
            scale: self.scale,
            origin: self.origin.map(|o| match o {
                OriginArg::Keep => Origin::Keep,
                OriginArg::Centroid => Origin::Centroid,
                OriginArg::Eyes => Origin::Eyes,
            }),
            contour: ContourOptions { band_mm: self.contour_band, depth_mm: self.contour_depth },
            face_vertices: self.face_vertices,
            name: self.name.clone(),
            license: self.license.clone(),
        })
    }

    fn format(&self) -> ImportFormat {
        match self.format {
            FormatArg::Ict => ImportFormat::Ict,
            FormatArg::BfmFront => ImportFormat::BfmFront,
            FormatArg::Bfm2009 => ImportFormat::Bfm2009,
            FormatArg::Native => ImportFormat::Native,
        }
    }
}

/// Keep only the first K modes of each kind, so a model can play a limited base level.
#[derive(Args, Debug, Clone, Default)]
pub struct Truncate {
    /// Keep the first K identity modes.
    #[arg(long, value_name = "K")]
    pub shape_modes: Option<usize>,
    /// Keep the first K expression modes.
    #[arg(long, value_name = "K")]
    pub expr_modes: Option<usize>,
    /// Keep the first K reflectance modes.
    #[arg(long, value_name = "K")]
    pub albedo_modes: Option<usize>,
}

impl Truncate {
    fn apply(&self, model: &mut FaceModel) -> fml::Result<()> {
        if self.shape_modes.is_some() || self.expr_modes.is_some() || self.albedo_modes.is_some() {
            model.truncate(self.shape_modes, self.expr_modes, self.albedo_modes)?;
        }
        Ok(())
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => run_demo(a),
        Command::Model(cmd) => run_model(cmd),
        Command::Synth(args) => run_synth(args),
        Command::Prepare(args) => run_prepare(args),
        Command::Train(a) => run_training(a.run.options(fml::train::Stage::Pretrain)?),
        // With --resume `from` is never read (the trainer takes the start from the run's checkpoint).
        Command::Finetune(a) => {
            run_training(a.run.options(fml::train::Stage::Finetune { from: a.from.clone().unwrap_or_default() })?)
        }
        Command::Eval(a) => run_eval(a),
        Command::Bench(a) => run_bench(a),
        Command::Reconstruct(a) => run_reconstruct(a),
        Command::Export(a) => {
            let ckpt = fml::infer::export(&a.run, &a.output)?;
            outln!("wrote {} (weights only) and its config.toml", ckpt.display());
            Ok(())
        }
    }
}

/// Apply `--tf32` for a command running on `device`; returns whether TF32 is in effect.
fn apply_tf32(device: &candle_core::Device, requested: bool) -> bool {
    let active = fml::kernel::set_tf32(device, requested);
    if requested && !active {
        errln!("{}", fml::kernel::TF32_CPU_NOTE);
    }
    active
}

fn run_reconstruct(a: ReconstructArgs) -> anyhow::Result<()> {
    a.land_map.apply()?;
    use fml::infer::{Extra, OverlayConfig, ReconstructOptions, Reconstructor};
    let req = a.request();
    let plan = fml::infer::batch::plan(&req)?;
    if plan.single
        && plan.items.is_empty()
        && let Some(f) = plan.failures.first()
    {
        anyhow::bail!("{}: {}", f.input, f.error);
    }
    // Without landmarks or a box the whole image is taken as the face crop: right for ready
    // crops, wrong for a photograph, so say so (--whole asks for it and silences this).
    let whole = plan.items.iter().filter(|i| i.input.crop == fml::infer::reconstruct::CropSpec::Whole).count();
    if whole > 0 && !a.whole && !a.quiet {
        errln!(
            "note: {whole} of {} image(s) without a landmark file (x.pts / x.land) or --bbox: used whole as \
             the face crop (--whole to say that is intended)",
            plan.items.len()
        );
    }
    // The network before the outputs: a bad checkpoint fails before anything is created.
    let device = fml::train::select_device(&a.device)?;
    apply_tf32(&device, a.tf32);
    let trained = fml::infer::load_run(&fml::infer::resolve_run(a.checkpoint.as_deref())?, &device)?;
    let opts = ReconstructOptions {
        level: a.level,
        shaded: a.shaded,
        frame: a.frame,
        overlay: (req.overlay != Extra::Off).then(|| OverlayConfig { alpha: a.overlay_alpha, ..Default::default() }),
        crop: fml::data::crop::CropConfig { margin: a.margin, ..Default::default() },
    };
    let rec = Reconstructor::new(trained, opts)?;
    // The output paths before the images: one that cannot be written fails now, not per image
    // after the network has run. Folders this creates are removed again (while empty) when the
    // run writes nothing, on every way out.
    let mut created = CreatedDirs::default();
    if plan.single {
        for (_, p) in plan.items.iter().flat_map(|item| item.outputs()) {
            created.note(p.parent());
            fml::io::probe_writable(p)?;
        }
    } else {
        created.note(Some(&req.output));
        fml::io::create_dir(&req.output)?;
        // A hidden name: folder scans skip hidden entries, so no mirrored output takes it.
        fml::io::probe_writable(&req.output.join(".fml-probe"))?;
    }
    let single = plan.single.then(|| plan.items.first().cloned()).flatten();
    let report = fml::infer::batch::run(&rec, plan, a.batch as usize, !a.quiet);
    created.keep = report.written > 0;
    if let Some(item) = single {
        if let Some(f) = report.failures.first() {
            anyhow::bail!("{}", f.error);
        }
        for (_, p) in item.outputs() {
            outln!("wrote {}", p.display());
        }
        return Ok(());
    }
    if report.failures.is_empty() {
        outln!("{report}");
        outln!("outputs in {}", req.output.display());
        Ok(())
    } else {
        errln!("{report}");
        anyhow::bail!("{} of {} inputs failed", report.failures.len(), report.total)
    }
}

/// The folders a command created for its outputs (the topmost missing one of each path), removed
/// again on drop unless `keep`: a run that wrote nothing leaves no empty folders behind. Only
/// empty folders are removed, so nothing anyone wrote meanwhile is lost.
#[derive(Default)]
struct CreatedDirs {
    dirs: Vec<PathBuf>,
    keep: bool,
}

impl CreatedDirs {
    /// Remember the topmost folder of `dir` that does not exist yet (about to be created).
    fn note(&mut self, dir: Option<&Path>) {
        let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) else { return };
        let top = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last();
        if let Some(t) = top.filter(|t| !self.dirs.iter().any(|d| t.starts_with(d))) {
            self.dirs.push(t.to_path_buf());
        }
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        fn remove_empty(d: &Path) {
            if let Ok(entries) = std::fs::read_dir(d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_empty(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d); // fails, as it should, unless empty
        }
        if !self.keep {
            self.dirs.iter().for_each(|d| remove_empty(d));
        }
    }
}

fn run_synth(args: SynthArgs) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let s = fml::synth::generate(&cfg, &args.output)?;
    outln!(
        "wrote {} images of {} identities from model {} to {} (expressions: {:?}, {:.1} of 68 landmarks visible on average)",
        s.images,
        s.testers,
        s.model,
        s.out_dir.display(),
        s.expr_sampling,
        s.mean_visible_landmarks
    );
    Ok(())
}

fn run_prepare(a: PrepareArgs) -> anyhow::Result<()> {
    a.land_map.apply()?;
    use fml::data::crop::CropConfig;
    let cfg = fml::data::PrepareConfig {
        crop: CropConfig { size: a.size, margin: a.margin, pad: a.pad, ..CropConfig::default() },
        val_fraction: a.val_fraction,
        seed: a.seed,
        min_face: a.min_face,
        min_confidence: a.min_confidence,
        outside_tolerance: a.outside_tolerance,
        land_y_up: a.land_map.land_y_up,
        progress: !a.quiet,
        ..fml::data::PrepareConfig::default()
    };
    let report = fml::data::prepare(&a.inputs, &a.output, &cfg)?;
    outln!("{report}");
    outln!("wrote {}", a.output.display());
    Ok(())
}

fn run_model(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Demo { output, mesh, truncate } => {
            if let Some(m) = &mesh {
                fml::io::mesh::check_save_path(m)?; // before the model work
            }
            let mut model = fml::face_model::demo::demo_model();
            truncate.apply(&mut model)?;
            fml::face_model::format::save_with_mesh(&model, &output, mesh.as_deref())?;
            outln!("{}", model.summary());
            outln!("wrote {}", output.display());
            if let Some(mesh) = mesh {
                outln!("wrote {}", mesh.display());
            }
        }
        ModelCommand::Import(args) => {
            if let Some(m) = &args.mesh {
                fml::io::mesh::check_save_path(m)?; // before the model work
            }
            // The model and mesh must not replace a file they are made from (an in-place
            // `--format native --shape-modes 20` would lose the source's other modes).
            let sources: Vec<&Path> =
                [Some(args.input.as_path()), args.landmarks.as_deref(), args.landmarks_from.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
            fml::io::refuse_overwrite("output", &args.output, sources.iter().copied())?;
            if let Some(m) = &args.mesh {
                fml::io::refuse_overwrite("mesh", m, sources.iter().copied().chain([args.output.as_path()]))?;
            }
            let opts = args.options()?;
            let mut model = fml::face_model::import::import_model(args.format(), &args.input, &opts)?;
            args.truncate.apply(&mut model)?;
            fml::face_model::format::save_with_mesh(&model, &args.output, args.mesh.as_deref())?;
            outln!("{}", model.summary());
            outln!("wrote {}", args.output.display());
            if let Some(mesh) = &args.mesh {
                outln!("wrote {}", mesh.display());
            }
        }
        ModelCommand::Inspect { model } => {
            let m = FaceModel::load(&model)?;
            outln!("{}", m.summary());
        }
    }
    Ok(())
}

fn run_eval(a: EvalArgs) -> anyhow::Result<()> {
    a.land_map.apply()?;
    // --json is checked before the evaluation (minutes to hours), not when it is written after it.
    probe_json(a.json.as_deref())?;
    use fml::infer::eval::{EvalConfig, evaluate_facewarehouse};
    let device = fml::train::select_device(&a.device)?;
    apply_tf32(&device, a.tf32);
    let run = fml::infer::resolve_run(a.checkpoint.as_deref())?;
    let trained = fml::infer::load_run(&run, &device)?;
    let cfg = EvalConfig {
        radius_mm: a.radius,
        gt_scale: a.gt_scale,
        batch: a.batch,
        progress: !a.quiet,
        icp: fml::eval::IcpConfig { max_iterations: a.icp_iterations, ..Default::default() },
        ..EvalConfig::default()
    };
    use anyhow::Context as _;
    let base_from = match &a.base_checkpoint {
        Some(b) => {
            Some(fml::infer::load_run(b, &device).with_context(|| format!("--base-checkpoint {}", b.display()))?)
        }
        None => None,
    };
    let report = evaluate_facewarehouse(&a.facewarehouse, &trained, base_from.as_ref(), &cfg)?;
    outln!(
        "FaceWarehouse evaluation of {} on {}: {} meshes evaluated, {} skipped, face region {} mm around the nose tip",
        run.display(),
        a.facewarehouse.display(),
        report.meshes.len(),
        report.skipped.len(),
        cfg.radius_mm
    );
    out!("{}", report.table());
    // Which files were skipped and why (all of them are in --json too).
    const SHOWN: usize = 20;
    for s in report.skipped.iter().take(SHOWN) {
        errln!("skipped {}: {}", s.image.display(), s.reason);
    }
    if report.skipped.len() > SHOWN {
        errln!("... and {} more skipped (see --json)", report.skipped.len() - SHOWN);
    }
    if let Some(path) = &a.json {
        report.save_json(path)?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

/// A bench JSON object with the precision it ran at (`"tf32": bool`), so that results from runs
/// with and without `--tf32` cannot be confused.
fn with_tf32(mut v: serde_json::Value, tf32: bool) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("tf32".into(), tf32.into());
    }
    v
}

/// A `--json` output path checked before the work whose results it will hold.
fn probe_json(json: Option<&Path>) -> anyhow::Result<()> {
    if let Some(j) = json {
        fml::io::probe_writable(j).map_err(|e| anyhow::anyhow!(e).context("--json"))?;
    }
    Ok(())
}

fn run_bench(a: BenchArgs) -> anyhow::Result<()> {
    use fml::bench;
    // --json before the measurements, not after them.
    probe_json(a.json.as_deref())?;
    let device = fml::train::select_device(&a.device)?;
    let tf32 = apply_tf32(&device, a.tf32);
    outln!(
        "device: {}{}, {} CPU threads (rayon)",
        bench::device_name(&device),
        if tf32 { " (TF32 matmuls)" } else { "" },
        rayon::current_num_threads()
    );
    let mut json = serde_json::Map::new();
    let all = a.what == BenchWhat::All;
    let config_label = |p: &PathBuf| p.display().to_string();
    if matches!(a.what, BenchWhat::Infer | BenchWhat::All) {
        let (net, label) = match (&a.checkpoint, &a.config) {
            (Some(_), Some(_)) => anyhow::bail!("bench infer: give --checkpoint or --config, not both"),
            (Some(run), None) => (fml::infer::load_run(run, &device)?.net, "checkpoint".to_string()),
            (None, Some(c)) => {
                let cfg = fml::config::Config::load(c)?;
                (bench::untrained_net(&cfg, cfg.train.correctives, &device)?, config_label(c))
            }
            (None, None) if fml::infer::default_run().exists() => {
                (fml::infer::load_run(&fml::infer::default_run(), &device)?.net, "checkpoint".to_string())
            }
            (None, None) => {
                outln!("no --checkpoint or --config and no default model: timing the built-in configuration");
                (bench::untrained_net(&fml::config::Config::default(), false, &device)?, "default".to_string())
            }
        };
        if a.runs == 0 || !(a.max_seconds > 0.0) {
            anyhow::bail!(
                "bench infer: --runs and --max-seconds must be positive (got {} / {})",
                a.runs,
                a.max_seconds
            );
        }
        let mut cfg =
            bench::InferBenchConfig { latency_runs: a.runs, max_seconds: a.max_seconds, ..Default::default() };
        if let Some(b) = &a.batches {
            cfg.batches = b.clone();
        }
        let r = bench::bench_infer(&net, &label, &cfg)?;
        out!("{}", r.table());
        json.insert("infer".into(), with_tf32(serde_json::to_value(&r)?, tf32));
    }
    if matches!(a.what, BenchWhat::Render | BenchWhat::All) {
        let cfg = bench::RenderBenchConfig {
            batch: a.batch.unwrap_or(64),
            vertices: a.vertices,
            image_size: a.size,
            ..Default::default()
        };
        let r = bench::bench_render(&device, &cfg)?;
        outln!("image formation layer, {}x{} images, {} triangles per mesh:", r.image_size, r.image_size, r.triangles);
        outln!("{}", r.line());
        outln!(
            "memory-traffic floor: {:.1} MB forward, {:.1} MB forward + backward (floor time = bytes / \
             bandwidth, e.g. {:.3} ms at an H100 SXM's 3350 GB/s); achieved {:.2} GB/s",
            r.bytes_floor_fwd as f64 / 1e6,
            r.bytes_floor as f64 / 1e6,
            r.bytes_floor as f64 / 3350e9 * 1e3,
            r.gb_s
        );
        // The reference (candle ops) path on a small size beside the fast path on the same size.
        let small =
            bench::RenderBenchConfig { batch: cfg.batch.min(4), vertices: cfg.vertices.min(2000), ..cfg.clone() };
        outln!(
            "fast path vs the candle-ops reference (the test oracle) at a small size, {} meshes of {} vertices:",
            small.batch,
            small.vertices
        );
        for backend in [fml::render::Backend::Fast, fml::render::Backend::Reference] {
            let r = bench::bench_render(&device, &bench::RenderBenchConfig { backend, ..small.clone() })?;
            outln!("{}", r.line());
        }
        json.insert("render".into(), with_tf32(serde_json::to_value(&r)?, tf32));
    }
    if matches!(a.what, BenchWhat::Train | BenchWhat::All) {
        let (mut cfg, label) = match &a.config {
            Some(c) => (fml::config::Config::load(c)?, config_label(c)),
            None => (fml::config::Config::default(), "default".to_string()),
        };
        cfg.train.device = a.device.clone();
        cfg.train.tf32 = tf32;
        let tb = bench::TrainBenchConfig { stage: a.stage, batch: a.batch, steps: a.steps, warmup: a.warmup };
        let r = bench::bench_train(&cfg, &label, &device, &tb)?;
        outln!("{}", r.line());
        json.insert("train".into(), with_tf32(serde_json::to_value(&r)?, tf32));
    }
    if matches!(a.what, BenchWhat::Loader | BenchWhat::All) {
        let r = bench::bench_loader(a.data.as_deref(), a.batch.unwrap_or(32), a.size, 512)?;
        outln!("{}", r.line());
        json.insert("loader".into(), with_tf32(serde_json::to_value(&r)?, tf32));
    }
    if let Some(path) = &a.json {
        let value = if all {
            serde_json::Value::Object(json)
        } else {
            json.into_iter().next().map(|(_, v)| v).unwrap_or(serde_json::Value::Null)
        };
        fml::io::write_atomic_bytes(path, serde_json::to_string_pretty(&value)?.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(args: &[&str]) -> String {
        Cli::try_parse_from(args).expect_err("must not parse").to_string()
    }

    #[test]
    fn finetune_needs_from_only_when_not_resuming() {
        let c = Cli::try_parse_from(["fml", "finetune", "--config", "c.toml", "--resume"]).unwrap();
        assert!(matches!(c.command, Command::Finetune(FinetuneArgs { from: None, .. })));
        let e = parse_err(&["fml", "finetune", "--config", "c.toml"]);
        assert!(e.contains("--from"), "{e}");
    }

    #[test]
    fn out_of_range_numbers_are_named_as_such() {
        for (args, want) in [
            (&["fml", "eval", "--facewarehouse", "fw", "--radius", "-5"][..], "\"-5\" is not a finite positive number"),
            (&["fml", "prepare", "x", "-o", "y", "--min-face", "-1"], "\"-1\" is not a finite number >= 0"),
            (&["fml", "prepare", "x", "-o", "y", "--outside-tolerance", "nan"], "is not a finite number >= 0"),
            (&["fml", "reconstruct", "a.png", "-o", "a.obj", "--margin", "1e40"], "not a finite positive number"),
            (&["fml", "prepare", "x", "-o", "y", "--val-fraction", "1"], "not a number in [0, 1)"),
            (&["fml", "reconstruct", "a.png", "-o", "a.obj", "--margin", "0"], "not a finite positive number"),
            (&["fml", "synth", "-o", "s", "--expr-scale", "-0.5"], "not a finite number >= 0"),
        ] {
            let e = parse_err(args);
            assert!(e.contains(want), "{args:?}: {e}");
        }
        // In range: accepted.
        Cli::try_parse_from(["fml", "prepare", "x", "-o", "y", "--min-face", "0", "--val-fraction", "0"]).unwrap();
    }
}
