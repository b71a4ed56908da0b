//! Landmark schemes: iBUG-68 (Multi-PIE order) and the 66-point scheme of the paper's tracker.
//!
//! The paper uses 66 landmarks from Saragih et al.'s tracker [53]; that scheme is the iBUG-68
//! set without the two inner mouth corners (60 and 64). Everything internal is stored in
//! iBUG-68 order; 66-point inputs are expanded with those two points marked missing
//! (confidence 0), so one code path serves both.

use crate::error::{Error, Result};

/// A landmark annotation scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// iBUG-68 / Multi-PIE.
    Ibug68,
    /// The 66-point tracker scheme: iBUG-68 minus the inner mouth corners 60 and 64.
    Tracker66,
}

/// iBUG-68 indices that the 66-point scheme leaves out.
pub const INNER_MOUTH_CORNERS: [usize; 2] = [60, 64];

impl Scheme {
    /// Number of points.
    #[allow(clippy::len_without_is_empty, reason = "a scheme always has points")]
    pub fn len(self) -> usize {
        match self {
            Scheme::Ibug68 => 68,
            Scheme::Tracker66 => 66,
        }
    }

    /// The scheme with `n` points, if any.
    pub fn from_count(n: usize) -> Option<Scheme> {
        match n {
            68 => Some(Scheme::Ibug68),
            66 => Some(Scheme::Tracker66),
            _ => None,
        }
    }

    /// The iBUG-68 index of point `i` of this scheme.
    pub fn to_ibug68(self, i: usize) -> usize {
        match self {
            Scheme::Ibug68 => i,
            Scheme::Tracker66 => {
                // 0..=59 unchanged, 60..=62 -> 61..=63, 63..=65 -> 65..=67.
                if i < 60 {
                    i
                } else if i < 63 {
                    i + 1
                } else {
                    i + 2
                }
            }
        }
    }
}

/// Expand points (and confidences) of either scheme to iBUG-68 order. Points the scheme lacks get
/// confidence 0. `origin` names the source in errors.
pub fn to_ibug68(
    points: &[[f32; 2]],
    conf: Option<&[f32]>,
    origin: &std::path::Path,
) -> Result<(Vec<[f32; 2]>, Vec<f32>)> {
    let scheme = Scheme::from_count(points.len()).ok_or_else(|| {
        Error::format(origin, format!("{} landmarks: expected 68 (iBUG) or 66 (tracker scheme)", points.len()))
    })?;
    let mut out = vec![[0.0f32; 2]; 68];
    let mut c = vec![0.0f32; 68];
    for (i, p) in points.iter().enumerate() {
        let j = scheme.to_ibug68(i);
        out[j] = *p;
        c[j] = conf.map(|c| c[i]).unwrap_or(1.0);
    }
    Ok((out, c))
}

/// The iBUG-68 index each point maps to under a horizontal image flip (left and right swap).
pub const IBUG68_FLIP: [usize; 68] = [
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, // jaw
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17, // brows
    27, 28, 29, 30, // nose bridge
    35, 34, 33, 32, 31, // nostrils
    45, 44, 43, 42, 47, 46, // right eye -> left eye
    39, 38, 37, 36, 41, 40, // left eye -> right eye
    54, 53, 52, 51, 50, 49, 48, // outer upper lip
    59, 58, 57, 56, 55, // outer lower lip
    64, 63, 62, 61, 60, // inner upper lip
    67, 66, 65, // inner lower lip
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_is_an_involution() {
        for i in 0..68 {
            assert_eq!(IBUG68_FLIP[IBUG68_FLIP[i]], i, "point {i}");
        }
        assert_eq!(IBUG68_FLIP[36], 45);
        assert_eq!(IBUG68_FLIP[40], 47);
        assert_eq!(IBUG68_FLIP[57], 57);
    }

    #[test]
    fn tracker66_skips_inner_mouth_corners() {
        let mapped: Vec<usize> = (0..66).map(|i| Scheme::Tracker66.to_ibug68(i)).collect();
        for c in INNER_MOUTH_CORNERS {
            assert!(!mapped.contains(&c));
        }
        assert_eq!(mapped[65], 67);
        let pts: Vec<[f32; 2]> = (0..66).map(|i| [i as f32, 0.0]).collect();
        let (p, c) = to_ibug68(&pts, None, std::path::Path::new("x")).unwrap();
        assert_eq!(c[60], 0.0);
        assert_eq!(c[61], 1.0);
        assert_eq!(p[61][0], 60.0);
        assert!(to_ibug68(&pts[..10], None, std::path::Path::new("x")).is_err());
    }
}
