//! The oracle experiment of the README's note on the final level: put a known direction into the
//! learned geometry corrective basis, so that finetuning only has to learn the per-image
//! coefficients. Writes identity mode K of MODEL (times its prior SD, so one unit of the
//! coefficient is one SD of the mode) into row 0 of the geometry corrective basis of a finetuning
//! run's checkpoint, in the run's `correctives.scale` units; everything else (weights, optimiser
//! state, step, loader position) stays as it is. Make the checkpoint with `fml finetune ...
//! --stop-at 1`, run this, then continue with `fml finetune ... --resume` (with
//! `optim.lr_geometry = 0` in the config the row stays the mode).
//!
//! cargo run --release --example oracle_basis -- RUN MODEL.safetensors K

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use fml::face_model::multilevel::GEOMETRY_CORRECTIVES;
use std::path::PathBuf;

fn main() -> fml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(run), Some(model), Some(k)) =
        (args.get(1), args.get(2), args.get(3).and_then(|k| k.parse::<usize>().ok()))
    else {
        eprintln!("usage: oracle_basis RUN MODEL.safetensors K");
        std::process::exit(2);
    };
    let run = PathBuf::from(run);
    let cfg = fml::config::Config::load(run.join("config.toml"))?;
    let path = run.join(fml::checkpoint::FILE);
    let ckpt = fml::checkpoint::load(&path, &Device::Cpu)?;
    let m = fml::face_model::FaceModel::load(model)?;
    let mode = m.shape_mode(k).map_err(|e| fml::Error::invalid(format!("{model}: {e}")))?;
    let basis = ckpt.tensors.get(GEOMETRY_CORRECTIVES).ok_or_else(|| {
        fml::Error::invalid(format!("{}: no {GEOMETRY_CORRECTIVES} (not a finetuning run)", path.display()))
    })?;
    let (c, n3) = basis.dims2()?;
    if n3 != m.num_vertices() * 3 {
        return Err(fml::Error::invalid(format!("{model} has {} vertices, the run {}", m.num_vertices(), n3 / 3)));
    }
    let scale = cfg.correctives.scale[0];
    let row: Vec<f32> = mode.iter().map(|&x| x * m.shape_std[k] / scale).collect();
    let mut rows = basis.to_vec2::<f32>()?;
    rows[0] = row;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, t) in &ckpt.tensors {
            data.insert(name.clone(), Var::from_tensor(t)?);
        }
        data.insert(GEOMETRY_CORRECTIVES.to_string(), Var::from_tensor(&Tensor::new(rows, &Device::Cpu)?)?);
    }
    fml::checkpoint::save(&path, &varmap, &[], &ckpt.meta)?;
    println!("wrote identity mode {k} of {model} into row 0 of {c} geometry correctives of {}", path.display());
    Ok(())
}
