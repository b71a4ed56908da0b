//! How much does the photometric term (eq. 9) see of the geometry? For a trained run and a
//! dataset prepared from a flat `fml synth` folder of the run's model topology, evaluates E_photo
//! on the validation images at the run's own base-level fit while swapping in pieces of the
//! ground truth:
//! - predicted geometry vs the true mesh, under the predicted reflectance and light; the true mesh
//!   both as it is (model frame) and aligned to the predicted one over the face region, rigidly
//!   and with a similarity (the true shape where the fit put its face, at the fit's size: the
//!   run's pose was fitted with its own geometry, and the per-vertex metric ignores scale);
//! - the same under the true reflectance (the `.obj` colours) and true SH light (the `.json`),
//!   which isolates the geometry's share from the appearance's;
//! - optionally the predicted geometry moved along one identity mode of a model file by
//!   -2..+3 units (`--mode K MODEL`; `--mode-expression K MODEL` for expression mode K), to see
//!   whether a corrective along it could lower E_photo;
//!   with it, per image: the best shift on a grid of -8..+8 in steps of 0.5 (under the predicted
//!   and under the true appearance) against the image's true coefficient K, how much lower
//!   E_photo is there, and the gradient of E_photo (predicted appearance, what training sees)
//!   w.r.t. the vertices: its cosine with the mode and with the similarity motions (translations,
//!   scale, rotations about the centroid), and how its mode component follows the true
//!   coefficient. A missing mode that correctives can learn from E_photo shows as a per-image
//!   optimum that follows the true coefficient.
//!
//! This is the check behind the README's note on the final level's geometric gain: correctives
//! are trained by E_photo alone (E_sparse acts on the base level), so they can only learn
//! geometry that lowers E_photo more than appearance changes do.
//!
//! With `--refit STEPS` the pose is also re-fitted to the predicted and to the true geometry
//! (Adam on E_photo alone from the predicted pose, under the true reflectance and light): the
//! run's pose was regressed together with its own geometry, so at that pose E_photo can prefer the
//! predicted shape to the true one even where the true shape wins at its own best pose.
//!
//! `--max IMAGES` uses only the first validation images (the re-fit costs 2 x STEPS renderings
//! per image).
//!
//! cargo run --release --example photo_signal -- RUN DATASET.fmlds [--mode[-expression] K MODEL.safetensors] [--refit STEPS] [--max IMAGES]

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fml::data::dataset::{Dataset, Split};
use fml::face_model::FaceModel;
use fml::io::mesh::Mesh;
use fml::render::RenderInput;
use std::path::PathBuf;

fn main() -> fml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!(
            "usage: photo_signal RUN DATASET.fmlds [--mode[-expression] K MODEL.safetensors] [--refit STEPS] [--max IMAGES]"
        );
        std::process::exit(2);
    };
    if args.len() < 3 {
        usage();
    }
    let (mut mode, mut refit, mut max) = (None, 0usize, usize::MAX);
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            f @ ("--mode" | "--mode-expression") => {
                let (Some(k), Some(path)) = (rest.next(), rest.next()) else { usage() };
                let k: usize = k.parse().map_err(|_| fml::Error::invalid(format!("{f}: bad mode index {k}")))?;
                let m = FaceModel::load(path)?;
                // The synth JSON's coefficient list the mode's truth is read from.
                let (d, key) = if f == "--mode" { (m.shape_mode(k), "shape") } else { (m.expr_mode(k), "expression") };
                let d = d.map_err(|e| fml::Error::invalid(format!("{f}: {path}: {e}")))?;
                mode = Some((k, d.to_vec(), key));
            }
            "--max" => {
                let Some(v) = rest.next() else { usage() };
                max = v.parse().map_err(|_| fml::Error::invalid(format!("--max: bad image count {v}")))?;
            }
            "--refit" => {
                let Some(v) = rest.next() else { usage() };
                refit = v.parse().map_err(|_| fml::Error::invalid(format!("--refit: bad step count {v}")))?;
            }
            _ => usage(),
        }
    }
    let dev = Device::Cpu;
    let t = fml::infer::load_run(&PathBuf::from(&args[1]), &dev)?;
    let ds = Dataset::open(&args[2])?;
    let net = &t.net;
    let n = net.face_model.num_vertices();
    if let Some((_, d, _)) = &mode
        && d.len() != n * 3
    {
        return Err(fml::Error::invalid(format!("--mode model has {} vertices, the run's model {n}", d.len() / 3)));
    }
    let shifts = [-2.0f64, -1.0, 0.0, 1.0, 2.0, 3.0];
    let size = ds.size() as usize;
    // Sums over the validation images: [predicted, true, true rigidly aligned, true similarity
    // aligned] geometry x [predicted, true] appearance.
    let mut e = [[0f64; 2]; 4];
    let mut along = vec![0f64; shifts.len()];
    // [predicted, true] geometry with the pose re-fitted.
    let mut refitted = [0f64; 2];
    // Mean change of the pose by the re-fit of the predicted geometry: degrees, millimetres.
    let mut pose_change = [0f64; 2];
    let mut count = 0f64;
    let mut per_image: Vec<AlongMode> = Vec::new();
    for i in ds.indices(Some(Split::Val)).into_iter().take(max) {
        let rec = ds.read(i)?;
        let stem = PathBuf::from(&ds.header().records[i].source);
        let chw = fml::data::image::rgb8_to_planar(&rec.image);
        let hwc: Vec<f32> = rec.image.iter().map(|&x| x as f32 / 255.0).collect();
        let image = Tensor::from_vec(hwc, (1, size, size, 3), &dev)?; // [1, H, W, 3]
        let pred = net.predict(&Tensor::from_vec(chw, (1, 3, size, size), &dev)?)?;

        let gt = Mesh::load_obj(stem.with_extension("obj"))?;
        if gt.vertices.len() != n {
            return Err(fml::Error::invalid(format!(
                "{}: {} vertices, the run's model has {n} (use a synth folder of the run's model)",
                stem.with_extension("obj").display(),
                gt.vertices.len()
            )));
        }
        let colours = gt.colors.clone().ok_or_else(|| {
            fml::Error::invalid(format!(
                "{}: no vertex colours (true reflectance)",
                stem.with_extension("obj").display()
            ))
        })?;
        let json_path = stem.with_extension("json");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&json_path).map_err(|e| fml::Error::io(json_path.display().to_string(), e))?,
        )
        .map_err(|e| fml::Error::invalid(format!("{}: {e}", json_path.display())))?;
        let gamma: Vec<f32> = json["gamma"]
            .as_array()
            .filter(|a| a.len() == 27)
            .ok_or_else(|| {
                fml::Error::invalid(format!("{}: no 27 SH coefficients under \"gamma\"", json_path.display()))
            })?
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
            .collect();

        let flat = |v: &[[f32; 3]]| -> fml::Result<Tensor> {
            Ok(Tensor::from_vec(v.iter().flatten().copied().collect::<Vec<f32>>(), (1, n, 3), &dev)?) // [1, N, 3]
        };
        let true_geometry = flat(&gt.vertices)?;
        let predicted = fml::face_model::to_vec3(&pred.levels.base_geometry.flatten_all()?.to_vec1::<f32>()?);
        let pick = |v: &[[f32; 3]]| -> Vec<[f64; 3]> {
            net.face_model.face_region.iter().map(|&k| v[k as usize].map(f64::from)).collect()
        };
        let align = |with_scale: bool| -> fml::Result<Tensor> {
            let sim = fml::eval::similarity::umeyama(&pick(&gt.vertices), &pick(&predicted), None, with_scale)?;
            flat(&gt.vertices.iter().map(|&p| sim.apply_f32(p)).collect::<Vec<_>>())
        };
        let (rigid_geometry, similar_geometry) = (align(false)?, align(true)?);
        let true_reflectance = flat(&colours)?;
        let true_gamma = Tensor::from_vec(gamma, (1, 27), &dev)?;
        // E_photo at the run's predicted pose, for a given geometry and appearance.
        let photo = |vertices: &Tensor, reflectance: &Tensor, gamma: &Tensor| -> fml::Result<f64> {
            let r = net.formation.render(&RenderInput {
                vertices,
                reflectance,
                rotation: &pred.params.rotation,
                translation: &pred.params.translation,
                gamma,
                image: &image,
            })?;
            Ok(net.formation.photometric(&r)?.to_vec1::<f32>()?[0] as f64)
        };
        let (pg, pr, pl) = (&pred.levels.base_geometry, &pred.levels.base_reflectance, &pred.params.gamma);
        let fit_photo = photo(pg, pr, pl)?;
        e[0][0] += fit_photo;
        e[1][0] += photo(&true_geometry, pr, pl)?;
        e[0][1] += photo(pg, &true_reflectance, &true_gamma)?;
        e[1][1] += photo(&true_geometry, &true_reflectance, &true_gamma)?;
        for (j, g) in [&rigid_geometry, &similar_geometry].into_iter().enumerate() {
            e[2 + j][0] += photo(g, pr, pl)?;
            e[2 + j][1] += photo(g, &true_reflectance, &true_gamma)?;
        }
        if refit > 0 {
            for (j, g) in [pg, &true_geometry].into_iter().enumerate() {
                let (rotation, translation) =
                    (Var::from_tensor(&pred.params.rotation)?, Var::from_tensor(&pred.params.translation)?);
                // Radians and millimetres: one Adam per unit, steps of ~0.1 deg and ~0.2 mm.
                let adam = |v: &Var, lr: f64| {
                    AdamW::new(vec![v.clone()], ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() })
                };
                let (mut opt_r, mut opt_t) = (adam(&rotation, 2e-3)?, adam(&translation, 0.2)?);
                let energy = || -> fml::Result<Tensor> {
                    let r = net.formation.render(&RenderInput {
                        vertices: g,
                        reflectance: &true_reflectance,
                        rotation: rotation.as_tensor(),
                        translation: translation.as_tensor(),
                        gamma: &true_gamma,
                        image: &image,
                    })?;
                    Ok(net.formation.photometric(&r)?.sum_all()?)
                };
                for _ in 0..refit {
                    let grads = energy()?.backward()?;
                    opt_r.step(&grads)?;
                    opt_t.step(&grads)?;
                }
                refitted[j] += energy()?.to_scalar::<f32>()? as f64;
                if j == 0 {
                    let norm = |a: &Tensor, b: &Tensor| -> fml::Result<f64> {
                        Ok((a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)
                    };
                    pose_change[0] += norm(rotation.as_tensor(), &pred.params.rotation)?.to_degrees();
                    pose_change[1] += norm(translation.as_tensor(), &pred.params.translation)?;
                }
            }
        }
        if let Some((k, d, key)) = &mode {
            let dir = Tensor::from_slice(d, (1, n, 3), &dev)?;
            for (j, s) in shifts.iter().enumerate() {
                along[j] += photo(&(pg + (&dir * *s)?)?, &true_reflectance, &true_gamma)?;
            }
            let truth = json["coefficients"][*key][*k].as_f64().unwrap_or(f64::NAN);
            let mut best = [(f64::INFINITY, 0f64); 2];
            for q in -16..=16 {
                let s = q as f64 * 0.5;
                let g = (pg + (&dir * s)?)?;
                for (a, (r, l)) in [(pr, pl), (&true_reflectance, &true_gamma)].into_iter().enumerate() {
                    let v = photo(&g, r, l)?;
                    if v < best[a].0 {
                        best[a] = (v, s);
                    }
                }
            }
            let cosines = gradient_cosines(net, &pred, &image, d)?;
            per_image.push(AlongMode {
                truth,
                best_predicted: best[0].1,
                best_true: best[1].1,
                gain: (fit_photo - best[0].0) / fit_photo,
                cosines,
            });
        }
        count += 1.0;
    }
    if count == 0.0 {
        return Err(fml::Error::invalid(format!("{}: no validation records", args[2])));
    }
    let rel = |a: f64, b: f64| 100.0 * (b - a) / a;
    println!("E_photo over {count} validation images, at the run's predicted pose:");
    for (a, name) in ["predicted", "true"].iter().enumerate() {
        let column = |g: usize| format!("{:.5} ({:+.2} %)", e[g][a] / count, rel(e[0][a], e[g][a]));
        println!(
            "  {name:>9} reflectance+light: predicted geometry {:.5}; true {}, rigidly aligned {}, similarity aligned {}",
            e[0][a] / count,
            column(1),
            column(2),
            column(3)
        );
    }
    if refit > 0 {
        println!(
            "  pose re-fitted ({refit} steps), true reflectance+light: predicted geometry {:.5}, true {:.5} ({:+.2} %)",
            refitted[0] / count,
            refitted[1] / count,
            rel(refitted[0], refitted[1])
        );
        println!(
            "    the re-fit moved the predicted geometry's pose by {:.2} deg (Euler angles) and {:.2} mm on average",
            pose_change[0] / count,
            pose_change[1] / count
        );
    }
    if !per_image.is_empty() {
        let col = |f: &dyn Fn(&AlongMode) -> f64| per_image.iter().map(f).collect::<Vec<f64>>();
        let truth = col(&|p| p.truth);
        let fit = |ys: Vec<f64>| fml::eval::linear_fit(&truth, &ys);
        let (pred_app, true_app) = (fit(col(&|p| p.best_predicted)), fit(col(&|p| p.best_true)));
        println!(
            "  per-image best shift along the mode vs the true coefficient: predicted appearance r = {:.3} (slope {:.3}), true appearance r = {:.3} (slope {:.3}); E_photo there {:.2} % lower (predicted appearance)",
            pred_app.r,
            pred_app.slope,
            true_app.r,
            true_app.slope,
            100.0 * fml::eval::summary(&col(&|p| p.gain)).0
        );
        let names = ["mode", "tx", "ty", "tz", "scale", "rx", "ry", "rz"];
        let rms: Vec<String> = (0..8)
            .map(|j| {
                format!(
                    "{}={:.3}",
                    names[j],
                    (col(&|p| p.cosines[j] * p.cosines[j]).iter().sum::<f64>() / count).sqrt()
                )
            })
            .collect();
        println!("  cosine of dE_photo/dV with unit directions, RMS over the images: {}", rms.join(" "));
        println!(
            "  its mode component vs the true coefficient: r = {:.3} (negative: descent moves toward the truth)",
            fit(col(&|p| p.cosines[0])).r
        );
    }
    if let Some((k, _, key)) = mode {
        println!("  predicted geometry + t x {key} mode {k} (true reflectance+light):");
        for (j, s) in shifts.iter().enumerate() {
            println!("    t = {s:+.1}: {:.5} ({:+.3} %)", along[j] / count, rel(along[2], along[j]));
        }
    }
    Ok(())
}

/// One image's measurements along the `--mode` direction.
struct AlongMode {
    /// The image's true coefficient of the mode.
    truth: f64,
    /// Shift of the fit along the mode with the lowest E_photo under the predicted and under the
    /// true reflectance and light (grid -8..+8, step 0.5).
    best_predicted: f64,
    best_true: f64,
    /// Relative E_photo reduction at `best_predicted` (predicted appearance).
    gain: f64,
    /// [`gradient_cosines`].
    cosines: [f64; 8],
}

/// Cosines of the gradient of E_photo (the run's base-level fit: predicted geometry, reflectance,
/// light and pose) w.r.t. the vertex positions with unit directions in the model frame: `mode`
/// `[3N]`, the three translations, scaling about the centroid and the three rotations about it.
fn gradient_cosines(
    net: &fml::network::FaceNet,
    pred: &fml::network::Prediction,
    image: &Tensor,
    mode: &[f32],
) -> fml::Result<[f64; 8]> {
    let vertices = Var::from_tensor(&pred.levels.base_geometry)?; // [1, N, 3]
    let r = net.formation.render(&RenderInput {
        vertices: vertices.as_tensor(),
        reflectance: &pred.levels.base_reflectance,
        rotation: &pred.params.rotation,
        translation: &pred.params.translation,
        gamma: &pred.params.gamma,
        image,
    })?;
    let grads = net.formation.photometric(&r)?.sum_all()?.backward()?;
    let g = grads.get(vertices.as_tensor()).expect("vertex gradient").flatten_all()?.to_vec1::<f32>()?;
    let v = vertices.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let n = v.len() / 3;
    let c: [f32; 3] = std::array::from_fn(|a| (0..n).map(|i| v[i * 3 + a]).sum::<f32>() / n as f32);
    let mut dirs: Vec<Vec<f32>> = vec![mode.to_vec()];
    for a in 0..3 {
        dirs.push((0..n * 3).map(|j| if j % 3 == a { 1.0 } else { 0.0 }).collect());
    }
    dirs.push((0..n * 3).map(|j| v[j] - c[j % 3]).collect());
    for a in 0..3 {
        // e_a x (v - c)
        dirs.push(
            (0..n * 3)
                .map(|j| {
                    let (i, b) = (j / 3, j % 3);
                    let p = |k: usize| v[i * 3 + k] - c[k];
                    match (a, b) {
                        (0, 1) => -p(2),
                        (0, 2) => p(1),
                        (1, 0) => p(2),
                        (1, 2) => -p(0),
                        (2, 0) => -p(1),
                        (2, 1) => p(0),
                        _ => 0.0,
                    }
                })
                .collect(),
        );
    }
    let norm = |x: &[f32]| x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let gn = norm(&g);
    Ok(std::array::from_fn(|k| {
        let d = &dirs[k];
        g.iter().zip(d).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (norm(d) * gn)
    }))
}
