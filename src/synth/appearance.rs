//! Reflectance variation that a base albedo model cannot represent, painted onto the per-vertex
//! reflectance of synthetic faces: beards and stubble, make-up (lipstick, eye shadow, blush) and
//! freckles. This is what the learned correctives of the paper (Sec. 4) have to pick up, so the
//! synthetic "world" must contain it.
//!
//! Regions come from [`SoftRegions`] of the model's mean face; positions are in its normalised
//! frontal coordinates (units of the inter-ocular distance, origin between the eyes, +y up).

use crate::face_model::regions::SoftRegions;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Probability of each extra, per identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtrasConfig {
    pub p_beard: f32,
    pub p_lipstick: f32,
    pub p_eye_shadow: f32,
    pub p_blush: f32,
    pub p_freckles: f32,
}

impl Default for ExtrasConfig {
    fn default() -> Self {
        ExtrasConfig { p_beard: 0.3, p_lipstick: 0.2, p_eye_shadow: 0.2, p_blush: 0.2, p_freckles: 0.2 }
    }
}

/// A beard or stubble: `density` in [0, 1] scales how much of the beard zone is covered; the
/// mask is modulated by low-frequency waves and per-vertex speckle so that it is patchy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Beard {
    pub density: f32,
    pub colour: [f32; 3],
    /// Low-frequency modulation: (kx, ky, phase, amplitude) of each wave, coordinates in
    /// inter-ocular units.
    pub waves: Vec<[f32; 4]>,
}

/// A colour painted over a region with an opacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tint {
    pub colour: [f32; 3],
    pub opacity: f32,
}

/// Freckles: small dark spots, each (x, y, radius) in inter-ocular units with a darkness. They
/// are painted per vertex, so on a coarse mesh a spot is as large as a vertex's neighbourhood.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Freckles {
    pub spots: Vec<[f32; 3]>,
    pub darkness: f32,
}

/// The extras drawn for one identity; `None` = not applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extras {
    /// Names of the extras that were applied, in painting order.
    pub applied: Vec<String>,
    pub beard: Option<Beard>,
    pub lipstick: Option<Tint>,
    pub eye_shadow: Option<Tint>,
    pub blush: Option<Tint>,
    pub freckles: Option<Freckles>,
    /// Seed of the per-vertex speckle of the beard mask.
    pub speckle_seed: u64,
}

const HAIR: [[f32; 3]; 5] =
    [[0.04, 0.035, 0.03], [0.10, 0.07, 0.05], [0.19, 0.12, 0.07], [0.33, 0.14, 0.06], [0.36, 0.35, 0.34]];
const LIPSTICK: [[f32; 3]; 5] =
    [[0.62, 0.05, 0.08], [0.80, 0.25, 0.38], [0.42, 0.08, 0.20], [0.70, 0.40, 0.33], [0.85, 0.12, 0.10]];
const EYE_SHADOW: [[f32; 3]; 5] =
    [[0.30, 0.20, 0.15], [0.35, 0.20, 0.45], [0.20, 0.30, 0.55], [0.40, 0.40, 0.42], [0.65, 0.50, 0.25]];
const BLUSH: [[f32; 3]; 3] = [[0.85, 0.40, 0.45], [0.80, 0.35, 0.30], [0.90, 0.50, 0.55]];

fn pick(rng: &mut Rng, palette: &[[f32; 3]]) -> [f32; 3] {
    let c = palette[rng.below(palette.len())];
    let s = rng.range(0.85, 1.15) as f32;
    c.map(|x| (x * s).clamp(0.0, 1.0))
}

fn coin(rng: &mut Rng, p: f32) -> bool {
    rng.uniform() < p as f64
}

/// Draw the extras of one identity. The number of draws per extra is fixed whether or not it is
/// applied, so toggling one probability does not reshuffle the others.
pub fn sample(rng: &mut Rng, cfg: &ExtrasConfig) -> Extras {
    let mut e = Extras { speckle_seed: rng.next_u64(), ..Extras::default() };

    let on = coin(rng, cfg.p_beard);
    let density = rng.range(0.3, 0.95) as f32;
    let colour = pick(rng, &HAIR);
    let waves: Vec<[f32; 4]> = (0..3)
        .map(|_| {
            [
                rng.range(-4.0, 4.0) as f32,
                rng.range(-4.0, 4.0) as f32,
                rng.range(0.0, std::f64::consts::TAU) as f32,
                rng.range(0.1, 0.3) as f32,
            ]
        })
        .collect();
    if on {
        e.beard = Some(Beard { density, colour, waves });
        e.applied.push("beard".into());
    }

    let mut tint = |p: f32, palette: &[[f32; 3]], lo: f64, hi: f64, name: &str, applied: &mut Vec<String>| {
        let on = coin(rng, p);
        let t = Tint { colour: pick(rng, palette), opacity: rng.range(lo, hi) as f32 };
        if on {
            applied.push(name.into());
            Some(t)
        } else {
            None
        }
    };
    e.lipstick = tint(cfg.p_lipstick, &LIPSTICK, 0.5, 0.9, "lipstick", &mut e.applied);
    e.eye_shadow = tint(cfg.p_eye_shadow, &EYE_SHADOW, 0.4, 0.8, "eye_shadow", &mut e.applied);
    e.blush = tint(cfg.p_blush, &BLUSH, 0.15, 0.4, "blush", &mut e.applied);

    let on = coin(rng, cfg.p_freckles);
    let n = 20 + rng.below(81);
    let darkness = rng.range(0.15, 0.35) as f32;
    let spots: Vec<[f32; 3]> = (0..n)
        .map(|_| [rng.range(-1.1, 1.1) as f32, rng.range(-1.0, 0.15) as f32, rng.range(0.015, 0.04) as f32])
        .collect();
    if on {
        e.freckles = Some(Freckles { spots, darkness });
        e.applied.push("freckles".into());
    }
    e
}

fn lerp(a: [f32; 3], b: [f32; 3], w: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * w, a[1] + (b[1] - a[1]) * w, a[2] + (b[2] - a[2]) * w]
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Largest blend weight of the beard colour: even a dense beard lets some skin through, which
/// keeps it from reading as a black mask at image resolution.
const BEARD_MAX: f32 = 0.85;

/// Paint `extras` onto `reflectance` (`[N, 3]`) and clamp it to [0, 1]. `chin_y` is the chin's
/// (landmark 8) normalised y: the beard fades out on the neck below it, which models with a
/// neck (ICT-FaceKit) would otherwise cover down to their cut.
pub fn apply(extras: &Extras, regions: &SoftRegions, chin_y: f32, reflectance: &mut [[f32; 3]]) {
    let mut speckle = Rng::new(extras.speckle_seed);
    for (i, r) in reflectance.iter_mut().enumerate() {
        // One speckle draw per vertex whatever is applied, so vertex i always sees the same value.
        let grain = speckle.uniform() as f32;
        let [x, y] = regions.coords[i];
        let lips = regions.lips[i];
        if let Some(b) = &extras.beard {
            let wave: f32 = b.waves.iter().map(|w| w[3] * (w[0] * x + w[1] * y + w[2]).sin()).sum();
            let m = (b.density * (1.0 + wave) + 0.35 * (grain - 0.5)).clamp(0.0, 1.0);
            // Lips stay bare; the beard zone already includes the moustache above them.
            let neck = smoothstep(chin_y - 0.45, chin_y - 0.1, y);
            let w = BEARD_MAX * regions.beard[i] * (1.0 - lips) * neck * m;
            *r = lerp(*r, b.colour, w);
        }
        if let Some(t) = &extras.lipstick {
            *r = lerp(*r, t.colour, lips * t.opacity);
        }
        if let Some(t) = &extras.eye_shadow {
            // Upper lids: the eye region above the eye line (y = 0 between the eyes).
            let w = regions.eyes[i] * smoothstep(-0.04, 0.08, y);
            *r = lerp(*r, t.colour, w * t.opacity);
        }
        if let Some(t) = &extras.blush {
            *r = lerp(*r, t.colour, regions.cheeks[i] * (1.0 - lips) * t.opacity);
        }
        if let Some(f) = &extras.freckles {
            let mut w = 0.0f32;
            for s in &f.spots {
                let d2 = (x - s[0]).powi(2) + (y - s[1]).powi(2);
                w = w.max((-d2 / (s[2] * s[2])).exp());
            }
            let skin = regions.front[i] * (1.0 - lips) * (1.0 - regions.eyes[i]) * (1.0 - regions.brows[i]);
            let k = f.darkness * w * skin;
            // Brown spots: blue drops most.
            *r = [r[0] * (1.0 - 0.8 * k), r[1] * (1.0 - k), r[2] * (1.0 - 1.2 * k).max(0.0)];
        }
        *r = r.map(|c| c.clamp(0.0, 1.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face_model::demo::demo_model;

    fn lum(c: [f32; 3]) -> f32 {
        c[0] + c[1] + c[2]
    }

    #[test]
    fn extras_darken_and_tint_their_regions_only() {
        let model = demo_model();
        let regions = SoftRegions::of_model(&model);
        let base = crate::face_model::to_vec3(&model.mean_albedo);
        let chin_y = regions.coords[model.landmarks[8] as usize][1];
        let all = ExtrasConfig { p_beard: 1.0, p_lipstick: 1.0, p_eye_shadow: 1.0, p_blush: 1.0, p_freckles: 1.0 };
        let e = sample(&mut Rng::new(5), &all);
        assert_eq!(e.applied, ["beard", "lipstick", "eye_shadow", "blush", "freckles"]);
        let beard_only = Extras { lipstick: None, eye_shadow: None, blush: None, freckles: None, ..e.clone() };
        let mut r = base.clone();
        apply(&beard_only, &regions, chin_y, &mut r);
        // The beard zone gets darker on average; the forehead (far from every region) is unchanged.
        let zone: Vec<usize> = (0..r.len()).filter(|&i| regions.beard[i] > 0.9 && regions.lips[i] < 0.01).collect();
        assert!(!zone.is_empty());
        let before: f32 = zone.iter().map(|&i| lum(base[i])).sum();
        let after: f32 = zone.iter().map(|&i| lum(r[i])).sum();
        assert!(after < 0.8 * before, "beard zone {before} -> {after}");
        let forehead = (0..r.len()).find(|&i| regions.coords[i][1] > 0.8 && regions.front[i] > 0.9).unwrap();
        assert_eq!(r[forehead], base[forehead]);
        // Nothing applied: reflectance only clamped.
        let none = sample(
            &mut Rng::new(5),
            &ExtrasConfig { p_beard: 0.0, p_lipstick: 0.0, p_eye_shadow: 0.0, p_blush: 0.0, p_freckles: 0.0 },
        );
        assert!(none.applied.is_empty());
        let mut r = base.clone();
        apply(&none, &regions, chin_y, &mut r);
        assert_eq!(r, base);
        // Lipstick moves the lips toward its colour.
        let lip = (0..r.len()).max_by(|&a, &b| regions.lips[a].total_cmp(&regions.lips[b])).unwrap();
        let lipstick = Extras { lipstick: e.lipstick.clone(), ..none.clone() };
        let mut r = base.clone();
        apply(&lipstick, &regions, chin_y, &mut r);
        let t = e.lipstick.as_ref().unwrap();
        let dist = |a: [f32; 3], b: [f32; 3]| (0..3).map(|k| (a[k] - b[k]).abs()).sum::<f32>();
        assert!(dist(r[lip], t.colour) < dist(base[lip], t.colour));
    }
}
