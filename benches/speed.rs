//! The `fml bench` measurements as a bench target: inference (the tiny config and the paper's
//! AlexNet at 240 px), the image formation layer with its memory-traffic floor, training steps
//! of both stages, and the data loader. Run with `cargo bench --bench speed` (add
//! `--features cuda` for the GPU); `FML_BENCH_DEVICE` = cpu | cuda | auto (default auto).
//! Prints tables only: nothing here asserts a speed.

use fml::bench::{self, BenchStage, InferBenchConfig, RenderBenchConfig, TrainBenchConfig};
use fml::config::Config;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let name = std::env::var("FML_BENCH_DEVICE").unwrap_or_else(|_| "auto".into());
    let device = fml::train::select_device(&name)?;
    let gpu = device.is_cuda();
    println!("device: {}, {} CPU threads (rayon)\n", bench::device_name(&device), rayon::current_num_threads());
    let tiny_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let tiny = Config::load(&tiny_path)?;
    let paper = Config::default();

    // Inference. On a CPU the full network's sweep stops early by the time limit.
    for (cfg, label) in [(&tiny, "configs/tiny.toml"), (&paper, "default (AlexNet, 240 px)")] {
        let net = bench::untrained_net(cfg, false, &device)?;
        let r = bench::bench_infer(&net, label, &InferBenchConfig::default())?;
        println!("{}", r.table());
    }

    // The image formation layer at the size on a GPU, a smaller batch on a CPU.
    let batch = if gpu { 64 } else { 8 };
    let cfg = RenderBenchConfig { batch, vertices: 30_000, ..Default::default() };
    let r = bench::bench_render(&device, &cfg)?;
    println!("image formation layer ({} triangles per mesh, {}x{} images):", r.triangles, r.image_size, r.image_size);
    println!("{}", r.line());
    let small = RenderBenchConfig { batch: 4, vertices: 2000, ..cfg };
    for backend in [fml::render::Backend::Fast, fml::render::Backend::Reference] {
        println!("{}", bench::bench_render(&device, &RenderBenchConfig { backend, ..small.clone() })?.line());
    }
    println!();

    // Training steps of both stages: the tiny config, and the paper's network at its batch of 5.
    for stage in [BenchStage::Pretrain, BenchStage::Finetune] {
        let tb = TrainBenchConfig { stage, ..Default::default() };
        println!("{}", bench::bench_train(&tiny, "configs/tiny.toml", &device, &tb)?.line());
        let tb = TrainBenchConfig { stage, steps: if gpu { 10 } else { 2 }, warmup: 1, batch: Some(5) };
        println!("{}", bench::bench_train(&paper, "default (AlexNet, 240 px)", &device, &tb)?.line());
    }
    println!();

    for batch in [5, 32] {
        println!("{}", bench::bench_loader(None, batch, 240, 512)?.line());
    }
    Ok(())
}
