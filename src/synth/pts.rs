//! The iBUG `.pts` landmark writer used by `fml synth` (the reader lives with the data loaders).
//!
//! Coordinates are written in the crate's pixel convention (docs/conventions.md: the image's
//! top-left corner is (0, 0), pixel centres at i + 0.5), not the 1-based convention of some
//! iBUG tools, so that reading them back needs no shift.

use crate::error::Result;
use std::fmt::Write;
use std::path::Path;

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

/// Write `points` to `path` as a `.pts` file, atomically.
pub fn write_pts(path: impl AsRef<Path>, points: &[[f32; 2]]) -> Result<()> {
    crate::io::write_atomic_bytes(path, format_pts(points).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pts_layout() {
        let s = format_pts(&[[1.5, 2.25], [10.0, 0.0004]]);
        assert_eq!(s, "version: 1\nn_points: 2\n{\n1.500 2.250\n10.000 0.000\n}\n");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.pts");
        write_pts(&p, &[[0.5, 0.5]]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "version: 1\nn_points: 1\n{\n0.500 0.500\n}\n");
    }
}
