//! Geometric error of a trained run on the validation split of a dataset prepared from a flat
//! `fml synth` folder of the same face model (same topology): per-vertex distance over the face
//! region after a similarity alignment, for the base and final level and for the mean face.
//!
//! cargo run --release --example synth_geometry -- RUN DATASET.fmlds

use candle_core::{Device, Tensor};
use fml::data::dataset::{Dataset, Split};
use fml::io::mesh::Mesh;
use std::path::PathBuf;

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
    let (mut eb, mut ef, mut em, mut n) = (0.0, 0.0, 0.0, 0f64);
    // Predicted vs true coefficients (model units), for a per-mode correlation report.
    let mut pairs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let mut p2s = [0f64; 3];
    for i in ds.indices(Some(Split::Val)) {
        let rec = ds.read(i)?;
        let img = fml::data::image::rgb8_to_planar(&rec.image);
        let pred = t.net.predict(&Tensor::from_vec(img, (1, 3, size, size), &Device::Cpu)?)?;
        let v = |t: Tensor| -> fml::Result<Vec<[f32; 3]>> {
            Ok(fml::face_model::to_vec3(&t.flatten_all()?.to_vec1::<f32>()?))
        };
        let gt = Mesh::load_obj(PathBuf::from(&ds.header().records[i].source).with_extension("obj"))?.vertices;
        let base_v = v(pred.levels.base_geometry.clone())?;
        let fine_v = v(pred.levels.final_geometry()?)?;
        eb += fml::eval::aligned_vertex_error(&base_v, &gt, &model.face_region)?;
        ef += fml::eval::aligned_vertex_error(&fine_v, &gt, &model.face_region)?;
        em += fml::eval::aligned_vertex_error(&mean, &gt, &model.face_region)?;
        // The paper's metric: point-to-surface after a similarity ICP (ignores sliding along the surface).
        if std::env::var_os("FML_P2S").is_some() {
            let gt_mesh = Mesh { vertices: gt.clone(), triangles: model.triangles.clone(), colors: None };
            let ecfg = fml::infer::eval::EvalConfig { progress: false, ..Default::default() };
            let lm = |vv: &[[f32; 3]]| -> Vec<[f32; 3]> { model.landmarks.iter().map(|&k| vv[k as usize]).collect() };
            let sc = |vv: &Vec<[f32; 3]>| -> fml::Result<f64> {
                let pm = Mesh { vertices: vv.clone(), triangles: model.triangles.clone(), colors: None };
                Ok(fml::infer::eval::evaluate_mesh(&pm, Some(&lm(vv)), &gt_mesh, Some(&lm(&gt)), &ecfg)?.mean_mm)
            };
            p2s[0] += sc(&base_v)?;
            p2s[1] += sc(&fine_v)?;
            p2s[2] += sc(&mean)?;
        }
        n += 1.0;
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(PathBuf::from(&ds.header().records[i].source).with_extension("json"))
                .map_err(|e| fml::Error::io("json", e))?,
        )
        .expect("synth json");
        let truth: Vec<f32> = ["shape", "expression"]
            .iter()
            .flat_map(|k| {
                rec["coefficients"][k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let z = Tensor::cat(&[&pred.params.z_shape, &pred.params.z_expr], 1)?.flatten_all()?.to_vec1::<f32>()?;
        pairs.push((z, truth));
    }
    if std::env::var_os("FML_CORR").is_some() {
        let k = pairs[0].0.len().min(pairs[0].1.len());
        let corr: Vec<String> = (0..k)
            .map(|m| {
                let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().map(|(p, t)| (p[m] as f64, t[m] as f64)).unzip();
                let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
                let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
                let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
                let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
                format!("{m}:{:.2}", cov / (vx * vy).sqrt().max(1e-12))
            })
            .collect();
        println!("correlation of predicted and true coefficients (shape then expression): {}", corr.join(" "));
    }
    if p2s[2] > 0.0 {
        println!(
            "point-to-surface: base {:.3} mm, final {:.3} mm, mean face {:.3} mm",
            p2s[0] / n,
            p2s[1] / n,
            p2s[2] / n
        );
    }
    println!("{} validation faces: base {:.3} mm, final {:.3} mm, mean face {:.3} mm", n, eb / n, ef / n, em / n);
    Ok(())
}
