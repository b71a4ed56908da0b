//! Command-line interface: clap derive definitions and dispatch to the library.

use clap::{Args, Parser, Subcommand};
use fml::face_model::FaceModel;
use std::path::PathBuf;

/// fml: monocular 3D face reconstruction with a self-supervised multi-level face model.
#[derive(Parser, Debug)]
#[command(name = "fml", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Face models: generate the demo model, import, inspect.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Crop faces from images with landmarks and pack them into a training dataset file.
    Prepare(PrepareArgs),
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
    #[arg(long, default_value_t = 0.02)]
    pub val_fraction: f64,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip faces whose landmark box is smaller than this (larger side, source pixels).
    #[arg(long, value_name = "PIXELS", default_value_t = 40.0)]
    pub min_face: f32,
    /// Crop side as a multiple of the landmark box's larger side.
    #[arg(long, default_value_t = 1.3)]
    pub margin: f32,
    /// Fill for crop pixels outside the image.
    #[arg(long, value_enum, default_value_t = fml::data::crop::Pad::Edge)]
    pub pad: fml::data::crop::Pad,
    /// Skip faces whose mean landmark confidence is below this.
    #[arg(long, default_value_t = 0.0)]
    pub min_confidence: f32,
    /// How far (fraction of the face size) a landmark may lie outside the image.
    #[arg(long, default_value_t = 0.05)]
    pub outside_tolerance: f32,
    /// .land files measure y from the bottom edge of the image.
    #[arg(long)]
    pub land_y_up: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
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
    /// Print a model's summary: vertices, triangles, modes, units, landmarks, license.
    Inspect {
        /// Model file (.safetensors).
        model: PathBuf,
    },
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
        Command::Model(cmd) => run_model(cmd),
        Command::Prepare(args) => run_prepare(args),
    }
}

fn run_prepare(a: PrepareArgs) -> anyhow::Result<()> {
    use fml::data::crop::CropConfig;
    let cfg = fml::data::PrepareConfig {
        crop: CropConfig { size: a.size, margin: a.margin, pad: a.pad, ..CropConfig::default() },
        val_fraction: a.val_fraction,
        seed: a.seed,
        min_face: a.min_face,
        min_confidence: a.min_confidence,
        outside_tolerance: a.outside_tolerance,
        land_y_up: a.land_y_up,
        progress: !a.quiet,
        ..fml::data::PrepareConfig::default()
    };
    let report = fml::data::prepare(&a.inputs, &a.output, &cfg)?;
    println!("{report}");
    println!("wrote {}", a.output.display());
    Ok(())
}

fn run_model(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Demo { output, mesh, truncate } => {
            let mut model = fml::face_model::demo::demo_model();
            truncate.apply(&mut model)?;
            model.save(&output)?;
            println!("{}", model.summary());
            println!("wrote {}", output.display());
            if let Some(mesh) = mesh {
                model.mean_mesh().save(&mesh)?;
                println!("wrote {}", mesh.display());
            }
        }
        ModelCommand::Inspect { model } => {
            let m = FaceModel::load(&model)?;
            println!("{}", m.summary());
        }
    }
    Ok(())
}
