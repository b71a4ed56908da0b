//! Geometric error of a trained run on the validation split of a dataset prepared from a flat
//! `fml synth` folder of the same face model (same topology): per-vertex distance over the face
//! region after a similarity alignment, for the base and final level and for the mean face.
//!
//! With `--probe MODEL K` (`--probe-expression MODEL K` for expression mode K): how much of
//! identity mode K of MODEL (a world mode the run's base model lacks) the final level's geometry
//! correctives carry: per face the least-squares coefficient of the corrective offset along the
//! mode (over the face region), against the true coefficient (`r`, slope; the per-image
//! photometric optimum is printed by `photo_signal --mode`), and the offset split into its mean
//! over the faces and the per-face rest (a constant correction needs no per-image regression;
//! learning a missing mode does).
//! `--bands` (with `--probe`) adds where the mean offset lies: per fifth of the face region by
//! height, its RMS along the mean face's outward normal (and the signed mean: negative = inward)
//! and across it. A photometric bias shows there as a constant inward push at the silhouettes.
//! `--split train` measures on (up to 200) training records instead of the validation split.
//! `--coefficients` prints, per base-model mode (identity, then expression), the correlation of
//! the regressed coefficient with the true one and both SDs (the base model may be a truncation
//! of the world: its modes are paired with the world's first ones). `--surface` adds the
//! point-to-surface error of `fml eval` (similarity ICP from the landmarks), which ignores
//! sliding along the surface.
//!
//! cargo run --release --example synth_geometry -- RUN DATASET.fmlds [--split train|val] [--coefficients] [--surface] [--probe[-expression] MODEL.safetensors K [--bands]]

use candle_core::{Device, Tensor};
use fml::data::dataset::{Dataset, Split};
use fml::io::mesh::Mesh;
use std::path::PathBuf;

fn main() -> fml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!(
            "usage: synth_geometry RUN DATASET.fmlds [--split train|val] [--coefficients] [--surface] [--probe[-expression] MODEL.safetensors K [--bands]]"
        );
        std::process::exit(2);
    };
    if args.len() < 3 {
        usage();
    }
    let (mut split, mut probe, mut bands) = (Split::Val, None, false);
    let (mut coefficients, mut surface) = (false, false);
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        let switch = match flag.as_str() {
            "--bands" => Some(&mut bands),
            "--coefficients" => Some(&mut coefficients),
            "--surface" => Some(&mut surface),
            _ => None,
        };
        if let Some(on) = switch {
            *on = true;
            continue;
        }
        match (flag.as_str(), rest.next()) {
            ("--split", Some(s)) if s == "train" => split = Split::Train,
            ("--split", Some(s)) if s == "val" => split = Split::Val,
            (f @ ("--probe" | "--probe-expression"), Some(path)) => {
                let Some(k) = rest.next().and_then(|k| k.parse::<usize>().ok()) else { usage() };
                let m = fml::face_model::FaceModel::load(path)?;
                // The synth JSON's coefficient list the mode's truth is read from.
                let (mode, key) =
                    if f == "--probe" { (m.shape_mode(k), "shape") } else { (m.expr_mode(k), "expression") };
                let mode = mode.map_err(|e| fml::Error::invalid(format!("{f}: {path}: {e}")))?;
                probe = Some((k, mode.to_vec(), key));
            }
            _ => usage(),
        }
    }
    if bands && probe.is_none() {
        usage();
    }
    let t = fml::infer::load_run(&PathBuf::from(&args[1]), &Device::Cpu)?;
    let ds = Dataset::open(&args[2])?;
    let model = &t.net.face_model;
    let mean = fml::face_model::to_vec3(&model.mean_shape);
    let size = ds.size() as usize;
    let (mut eb, mut ef, mut em, mut n) = (0.0, 0.0, 0.0, 0f64);
    // Predicted vs true identity and expression coefficients (model units), for --coefficients.
    let mut pairs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let mut p2s = [0f64; 3];
    // --probe: (coefficient of the corrective along the mode, true coefficient) per face, and the
    // corrective offsets over the face region.
    let (mut along, mut offsets): (Vec<(f64, f64)>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    if let Some((_, mode, _)) = &probe
        && mode.len() != model.num_vertices() * 3
    {
        return Err(fml::Error::invalid(format!(
            "--probe model has {} vertices, the run's model {}",
            mode.len() / 3,
            model.num_vertices()
        )));
    }
    let region3: Vec<usize> = model.face_region.iter().flat_map(|&v| (0..3).map(move |c| v as usize * 3 + c)).collect();
    let cap = if split == Split::Train { 200 } else { usize::MAX };
    for i in ds.indices(Some(split)).into_iter().take(cap) {
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
        if surface {
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
        let json = PathBuf::from(&ds.header().records[i].source).with_extension("json");
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).map_err(|e| fml::Error::io(&json, e))?)
                .map_err(|e| fml::Error::format(&json, format!("not JSON: {e}")))?;
        if !rec["coefficients"].is_object() {
            return Err(fml::Error::format(&json, "no \"coefficients\" (not a `fml synth` record)"));
        }
        if let (Some((k, mode, key)), Some(off)) = (&probe, &pred.levels.geometry_offset) {
            let off = off.flatten_all()?.to_vec1::<f32>()?;
            let dot = |a: &[f32], b: &[f32]| region3.iter().map(|&j| a[j] as f64 * b[j] as f64).sum::<f64>();
            let truth = rec["coefficients"][*key][*k].as_f64().unwrap_or(f64::NAN);
            along.push((dot(&off, mode) / dot(mode, mode), truth));
            offsets.push(region3.iter().map(|&j| off[j] as f64).collect());
        }
        // The base model may be a truncation of the world: its K_s identity and K_e expression
        // modes are the world's first ones, so pair them with the first K_s / K_e true values.
        // Both sides in model units (the synth JSON's; the network regresses z-scores).
        let std: Vec<f32> = model.shape_std.iter().chain(&model.expr_std).copied().collect();
        let truth: Vec<f32> = [("shape", model.num_shape()), ("expression", model.num_expr())]
            .iter()
            .flat_map(|&(k, n)| {
                let all = rec["coefficients"][k].as_array().cloned().unwrap_or_default();
                (0..n).map(move |j| all.get(j).and_then(|v| v.as_f64()).unwrap_or(f64::NAN) as f32)
            })
            .collect();
        let z = Tensor::cat(&[&pred.params.z_shape, &pred.params.z_expr], 1)?.flatten_all()?.to_vec1::<f32>()?;
        pairs.push((z.iter().zip(&std).map(|(z, s)| z * s).collect(), truth));
    }
    if n == 0.0 {
        return Err(fml::Error::invalid(format!("{}: no records in the {split:?} split", args[2])));
    }
    if coefficients {
        let k = pairs[0].0.len();
        let corr: Vec<String> = (0..k)
            .map(|m| {
                let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().map(|(p, t)| (p[m] as f64, t[m] as f64)).unzip();
                let f = fml::eval::linear_fit(&xs, &ys);
                format!("{m}:{:.2}/{:.2}/{:.2}", f.r, f.sd.0, f.sd.1)
            })
            .collect();
        println!(
            "predicted vs true coefficients, mode:r/SD predicted/SD true (identity, then expression): {}",
            corr.join(" ")
        );
    }
    if let Some((k, _, _)) = &probe {
        if offsets.is_empty() {
            return Err(fml::Error::invalid(format!("probe: {} has no correctives", args[1])));
        }
        let (xs, ys): (Vec<f64>, Vec<f64>) = along.iter().copied().unzip();
        let f = fml::eval::linear_fit(&ys, &xs);
        println!(
            "corrective along mode {k}: r = {:.3}, slope {:.3} per unit of the true coefficient, mean {:+.3}, SD {:.3} (true coefficients: SD {:.3})",
            f.r, f.slope, f.mean.1, f.sd.1, f.sd.0
        );
        let m = offsets.len() as f64;
        let mean: Vec<f64> = (0..region3.len()).map(|j| offsets.iter().map(|o| o[j]).sum::<f64>() / m).collect();
        let per_vertex = |ss: f64| (ss / model.face_region.len() as f64).sqrt();
        let rest: f64 =
            offsets.iter().map(|o| o.iter().zip(&mean).map(|(a, b)| (a - b).powi(2)).sum::<f64>()).sum::<f64>() / m;
        println!(
            "corrective offset, RMS per vertex: mean over the faces {:.3} mm, per-face rest {:.3} mm",
            per_vertex(mean.iter().map(|x| x * x).sum()),
            per_vertex(rest)
        );
        if bands {
            print_bands(model, &mean);
        }
    }
    if p2s[2] > 0.0 {
        println!(
            "point-to-surface: base {:.3} mm, final {:.3} mm, mean face {:.3} mm",
            p2s[0] / n,
            p2s[1] / n,
            p2s[2] / n
        );
    }
    let which = if split == Split::Train { "training" } else { "validation" };
    println!("{} {which} faces: base {:.3} mm, final {:.3} mm, mean face {:.3} mm", n, eb / n, ef / n, em / n);
    Ok(())
}

/// The mean corrective offset over the faces, per fifth of the face region by height (mean face's
/// y): RMS along the outward vertex normal, its signed mean, and RMS across it.
///
/// # Shapes
/// `mean_off`: `[3R]`, the face region's vertices in `model.face_region` order.
fn print_bands(model: &fml::face_model::FaceModel, mean_off: &[f64]) {
    let mean_face = fml::face_model::to_vec3(&model.mean_shape);
    let normals = fml::face_model::topology::vertex_normals(&mean_face, &model.triangles);
    let ys: Vec<f32> = model.face_region.iter().map(|&v| mean_face[v as usize][1]).collect();
    let mut sorted = ys.clone();
    sorted.sort_by(f32::total_cmp);
    let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f).round() as usize];
    for b in 0..5 {
        let (lo, hi) = (q(b as f64 / 5.0), q((b + 1) as f64 / 5.0));
        let (mut nn, mut tt, mut sn, mut c) = (0.0, 0.0, 0.0, 0.0);
        for (r, &v) in model.face_region.iter().enumerate() {
            if ys[r] < lo || ys[r] > hi || (b < 4 && ys[r] == hi) {
                continue;
            }
            let n = normals[v as usize].map(f64::from);
            let o = [mean_off[3 * r], mean_off[3 * r + 1], mean_off[3 * r + 2]];
            let dn = o[0] * n[0] + o[1] * n[1] + o[2] * n[2];
            nn += dn * dn;
            tt += o.iter().map(|x| x * x).sum::<f64>() - dn * dn;
            sn += dn;
            c += 1.0;
        }
        if c > 0.0 {
            println!(
                "height band {b} (y {lo:.0}..{hi:.0} mm, {c} vertices): mean offset along the normal RMS {:.3} mm (mean {:+.3}), across it RMS {:.3} mm",
                (nn / c).sqrt(),
                sn / c,
                (tt / c).max(0.0).sqrt()
            );
        }
    }
}
