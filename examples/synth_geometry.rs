//! Geometric error of a trained run on the validation split of a dataset prepared from a flat
//! `fml synth` folder of the same face model (same topology): per-vertex distance over the face
//! region after a similarity alignment, for the base and final level and for the mean face.
//!
//! cargo run --release --example synth_geometry -- RUN DATASET.fmlds

use candle_core::{Device, Tensor};
use fml::data::dataset::{Dataset, Split};
use fml::io::mesh::Mesh;
use std::path::PathBuf;

fn aligned_error(pred: &[[f32; 3]], gt: &[[f32; 3]], region: &[u32]) -> fml::Result<f64> {
    let p: Vec<[f64; 3]> = region.iter().map(|&i| pred[i as usize].map(|x| x as f64)).collect();
    let g: Vec<[f64; 3]> = region.iter().map(|&i| gt[i as usize].map(|x| x as f64)).collect();
    let s = fml::eval::umeyama(&p, &g, None, true)?;
    let d: f64 = p
        .iter()
        .zip(&g)
        .map(|(a, b)| {
            let q = s.apply(*a);
            ((q[0] - b[0]).powi(2) + (q[1] - b[1]).powi(2) + (q[2] - b[2]).powi(2)).sqrt()
        })
        .sum();
    Ok(d / p.len() as f64)
}

fn main() -> fml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: synth_geometry RUN DATASET.fmlds");
        std::process::exit(2);
    }
    let t = fml::infer::load_run(&PathBuf::from(&args[1]), &Device::Cpu)?;
    let ds = Dataset::open(&args[2])?;
    let model = &t.net.face_model;
    let mean = fml::face_model::to_vec3(&model.mean_shape);
    let size = ds.size() as usize;
    let (mut eb, mut ef, mut em, mut n) = (0.0, 0.0, 0.0, 0usize);
    for i in ds.indices(Some(Split::Val)) {
        let rec = ds.read(i)?;
        let img: Vec<f32> =
            (0..3).flat_map(|c| (0..size * size).map(move |p| (c, p))).map(|(c, p)| rec.image[p * 3 + c] as f32 / 255.0).collect();
        let pred = t.net.predict(&Tensor::from_vec(img, (1, 3, size, size), &Device::Cpu)?)?;
        let v = |t: Tensor| -> fml::Result<Vec<[f32; 3]>> { Ok(fml::face_model::to_vec3(&t.flatten_all()?.to_vec1::<f32>()?)) };
        let gt = Mesh::load_obj(PathBuf::from(&ds.header().records[i].source).with_extension("obj"))?.vertices;
        eb += aligned_error(&v(pred.levels.base_geometry.clone())?, &gt, &model.face_region)?;
        ef += aligned_error(&v(pred.levels.final_geometry()?)?, &gt, &model.face_region)?;
        em += aligned_error(&mean, &gt, &model.face_region)?;
        n += 1;
    }
    let n = n as f64;
    println!("{} validation faces: base {:.3} mm, final {:.3} mm, mean face {:.3} mm", n, eb / n, ef / n, em / n);
    Ok(())
}
