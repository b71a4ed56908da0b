//! The procedural reflectance prior for models that have none (ICT-FaceKit, the demo model):
//! a mean skin albedo with lips and brows, plus smooth modes for skin tone, redness, lips, brows
//! and low-frequency spatial variation, so the full pipeline (shading, reflectance losses) runs.
//!
//! It is not learned from scans; it only has to span plausible, smooth reflectance so that the
//! base level behaves like a 3DMM's. Colours are linear RGB in [0, 1]; every mode is pre-scaled
//! so that its coefficient has prior std 1.

use super::FaceModel;
use super::regions::SoftRegions;

/// Mean skin reflectance (a light-to-medium tone; the tone mode spans darker and lighter skin).
pub const SKIN: [f32; 3] = [0.70, 0.50, 0.41];
const LIPS: [f32; 3] = [0.60, 0.30, 0.30];
const BROWS: [f32; 3] = [0.30, 0.22, 0.18];

/// Number of modes of the procedural prior.
pub const NUM_MODES: usize = 12;

/// Mean `[N, 3]`, basis `[K, N, 3]` (flat) and std `[K]` of the procedural prior.
pub fn procedural_prior(r: &SoftRegions) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = r.front.len();
    let mut mean = vec![0.0f32; n * 3];
    for i in 0..n {
        let lips = r.lips[i];
        let brows = r.brows[i] * (1.0 - lips);
        let skin = 1.0 - lips - brows;
        for c in 0..3 {
            mean[i * 3 + c] = skin * SKIN[c] + lips * LIPS[c] + brows * BROWS[c];
        }
    }
    // Each mode: a per-vertex weight field times a colour direction.
    type Field<'a> = Box<dyn Fn(usize) -> f32 + 'a>;
    let skinw = |i: usize| 1.0 - r.lips[i] - r.brows[i] * (1.0 - r.lips[i]);
    let modes: Vec<(Field, [f32; 3])> = vec![
        // Overall skin tone, darker <-> lighter (the largest variation between people).
        (Box::new(&skinw), [0.14, 0.11, 0.09]),
        // Redness / pinkness.
        (Box::new(&skinw), [0.035, -0.012, -0.012]),
        // Yellow <-> olive.
        (Box::new(&skinw), [0.015, 0.015, -0.03]),
        // Flushed cheeks.
        (Box::new(|i| r.cheeks[i] * skinw(i)), [0.05, -0.01, -0.005]),
        // Lip colour (redder) and lip darkness.
        (Box::new(|i| r.lips[i]), [0.07, -0.02, -0.01]),
        (Box::new(|i| r.lips[i]), [-0.05, -0.04, -0.035]),
        // Brow darkness.
        (Box::new(|i| r.brows[i]), [-0.08, -0.06, -0.05]),
        // Darker around the eyes.
        (Box::new(|i| r.eyes[i] * skinw(i)), [-0.04, -0.035, -0.03]),
        // Smooth spatial gradients of tone: vertical, horizontal, radial.
        (Box::new(|i| r.coords[i][1].clamp(-2.0, 2.0) * 0.5 * skinw(i)), [0.03, 0.025, 0.02]),
        (Box::new(|i| r.coords[i][0].clamp(-2.0, 2.0) * 0.5 * skinw(i)), [0.02, 0.016, 0.013]),
        (
            Box::new(|i| (r.coords[i][0].powi(2) + r.coords[i][1].powi(2)).min(4.0) * 0.25 * skinw(i)),
            [-0.03, -0.025, -0.02],
        ),
        // Stubble shadow in the beard zone (within a clean-shaven prior's range, small).
        (Box::new(|i| r.beard[i] * skinw(i)), [-0.03, -0.025, -0.02]),
    ];
    debug_assert_eq!(modes.len(), NUM_MODES);
    let mut basis = vec![0.0f32; NUM_MODES * n * 3];
    for (k, (field, colour)) in modes.iter().enumerate() {
        for i in 0..n {
            let w = field(i);
            for c in 0..3 {
                basis[(k * n + i) * 3 + c] = w * colour[c];
            }
        }
    }
    (mean, basis, vec![1.0; NUM_MODES])
}

/// Give `model` the procedural prior (used when a file has no reflectance model).
pub fn apply_procedural_prior(model: &mut FaceModel) {
    let r = SoftRegions::of_model(model);
    let (mean, basis, std) = procedural_prior(&r);
    model.mean_albedo = mean;
    model.albedo_basis = basis;
    model.albedo_std = std;
    model.metadata.insert("albedo".into(), "procedural prior (the source has no reflectance model)".into());
}
