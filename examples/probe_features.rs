//! Does a run's encoder see a quantity it was never asked to regress? Ridge regression from the
//! encoder's last hidden layer to the true identity coefficient K of each image (from the `.json`
//! beside the synthetic image), fitted on (up to 1500) training records and scored by correlation
//! on the validation split.
//!
//! This is the check behind the README's note on the final level: a corrective coefficient is a
//! new linear read-out of these features, so a missing identity mode is learnable at the final
//! level only as far as the features carry it.
//!
//! cargo run --release --example probe_features -- RUN DATASET.fmlds K

use candle_core::{Device, Tensor};
use fml::data::dataset::{Dataset, Split};
use std::path::PathBuf;

fn main() -> fml::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(run), Some(data), Some(k)) =
        (args.get(1), args.get(2), args.get(3).and_then(|k| k.parse::<usize>().ok()))
    else {
        eprintln!("usage: probe_features RUN DATASET.fmlds K");
        std::process::exit(2);
    };
    let t = fml::infer::load_run(&PathBuf::from(run), &Device::Cpu)?;
    let ds = Dataset::open(data)?;
    let size = ds.size() as usize;
    // Features (with a constant 1 for the intercept) and true coefficients of a split.
    let collect = |split: Split| -> fml::Result<(Vec<Vec<f64>>, Vec<f64>)> {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in ds.indices(Some(split)).into_iter().take(1500) {
            let rec = ds.read(i)?;
            let img = fml::data::image::rgb8_to_planar(&rec.image);
            let f = t.net.encoder.features(&Tensor::from_vec(img, (1, 3, size, size), &Device::Cpu)?)?; // [1, F]
            let mut x: Vec<f64> = f.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
            x.push(1.0);
            let path = PathBuf::from(&ds.header().records[i].source).with_extension("json");
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&path).map_err(|e| fml::Error::io(path.display().to_string(), e))?,
            )
            .map_err(|e| fml::Error::invalid(format!("{}: {e}", path.display())))?;
            let y = json["coefficients"]["shape"][k]
                .as_f64()
                .ok_or_else(|| fml::Error::invalid(format!("{}: no identity coefficient {k}", path.display())))?;
            xs.push(x);
            ys.push(y);
        }
        Ok((xs, ys))
    };
    let (xt, yt) = collect(Split::Train)?;
    let (xv, yv) = collect(Split::Val)?;
    if xt.is_empty() || xv.is_empty() {
        return Err(fml::Error::invalid(format!("{data}: needs training and validation records")));
    }
    for lambda in [1e-2, 1e0, 1e2] {
        let w = ridge(&xt, &yt, lambda);
        let predict =
            |xs: &[Vec<f64>]| -> Vec<f64> { xs.iter().map(|x| x.iter().zip(&w).map(|(a, b)| a * b).sum()).collect() };
        println!(
            "ridge lambda {lambda}: r = {:.3} on {} training, {:.3} on {} validation images",
            fml::eval::linear_fit(&predict(&xt), &yt).r,
            yt.len(),
            fml::eval::linear_fit(&predict(&xv), &yv).r,
            yv.len()
        );
    }
    Ok(())
}

/// Solve `(X^T X + lambda I) w = X^T y` by Gauss-Jordan elimination with partial pivoting (the
/// system is small: one row per feature).
fn ridge(xs: &[Vec<f64>], ys: &[f64], lambda: f64) -> Vec<f64> {
    let d = xs[0].len();
    let mut a = vec![vec![0f64; d + 1]; d]; // [X^T X + lambda I | X^T y]
    for (x, y) in xs.iter().zip(ys) {
        for r in 0..d {
            for c in 0..d {
                a[r][c] += x[r] * x[c];
            }
            a[r][d] += x[r] * y;
        }
    }
    for (r, row) in a.iter_mut().enumerate() {
        row[r] += lambda;
    }
    for c in 0..d {
        let p = (c..d).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).expect("rows");
        a.swap(c, p);
        let pivot = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for j in c..=d {
                    row[j] -= f * pivot[j];
                }
            }
        }
    }
    (0..d).map(|r| a[r][d] / a[r][r]).collect()
}
