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
    }
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
