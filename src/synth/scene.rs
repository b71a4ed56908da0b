//! Random scene parameters of a synthetic image: head pose, perspective camera, SH lighting,
//! and the background with its pixel noise.

use crate::render::sh;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Ranges of the random SH illumination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LightConfig {
    /// Ambient irradiance range (1 = neutral light).
    pub ambient: [f32; 2],
    /// Largest band-1 (directional) term relative to the ambient one.
    pub directional: f32,
    /// Standard deviation of each band-2 term relative to the ambient one.
    pub band2: f32,
    /// Standard deviation of the per-channel colour tint.
    pub tint: f32,
    /// Smallest irradiance allowed on camera-facing normals, relative to the ambient one.
    pub min_relative: f32,
}

impl Default for LightConfig {
    fn default() -> Self {
        LightConfig { ambient: [0.6, 1.3], directional: 0.6, band2: 0.1, tint: 0.05, min_relative: 0.25 }
    }
}

/// Draw 27 SH coefficients: tinted ambient light plus a directional band-1 term from the
/// camera's side and small band-2 terms.
///
/// "Mostly positive" is enforced on a fixed set of camera-facing normals (n_z >= 0): while the
/// irradiance of any channel there falls below `min_relative` times its ambient, the non-ambient
/// terms are halved (deterministic; at most 10 times).
pub fn sample_gamma(rng: &mut Rng, cfg: &LightConfig) -> [f32; sh::NUM_COEFFS] {
    let ambient = rng.range(cfg.ambient[0] as f64, cfg.ambient[1] as f64) as f32;
    let tint: [f32; 3] = std::array::from_fn(|_| (1.0 + cfg.tint * rng.normal() as f32).clamp(0.7, 1.3));
    // Light direction in the camera-facing hemisphere (+z toward the camera), off-axis up to ~78 deg.
    let z = rng.range(0.2, 1.0) as f32;
    let phi = rng.range(0.0, std::f64::consts::TAU) as f32;
    let rxy = (1.0 - z * z).sqrt();
    let dir = [rxy * phi.cos(), rxy * phi.sin(), z];
    let strength = rng.range(0.0, cfg.directional as f64) as f32;
    let dir_tint: [f32; 3] = std::array::from_fn(|_| (1.0 + cfg.tint * rng.normal() as f32).clamp(0.7, 1.3));
    let b2: [f32; 5] = std::array::from_fn(|_| cfg.band2 * rng.normal() as f32);
    // Each band-2 coefficient is divided by its basis constant so that b2 is the term's size.
    let b2_scale = [sh::C2, sh::C2, 2.0 * sh::C3, sh::C2, sh::C4];

    let mut extra = [0.0f32; sh::NUM_COEFFS];
    let mut g = [0.0f32; sh::NUM_COEFFS];
    for c in 0..3 {
        let a = ambient * tint[c];
        g[c * 9] = a / sh::C0;
        let d = a * strength * dir_tint[c] / sh::C1;
        // Band 1 is ordered (y, z, x).
        extra[c * 9 + 1] = d * dir[1];
        extra[c * 9 + 2] = d * dir[2];
        extra[c * 9 + 3] = d * dir[0];
        for b in 0..5 {
            extra[c * 9 + 4 + b] = a * b2[b] / b2_scale[b];
        }
    }
    let probes = hemisphere_probes();
    for _ in 0..10 {
        let total: Vec<f32> = g.iter().zip(&extra).map(|(a, b)| a + b).collect();
        let ok = probes.iter().all(|&n| {
            let e = sh::irradiance(&total, n);
            (0..3).all(|c| e[c] >= cfg.min_relative * g[c * 9] * sh::C0)
        });
        if ok {
            break;
        }
        extra.iter_mut().for_each(|x| *x *= 0.5);
    }
    for (a, b) in g.iter_mut().zip(&extra) {
        *a += b;
    }
    g
}

/// Unit normals covering the camera-facing hemisphere (z >= 0).
fn hemisphere_probes() -> Vec<[f32; 3]> {
    let mut out = Vec::new();
    for i in 0..=6 {
        let z = i as f32 / 6.0;
        let r = (1.0 - z * z).sqrt();
        let n = if i == 6 { 1 } else { 16 };
        for k in 0..n {
            let a = k as f32 * std::f32::consts::TAU / n as f32;
            out.push([r * a.cos(), r * a.sin(), z]);
        }
    }
    out
}

/// How a background was made (recorded in the image's JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Background {
    /// One colour.
    Solid { colour: [f32; 3] },
    /// A linear gradient between two colours, low-frequency value noise, and Gaussian blobs.
    Gradient { from: [f32; 3], to: [f32; 3], angle: f32, noise: f32, blobs: usize },
}

fn colour(rng: &mut Rng) -> [f32; 3] {
    std::array::from_fn(|_| rng.range(0.05, 0.95) as f32)
}

/// Draw a `width x height` background (`[H * W]` RGB in [0, 1]).
pub fn sample_background(rng: &mut Rng, width: usize, height: usize) -> (Vec<[f32; 3]>, Background) {
    let solid = rng.uniform() < 0.2;
    if solid {
        let c = colour(rng);
        return (vec![c; width * height], Background::Solid { colour: c });
    }
    let (from, to) = (colour(rng), colour(rng));
    let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
    let (sa, ca) = angle.sin_cos();
    let size = width.max(height) as f32;
    let mut img: Vec<[f32; 3]> = (0..width * height)
        .map(|p| {
            let (x, y) =
                ((p % width) as f32 + 0.5 - width as f32 * 0.5, (p / width) as f32 + 0.5 - height as f32 * 0.5);
            let t = (0.5 + (x * ca + y * sa) / size).clamp(0.0, 1.0);
            [0, 1, 2].map(|c| from[c] + (to[c] - from[c]) * t)
        })
        .collect();
    // Low-frequency value noise: a 5x5 grid of random colour offsets, bilinearly interpolated.
    let noise = rng.range(0.03, 0.12) as f32;
    const G: usize = 5;
    let grid: Vec<[f32; 3]> = (0..G * G).map(|_| std::array::from_fn(|_| noise * rng.normal() as f32)).collect();
    for (p, px) in img.iter_mut().enumerate() {
        let gx = ((p % width) as f32 + 0.5) / width as f32 * (G - 1) as f32;
        let gy = ((p / width) as f32 + 0.5) / height as f32 * (G - 1) as f32;
        let (ix, iy) = ((gx as usize).min(G - 2), (gy as usize).min(G - 2));
        let (fx, fy) = (gx - ix as f32, gy - iy as f32);
        for c in 0..3 {
            let v00 = grid[iy * G + ix][c];
            let v10 = grid[iy * G + ix + 1][c];
            let v01 = grid[(iy + 1) * G + ix][c];
            let v11 = grid[(iy + 1) * G + ix + 1][c];
            px[c] += (v00 * (1.0 - fx) + v10 * fx) * (1.0 - fy) + (v01 * (1.0 - fx) + v11 * fx) * fy;
        }
    }
    let blobs = 2 + rng.below(7);
    for _ in 0..blobs {
        let c = colour(rng);
        let centre = [rng.range(0.0, width as f64) as f32, rng.range(0.0, height as f64) as f32];
        let sigma = rng.range(0.08, 0.35) as f32 * size;
        let amp = rng.range(0.2, 0.7) as f32;
        for (p, px) in img.iter_mut().enumerate() {
            let dx = (p % width) as f32 + 0.5 - centre[0];
            let dy = (p / width) as f32 + 0.5 - centre[1];
            let w = amp * (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
            for k in 0..3 {
                px[k] += (c[k] - px[k]) * w;
            }
        }
    }
    for px in &mut img {
        *px = px.map(|c| c.clamp(0.0, 1.0));
    }
    (img, Background::Gradient { from, to, angle, noise, blobs })
}

/// Add Gaussian pixel noise of standard deviation `sigma` to every channel.
pub fn add_noise(rng: &mut Rng, img: &mut [[f32; 3]], sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    for px in img {
        for c in px.iter_mut() {
            *c += sigma * rng.normal() as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lighting_is_positive_on_the_visible_hemisphere() {
        let cfg = LightConfig::default();
        let mut rng = Rng::new(11);
        let mut non_neutral = 0;
        for _ in 0..200 {
            let g = sample_gamma(&mut rng, &cfg);
            for c in 0..3 {
                let a = g[c * 9] * sh::C0;
                assert!((0.6 * 0.7 - 1e-4..=1.3 * 1.3 + 1e-4).contains(&a), "ambient {a}");
                if g[c * 9 + 1..c * 9 + 9].iter().any(|x| x.abs() > 1e-3) {
                    non_neutral += 1;
                }
            }
            for n in hemisphere_probes() {
                let e = sh::irradiance(&g, n);
                for c in 0..3 {
                    assert!(e[c] >= 0.25 * g[c * 9] * sh::C0 - 1e-4, "irradiance {e:?} at {n:?}");
                }
            }
        }
        assert!(non_neutral > 500);
    }

    #[test]
    fn backgrounds_are_in_range_and_vary() {
        let mut rng = Rng::new(3);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let (img, kind) = sample_background(&mut rng, 24, 16);
            assert_eq!(img.len(), 24 * 16);
            assert!(img.iter().flatten().all(|c| (0.0..=1.0).contains(c)));
            if let Background::Gradient { .. } = kind {
                // Not constant.
                assert!(img.iter().any(|p| p != &img[0]));
            }
            kinds.insert(matches!(kind, Background::Solid { .. }));
        }
        assert_eq!(kinds.len(), 2, "both kinds appear in 20 draws");
    }
}
