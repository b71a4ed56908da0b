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
//!   -2..+3 units (`--mode K MODEL`), to see whether a corrective along it could lower E_photo.
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
//! cargo run --release --example photo_signal -- RUN DATASET.fmlds [--mode K MODEL.safetensors] [--refit STEPS] [--max IMAGES]

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
        eprintln!("usage: photo_signal RUN DATASET.fmlds [--mode K MODEL.safetensors] [--refit STEPS] [--max IMAGES]");
        std::process::exit(2);
    };
    if args.len() < 3 {
        usage();
    }
    let (mut mode, mut refit, mut max) = (None, 0usize, usize::MAX);
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--mode" => {
                let (Some(k), Some(path)) = (rest.next(), rest.next()) else { usage() };
                let k: usize = k.parse().map_err(|_| fml::Error::invalid(format!("--mode: bad mode index {k}")))?;
                let m = FaceModel::load(path)?;
                if k >= m.num_shape() {
                    return Err(fml::Error::invalid(format!(
                        "--mode {k}: {path} has {} identity modes",
                        m.num_shape()
                    )));
                }
                let n3 = m.num_vertices() * 3;
                mode = Some((k, m.shape_basis[k * n3..(k + 1) * n3].to_vec()));
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
    if let Some((_, d)) = &mode
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
        e[0][0] += photo(pg, pr, pl)?;
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
        if let Some((_, d)) = &mode {
            let dir = Tensor::from_slice(d, (1, n, 3), &dev)?;
            for (j, s) in shifts.iter().enumerate() {
                along[j] += photo(&(pg + (&dir * *s)?)?, &true_reflectance, &true_gamma)?;
            }
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
    if let Some((k, _)) = mode {
        println!("  predicted geometry + t x identity mode {k} (true reflectance+light):");
        for (j, s) in shifts.iter().enumerate() {
            println!("    t = {s:+.1}: {:.5} ({:+.3} %)", along[j] / count, rel(along[2], along[j]));
        }
    }
    Ok(())
}
