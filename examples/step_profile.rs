//! Where the time of a training step goes (CPU): encoder forward / backward, the model + render +
//! loss forward / backward, the optimiser, and a forward breakdown of every loss term. Weights are
//! fresh and the data synthetic (`write_synthetic`), as in `fml bench train`.
//!
//! Usage: `step_profile CONFIG [pretrain|finetune] [BATCH] [STEPS]`, e.g.
//! `cargo run --release --example step_profile -- configs/tiny.toml finetune 8 30`.
//! Prints the median milliseconds of each phase over the steps after two warm-up steps.

use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer, VarMap};
use fml::loss::regularizers::{self, Edges, SkinPairs};
use fml::loss::{Objective, TrainBatch};
use fml::network::FaceNet;
use fml::render::RenderInput;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Phase timer: `lap(name)` records the time since the previous lap under `name`.
struct Laps {
    t: Instant,
    rows: Vec<(&'static str, Vec<f64>)>,
    record: bool,
}

impl Laps {
    fn lap(&mut self, name: &'static str) {
        let ms = self.t.elapsed().as_secs_f64() * 1e3;
        self.t = Instant::now();
        if !self.record {
            return;
        }
        match self.rows.iter_mut().find(|r| r.0 == name) {
            Some(r) => r.1.push(ms),
            None => self.rows.push((name, vec![ms])),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        anyhow::bail!("usage: step_profile CONFIG [pretrain|finetune] [BATCH] [STEPS]");
    }
    let mut cfg = fml::config::Config::load(&args[1])?;
    let finetune = match args.get(2).map(String::as_str) {
        None | Some("pretrain") => false,
        Some("finetune") => true,
        Some(s) => anyhow::bail!("stage {s:?}: pretrain or finetune"),
    };
    if let Some(b) = args.get(3) {
        cfg.train.batch = b.parse()?;
    }
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let dev = Device::Cpu;
    let model = fml::train::load_face_model(&cfg.model)?;
    let vm = VarMap::new();
    let net = FaceNet::new(&model, &cfg, finetune, cfg.train.backend, &vm, &dev)?;
    let obj = Objective::new(&net, &cfg.loss, cfg.train.seed)?;
    let edges = Edges::new(&model, &dev)?;
    let pairs = SkinPairs::new(&model, cfg.loss.glo_partners, cfg.train.seed, &dev)?;
    let mut opt = fml::train::adadelta::AdaDelta::for_varmap(&vm, &cfg.optim)?;

    let dir = tempfile_dir()?;
    let data = dir.join("synthetic.fmlds");
    let b = cfg.train.batch;
    fml::data::dataset::write_synthetic(&data, (2 * b * 10).div_ceil(9) + 10, cfg.encoder.input_size as u32, 1)?;
    let loader = fml::data::loader::Loader::new(
        &data,
        fml::data::loader::LoaderConfig {
            batch_size: b,
            shuffle: true,
            augment: cfg.augment.clone(),
            drop_last: true,
            split: Some(fml::data::dataset::Split::Train),
            ..Default::default()
        },
    )?;
    let mut batches = loader.iter_from(Default::default());
    let mut laps = Laps { t: Instant::now(), rows: Vec::new(), record: false };
    let warmup = 2;
    for i in 0..warmup + steps {
        let batch = batches.next().expect("loader")?;
        laps.record = i >= warmup;
        laps.t = Instant::now();
        let n = batch.len();
        let tb = TrainBatch::from_host(batch.images, batch.landmarks, batch.confidence, n, batch.size, &dev)?;
        laps.lap("upload");
        // One training step, split at the encoder output so the two halves of the backward
        // pass can be timed apart; the gradients are the same as one backward pass.
        let y = net.encoder.forward(&tb.images)?;
        laps.lap("encoder fwd");
        let yv = Var::from_tensor(&y.detach())?;
        let pred = net.decode(yv.as_tensor())?;
        laps.lap("model fwd");
        let terms = obj.compute(&net, &pred, &tb)?;
        laps.lap("render+loss fwd");
        terms.values()?;
        laps.lap("read loss");
        let g_loss = terms.total.backward()?;
        laps.lap("loss+render+model bwd");
        let gy = g_loss.get(yv.as_tensor()).expect("gradient at the encoder output");
        let g_enc = (&y * gy)?.sum_all()?.backward()?;
        laps.lap("encoder bwd");
        // Disjoint variable sets: two calls make one AdaDelta step.
        opt.step(&g_enc)?;
        if finetune {
            opt.step(&g_loss)?;
        }
        laps.lap("optimiser");
        drop((terms, g_loss, g_enc));
        laps.lap("drop graph");

        // Forward-only breakdown of the loss terms.
        let p = &pred.params;
        let lv = &pred.levels;
        let k = net.intrinsics();
        let render = |v: &Tensor, r: &Tensor| {
            net.formation.render(&RenderInput {
                vertices: v,
                reflectance: r,
                rotation: &p.rotation,
                translation: &p.translation,
                gamma: &p.gamma,
                image: &tb.images_hwc,
            })
        };
        laps.t = Instant::now();
        let base = render(&lv.base_geometry, &lv.base_reflectance)?;
        laps.lap("  fwd: render base");
        let _ = obj.sparse.loss(&base.camera_vertices, &tb.landmarks, &tb.confidence, &k)?;
        laps.lap("  fwd: sparse");
        let _ = net.formation.photometric(&base)?;
        laps.lap("  fwd: photo base");
        if let Some(goff) = &lv.geometry_offset {
            let (geometry, reflectance) = (lv.final_geometry()?, lv.final_reflectance()?);
            laps.lap("  fwd: final levels");
            let f = render(&geometry, &reflectance)?;
            laps.lap("  fwd: render final");
            let _ = net.formation.photometric(&f)?;
            laps.lap("  fwd: photo final");
            let _ = regularizers::smoothness(goff, &edges)?;
            laps.lap("  fwd: smo");
            let _ = regularizers::stabilisation(goff)?;
            laps.lap("  fwd: sta");
            let w = regularizers::chroma_weights(&f.sampled, &f.visible, &edges, cfg.loss.ref_beta)?;
            laps.lap("  fwd: chroma weights");
            let _ = regularizers::reflectance_sparsity(&reflectance, &w, &edges, cfg.loss.ref_p)?;
            laps.lap("  fwd: ref");
            let _ = regularizers::global_reflectance(&reflectance, &pairs)?;
            laps.lap("  fwd: glo");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{} {}, batch {b}, {} vertices, {steps} steps (median ms):",
        args[1],
        if finetune { "finetune" } else { "pretrain" },
        model.num_vertices()
    );
    let mut step_total = 0.0;
    for (name, v) in &mut laps.rows {
        let m = median(v);
        if !name.starts_with(' ') {
            step_total += m;
        }
        println!("{name:<24} {m:>9.2}");
    }
    println!("{:<24} {step_total:>9.2}", "step (sum)");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("fml-step-profile-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
