//! Summary statistics of per-vertex distances and of per-mesh errors (mean, SD, median, RMSE).

/// Mean and standard deviation of `values` (e.g. the mean error of each test mesh), computed in
/// `f64` in input order (so deterministic). `(NaN, NaN)` for an empty slice.
///
/// The SD is the population SD (divide by n), the same definition as the per-vertex SD of an
/// [`super::Alignment`]; the paper (Table 1) does not say which it uses, and with the dozens to
/// hundreds of meshes of an evaluation the two differ by well under 1 %. Use
/// [`summary_with_ddof`] with 1 for the sample SD.
pub fn summary(values: &[f64]) -> (f64, f64) {
    summary_with_ddof(values, 0)
}

/// Mean and SD with `n - ddof` in the SD's denominator (0: population, 1: sample).
/// `(NaN, NaN)` for an empty slice; the SD is NaN when `n <= ddof`.
pub fn summary_with_ddof(values: &[f64], ddof: usize) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n <= ddof {
        return (mean, f64::NAN);
    }
    // Two-pass: the squared deviations are taken about the exact mean (no cancellation).
    let ss: f64 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
    (mean, (ss / (n - ddof) as f64).sqrt())
}

/// Median (mean of the two middle values for an even count); NaN for an empty slice.
/// NaNs sort last (`total_cmp`).
pub fn median(values: &[f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    let (_, &mut hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().max_by(f64::total_cmp).unwrap_or(hi);
    0.5 * (lo + hi)
}

/// Mean, population SD, median and root-mean-square of distances.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistanceStats {
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    pub rmse: f64,
}

/// [`DistanceStats`] of `distances` (NaN fields for an empty slice).
pub fn distance_stats(distances: &[f32]) -> DistanceStats {
    let v: Vec<f64> = distances.iter().map(|&d| d as f64).collect();
    let (mean, sd) = summary(&v);
    let rmse = if v.is_empty() { f64::NAN } else { (v.iter().map(|d| d * d).sum::<f64>() / v.len() as f64).sqrt() };
    DistanceStats { mean, sd, median: median(&v), rmse }
}

/// How one quantity follows another over a set of samples (e.g. a regressed coefficient against
/// the true one): Pearson correlation, least-squares slope of `y` on `x`, means and population SDs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearFit {
    pub r: f64,
    /// d(y)/d(x) of the least-squares line.
    pub slope: f64,
    pub mean: (f64, f64),
    pub sd: (f64, f64),
}

/// [`LinearFit`] of `ys` on `xs` (pairs in order). NaN fields where undefined (fewer than two
/// samples, or a constant `x` for `r` and `slope`; a constant `y` gives `r` NaN, `slope` 0).
pub fn linear_fit(xs: &[f64], ys: &[f64]) -> LinearFit {
    let n = xs.len().min(ys.len());
    let (mx, sx) = summary(&xs[..n]);
    let (my, sy) = summary(&ys[..n]);
    let cov = xs[..n].iter().zip(&ys[..n]).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / n as f64;
    LinearFit { r: cov / (sx * sy), slope: cov / (sx * sx), mean: (mx, my), sd: (sx, sy) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let (m, sd) = summary(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        assert_eq!(sd, 2.0);
        let (_, s1) = summary_with_ddof(&[1.0, 3.0], 1);
        assert!((s1 - 2f64.sqrt()).abs() < 1e-15);
        assert!(summary(&[]).0.is_nan());
        assert!(summary_with_ddof(&[1.0], 1).1.is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let s = distance_stats(&[3.0, 4.0]);
        assert_eq!((s.mean, s.sd, s.median), (3.5, 0.5, 3.5));
        assert!((s.rmse - 12.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn linear_fit_of_a_noisy_line() {
        let xs: Vec<f64> = (0..8).map(f64::from).collect();
        // y = 2x + 1 exactly: r = 1, slope 2.
        let exact: Vec<f64> = xs.iter().map(|x| 2.0 * x + 1.0).collect();
        let f = linear_fit(&xs, &exact);
        assert!((f.r - 1.0).abs() < 1e-12 && (f.slope - 2.0).abs() < 1e-12);
        assert_eq!(f.mean, (3.5, 8.0));
        // y = -x + alternating +-0.5: sum((x - 3.5) * noise) = -2, so the slope is -1 - 2 / 42.
        let noisy: Vec<f64> = xs.iter().enumerate().map(|(i, x)| -x + if i % 2 == 0 { 0.5 } else { -0.5 }).collect();
        let g = linear_fit(&xs, &noisy);
        assert!(g.r < -0.9 && g.r > -1.0, "{g:?}");
        let expected_slope = -1.0 - 2.0 / xs.iter().map(|x| (x - 3.5) * (x - 3.5)).sum::<f64>();
        assert!((g.slope - expected_slope).abs() < 1e-12, "{g:?}");
        assert!(linear_fit(&[1.0, 1.0], &[0.0, 2.0]).r.is_nan());
    }
}
