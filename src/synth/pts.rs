//! The iBUG `.pts` landmark writer used by `fml synth` (the reader lives with the data loaders).
//!
//! Coordinates are written in the crate's pixel convention (docs/conventions.md: the image's
//! top-left corner is (0, 0), pixel centres at i + 0.5), not the 1-based convention of some
//! iBUG tools, so that reading them back needs no shift.

use std::fmt::Write;

/// Decimals written per coordinate: 1e-3 px, far below any annotation's accuracy.
const DECIMALS: usize = 3;

/// The text of a `.pts` file with `points` (`[P, 2]`, pixel coordinates).
pub fn format_pts(points: &[[f32; 2]]) -> String {
    let mut s = String::with_capacity(32 + points.len() * 20);
    let _ = write!(s, "version: 1\nn_points: {}\n{{\n", points.len());
    for p in points {
        let _ = writeln!(s, "{:.*} {:.*}", DECIMALS, p[0], DECIMALS, p[1]);
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pts_layout() {
        let s = format_pts(&[[1.5, 2.25], [10.0, 0.0004]]);
        assert_eq!(s, "version: 1\nn_points: 2\n{\n1.500 2.250\n10.000 0.000\n}\n");
        // What the data loaders read back.
        let pts: Vec<[f32; 2]> = (0..68).map(|i| [i as f32 + 0.25, 2.0 * i as f32]).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pts"), format_pts(&pts)).unwrap();
        let lm = crate::data::read_pts(dir.path().join("a.pts")).unwrap();
        assert_eq!(lm.points[67], pts[67]);
    }
}
