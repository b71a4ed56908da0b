//! Scratch: time the phases of a training step.
use candle_core::Device;
use candle_nn::Optimizer;
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = fml::config::Config::load(&args[1]).unwrap();
    let dev = Device::Cpu;
    let model = fml::train::load_face_model(&cfg.model).unwrap();
    let vm = candle_nn::VarMap::new();
    let net = fml::network::FaceNet::new(&model, &cfg, false, fml::render::Backend::Fast, &vm, &dev).unwrap();
    let obj = fml::loss::Objective::new(&net, &cfg.loss, 1).unwrap();
    let loader = fml::data::loader::Loader::new(
        &cfg.data.dataset,
        fml::data::loader::LoaderConfig { batch_size: cfg.train.batch, ..Default::default() },
    )
    .unwrap();
    let vars: Vec<(String, candle_core::Var, f64)> =
        vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone(), 1.0)).collect();
    let mut opt = fml::train::adadelta::AdaDelta::with_groups(vars, 0.95, 1e-6).unwrap();
    let mut t = [0f64; 6];
    let n = 30;
    for (i, b) in loader.iter_from(Default::default()).take(n).enumerate() {
        let b = b.unwrap();
        let s0 = Instant::now();
        let bs = b.len();
        let tb = fml::loss::TrainBatch::from_host(b.images, b.landmarks, b.confidence, bs, b.size, &dev).unwrap();
        let s1 = Instant::now();
        let pred = net.predict(&tb.images).unwrap();
        let s2 = Instant::now();
        let terms = obj.compute(&net, &pred, &tb).unwrap();
        let s3 = Instant::now();
        let _ = terms.values().unwrap();
        let s4 = Instant::now();
        let g = terms.total.backward().unwrap();
        let s5 = Instant::now();
        opt.step(&g).unwrap();
        let s6 = Instant::now();
        if i >= 5 {
            for (k, (a, b)) in [(s0, s1), (s1, s2), (s2, s3), (s3, s4), (s4, s5), (s5, s6)].iter().enumerate() {
                t[k] += (*b - *a).as_secs_f64() * 1000.0 / (n - 5) as f64;
            }
        }
    }
    // Encoder alone.
    let x = candle_core::Tensor::rand(
        0f32,
        1f32,
        (cfg.train.batch, 3, cfg.encoder.input_size, cfg.encoder.input_size),
        &dev,
    )
    .unwrap();
    let s = Instant::now();
    for _ in 0..10 {
        let y = net.encoder.forward(&x).unwrap();
        let _ = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    }
    println!("encoder fwd+bwd {:.1} ms", s.elapsed().as_secs_f64() * 100.0);
    println!(
        "ms per step: batch {:.1} predict {:.1} loss {:.1} values {:.1} backward {:.1} optim {:.1}",
        t[0], t[1], t[2], t[3], t[4], t[5]
    );
}
