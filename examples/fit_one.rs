//! Scratch: analysis-by-synthesis of single images with the training losses (no encoder).
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fml::data::dataset::{Dataset, Split};
use fml::io::mesh::Mesh;
use std::path::PathBuf;

fn aligned_error(pred: &[[f32; 3]], gt: &[[f32; 3]], region: &[u32]) -> f64 {
    let p: Vec<[f64; 3]> = region.iter().map(|&i| pred[i as usize].map(|x| x as f64)).collect();
    let g: Vec<[f64; 3]> = region.iter().map(|&i| gt[i as usize].map(|x| x as f64)).collect();
    let s = fml::eval::umeyama(&p, &g, None, true).unwrap();
    p.iter()
        .zip(&g)
        .map(|(a, b)| {
            let q = s.apply(*a);
            ((q[0] - b[0]).powi(2) + (q[1] - b[1]).powi(2) + (q[2] - b[2]).powi(2)).sqrt()
        })
        .sum::<f64>()
        / p.len() as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = fml::config::Config::load(&args[1]).unwrap();
    let ds = Dataset::open(&args[2]).unwrap();
    let iters: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(300);
    let dev = Device::Cpu;
    let model = fml::train::load_face_model(&cfg.model).unwrap();
    let net =
        fml::network::FaceNet::new(&model, &cfg, false, fml::render::Backend::Fast, &candle_nn::VarMap::new(), &dev)
            .unwrap();
    let obj = fml::loss::Objective::new(&net, &cfg.loss, 1).unwrap();
    let size = ds.size() as usize;
    let mean = fml::face_model::to_vec3(&model.mean_shape);
    for i in ds.indices(Some(Split::Val)).into_iter().take(5) {
        let rec = ds.read(i).unwrap();
        let img: Vec<f32> = (0..3)
            .flat_map(|c| (0..size * size).map(move |p| (c, p)))
            .map(|(c, p)| rec.image[p * 3 + c] as f32 / 255.0)
            .collect();
        let lm: Vec<f32> = rec.landmarks.iter().flatten().copied().collect();
        let tb = fml::loss::TrainBatch::from_host(img, lm, rec.confidence.to_vec(), 1, size, &dev).unwrap();
        let x = Var::from_tensor(&Tensor::zeros((1, net.layout.num_outputs()), DType::F32, &dev).unwrap()).unwrap();
        let mut opt = candle_nn::AdamW::new(
            vec![x.clone()],
            candle_nn::ParamsAdamW { lr: 0.02, weight_decay: 0.0, ..Default::default() },
        )
        .unwrap();
        let gt = Mesh::load_obj(PathBuf::from(&ds.header().records[i].source).with_extension("obj")).unwrap().vertices;
        for it in 0..=iters {
            let params = net.layout.split(x.as_tensor()).unwrap();
            let levels = net.model.evaluate(&params.z_shape, &params.z_expr, &params.z_albedo, None, None).unwrap();
            let pred = fml::network::Prediction { params, levels };
            let terms = obj.compute(&net, &pred, &tb).unwrap();
            if it % (iters / 4).max(1) == 0 {
                let g = fml::face_model::to_vec3(
                    &pred.levels.base_geometry.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                let v = terms.values().unwrap();
                println!(
                    "img {i} it {it}: geo {:.3} (mean {:.3})  {}",
                    aligned_error(&g, &gt, &model.face_region),
                    aligned_error(&mean, &gt, &model.face_region),
                    v.iter().map(|(k, x)| format!("{k}={x:.4}")).collect::<Vec<_>>().join(" ")
                );
            }
            opt.backward_step(&terms.total).unwrap();
        }
    }
}
