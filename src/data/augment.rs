//! Training-time augmentation of stored crops: shift and scale (an axis-aligned affine resample),
//! horizontal flip with iBUG-68 re-ordering, and colour jitter. Landmarks move with the pixels.
//!
//! Geometry: a crop point p (continuous pixel coordinates, conventions.md) moves to
//! `q = s * (p - c) + c + t` with `c = (S/2, S/2)`; s > 1 zooms in. A flip then mirrors
//! `x' = S - x` and renames landmark i to `IBUG68_FLIP[i]` (the subject's right eye corner 36
//! becomes the left eye corner 45 of the mirrored face). Pixels are resampled bilinearly at
//! pixel centres with edge replication outside the crop (the same rule as `Pad::Edge`).
//! Landmarks pushed outside the crop keep their confidence: the coordinates are still correct.

use super::dataset::Record;
use super::landmarks::N_LANDMARKS;
use super::scheme::IBUG68_FLIP;
use crate::rng::Rng;

/// The ranges (a config section, hence defined in `config`).
pub use crate::config::Augment;

impl Augment {
    /// Draw one sample's parameters. Always consumes the same number of random values, so
    /// the stream does not depend on which augmentations are enabled.
    pub fn draw(&self, rng: &mut Rng) -> Draw {
        let mut u = || rng.uniform() as f32;
        let [lo, hi] = self.scale_range;
        let scale = lo + (hi - lo) * u();
        let shift = [self.shift_px * (2.0 * u() - 1.0), self.shift_px * (2.0 * u() - 1.0)];
        let flip = u() < self.flip_prob;
        let j = self.color_jitter;
        let gain = [1.0 + j * (u() - 0.5), 1.0 + j * (u() - 0.5), 1.0 + j * (u() - 0.5)];
        let brightness = 1.0 + j * (2.0 * u() - 1.0);
        let contrast = 1.0 + j * (2.0 * u() - 1.0);
        Draw { scale, shift, flip, gain, brightness, contrast }
    }
}

/// The parameters applied to one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    pub scale: f32,
    pub shift: [f32; 2],
    pub flip: bool,
    pub gain: [f32; 3],
    pub brightness: f32,
    pub contrast: f32,
}

impl Draw {
    /// No change.
    pub const IDENTITY: Draw =
        Draw { scale: 1.0, shift: [0.0, 0.0], flip: false, gain: [1.0; 3], brightness: 1.0, contrast: 1.0 };

    fn moves_pixels(&self) -> bool {
        self.scale != 1.0 || self.shift != [0.0, 0.0]
    }

    fn changes_colour(&self) -> bool {
        self.gain != [1.0; 3] || self.brightness != 1.0 || self.contrast != 1.0
    }
}

/// Map one axis of the output grid to source sample positions: for output index o, the two
/// source indices and the weight of the second, with edge clamping.
fn axis_taps(size: usize, scale: f32, shift: f32, flip: bool) -> Vec<(usize, usize, f32)> {
    let s = size as f32;
    let c = 0.5 * s;
    (0..size)
        .map(|o| {
            let mut q = o as f32 + 0.5;
            if flip {
                q = s - q;
            }
            let p = (q - c - shift) / scale + c - 0.5; // source position in pixel-index units
            let f = p.floor();
            let w = p - f;
            let i0 = (f as i64).clamp(0, size as i64 - 1) as usize;
            let i1 = (f as i64 + 1).clamp(0, size as i64 - 1) as usize;
            (i0, i1, w)
        })
        .collect()
}

/// Render `rec` with `d` into one batch slot.
///
/// # Shapes
/// `rec.image` `[S, S, 3]` u8; `img` `[3, S, S]` f32 in [0, 1]; `lm` `[68, 2]`; `conf` `[68]`.
pub fn apply(rec: &Record, size: usize, d: &Draw, img: &mut [f32], lm: &mut [f32], conf: &mut [f32]) {
    let plane = size * size;
    debug_assert_eq!(rec.image.len(), plane * 3);
    debug_assert_eq!(img.len(), plane * 3);
    let src = &rec.image;
    // Colour jitter as one affine map per channel, v01 = a[c] * v255 + b, fused into the pixel
    // pass. The contrast pivot is the jittered mean of the stored crop (not of the shifted
    // one): any pivot near the mean serves, and this one costs no extra pass over the output.
    let (a, b, clamp) = if d.changes_colour() {
        let mut sums = [0u64; 3];
        for px in src.chunks_exact(3) {
            for c in 0..3 {
                sums[c] += px[c] as u64;
            }
        }
        let g: [f32; 3] = std::array::from_fn(|c| d.gain[c] * d.brightness / 255.0);
        let mean = (0..3).map(|c| sums[c] as f32 / plane as f32 * g[c]).sum::<f32>() / 3.0;
        (g.map(|gc| gc * d.contrast), mean * (1.0 - d.contrast), true)
    } else {
        ([1.0 / 255.0; 3], 0.0, false)
    };
    let put = |v255: f32, c: usize| {
        let v = v255 * a[c] + b;
        if clamp { v.clamp(0.0, 1.0) } else { v }
    };
    if d.moves_pixels() {
        let xs = axis_taps(size, d.scale, d.shift[0], d.flip);
        let ys = axis_taps(size, d.scale, d.shift[1], false);
        // Separable bilinear: blend the two source rows once (contiguous, vectorisable), then
        // pick and blend columns from that row.
        let mut row = vec![0.0f32; size * 3];
        for (y, &(y0, y1, wy)) in ys.iter().enumerate() {
            let (r0, r1) = (&src[y0 * size * 3..(y0 + 1) * size * 3], &src[y1 * size * 3..(y1 + 1) * size * 3]);
            for ((o, &p0), &p1) in row.iter_mut().zip(r0).zip(r1) {
                *o = p0 as f32 + wy * (p1 as f32 - p0 as f32);
            }
            for (x, &(x0, x1, wx)) in xs.iter().enumerate() {
                for c in 0..3 {
                    let (u, v) = (row[x0 * 3 + c], row[x1 * 3 + c]);
                    img[c * plane + y * size + x] = put(u + wx * (v - u), c);
                }
            }
        }
    } else if clamp {
        for y in 0..size {
            let row = &src[y * size * 3..(y + 1) * size * 3];
            for x in 0..size {
                let sx = if d.flip { size - 1 - x } else { x };
                for c in 0..3 {
                    img[c * plane + y * size + x] = put(row[sx * 3 + c] as f32, c);
                }
            }
        }
    } else {
        // Exact v / 255 (a multiply by 1/255 can differ in the last bit), so that loading
        // without augmentation returns the stored values exactly.
        let lut: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
        for y in 0..size {
            let row = &src[y * size * 3..(y + 1) * size * 3];
            for x in 0..size {
                let sx = if d.flip { size - 1 - x } else { x };
                for c in 0..3 {
                    img[c * plane + y * size + x] = lut[row[sx * 3 + c] as usize];
                }
            }
        }
    }
    let s = size as f32;
    let c = 0.5 * s;
    for i in 0..N_LANDMARKS {
        let j = if d.flip { IBUG68_FLIP[i] } else { i };
        let p = rec.landmarks[j];
        let (mut qx, qy) = if d.moves_pixels() {
            (d.scale * (p[0] - c) + c + d.shift[0], d.scale * (p[1] - c) + c + d.shift[1])
        } else {
            (p[0], p[1])
        };
        if d.flip {
            qx = s - qx;
        }
        lm[2 * i] = qx;
        lm[2 * i + 1] = qy;
        conf[i] = rec.confidence[j];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(size: usize) -> Record {
        let mut r = Rng::new(9);
        let image = (0..size * size * 3).map(|_| r.below(256) as u8).collect();
        let mut landmarks = [[0.0f32; 2]; N_LANDMARKS];
        let mut confidence = [1.0f32; N_LANDMARKS];
        for (i, p) in landmarks.iter_mut().enumerate() {
            *p = [r.range(0.0, size as f64) as f32, r.range(0.0, size as f64) as f32];
            confidence[i] = (i % 3) as f32 / 2.0;
        }
        Record { image, landmarks, confidence }
    }

    fn run(rec: &Record, size: usize, d: &Draw) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut img, mut lm, mut conf) = (vec![0.0; size * size * 3], vec![0.0; 136], vec![0.0; 68]);
        apply(rec, size, d, &mut img, &mut lm, &mut conf);
        (img, lm, conf)
    }

    /// Back to a stored record (u8 HWC), to apply a second augmentation.
    fn to_record(img: &[f32], lm: &[f32], conf: &[f32], size: usize) -> Record {
        let plane = size * size;
        let mut image = vec![0u8; plane * 3];
        for i in 0..plane {
            for ch in 0..3 {
                image[i * 3 + ch] = (img[ch * plane + i] * 255.0).round() as u8;
            }
        }
        let mut r = Record { image, landmarks: [[0.0; 2]; 68], confidence: [0.0; 68] };
        for i in 0..68 {
            r.landmarks[i] = [lm[2 * i], lm[2 * i + 1]];
            r.confidence[i] = conf[i];
        }
        r
    }

    #[test]
    fn identity_returns_the_stored_crop() {
        let rec = record(6);
        let (img, lm, conf) = run(&rec, 6, &Draw::IDENTITY);
        assert_eq!(img[0], rec.image[0] as f32 / 255.0);
        assert_eq!(img[36 + 7], rec.image[7 * 3 + 1] as f32 / 255.0); // G plane, pixel (1, 1)
        assert_eq!(lm[2 * 5 + 1], rec.landmarks[5][1]);
        assert_eq!(conf, rec.confidence.to_vec());
    }

    #[test]
    fn flip_twice_is_identity_and_swaps_eyes() {
        let size = 8;
        let rec = record(size);
        let flip = Draw { flip: true, ..Draw::IDENTITY };
        let (img1, lm1, conf1) = run(&rec, size, &flip);
        // Landmark 45 of the flipped face is the mirror of landmark 36.
        assert_eq!(lm1[90], size as f32 - rec.landmarks[36][0]);
        assert_eq!(lm1[91], rec.landmarks[36][1]);
        assert_eq!(conf1[45], rec.confidence[36]);
        // Pixel (0, y) of the flip is pixel (S-1, y) of the source.
        assert_eq!(img1[3 * size], rec.image[(3 * size + size - 1) * 3] as f32 / 255.0);
        let back = to_record(&img1, &lm1, &conf1, size);
        let (img2, lm2, conf2) = run(&back, size, &flip);
        let orig = run(&rec, size, &Draw::IDENTITY);
        assert_eq!(img2, orig.0);
        // S - (S - x) may differ from x in the last bit.
        assert!(lm2.iter().zip(&orig.1).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(conf2, orig.2);
        // The resampling path (tiny scale) flips the same way.
        let (img3, lm3, _) = run(&rec, size, &Draw { scale: 1.0 + 1e-7, ..flip });
        for (a, b) in img3.iter().zip(&img1) {
            assert!((a - b).abs() < 1e-4);
        }
        for (a, b) in lm3.iter().zip(&lm1) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn shift_and_scale_move_pixels_with_landmarks() {
        // A single bright pixel; its centre is the landmark. After an integer shift the bright
        // pixel and the landmark move together; after a scale the landmark stays on the blob's
        // centre of mass.
        let size = 32;
        let mut rec = record(size);
        rec.image.iter_mut().for_each(|v| *v = 0);
        let (px, py) = (10usize, 20usize);
        rec.image[(py * size + px) * 3] = 255;
        rec.landmarks[30] = [px as f32 + 0.5, py as f32 + 0.5];
        let d = Draw { shift: [3.0, -2.0], ..Draw::IDENTITY };
        let (img, lm, _) = run(&rec, size, &d);
        let q = (lm[60], lm[61]);
        assert_eq!(q, (13.5, 18.5));
        assert_eq!(img[18 * size + 13], 1.0);
        for (d, tol) in [
            (Draw { scale: 1.5, shift: [1.25, 0.5], ..Draw::IDENTITY }, 0.05),
            (Draw { scale: 0.9, flip: true, ..Draw::IDENTITY }, 0.05),
        ] {
            let (img, lm, _) = run(&rec, size, &d);
            let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
            for y in 0..size {
                for x in 0..size {
                    let w = img[y * size + x];
                    sx += w * (x as f32 + 0.5);
                    sy += w * (y as f32 + 0.5);
                    sw += w;
                }
            }
            // Flipping renames the point: the mirrored nose tip (30) is still 30.
            assert!(
                (sx / sw - lm[60]).abs() < tol && (sy / sw - lm[61]).abs() < tol,
                "{d:?}: {} {} vs {} {}",
                sx / sw,
                sy / sw,
                lm[60],
                lm[61]
            );
        }
    }

    #[test]
    fn colour_jitter_stays_in_range_and_draws_are_deterministic() {
        let a = Augment::standard();
        let d1 = a.draw(&mut Rng::new(4));
        let d2 = a.draw(&mut Rng::new(4));
        assert_eq!(d1, d2);
        let rec = record(8);
        let d = Draw { gain: [1.05, 0.95, 1.0], brightness: 1.1, contrast: 0.9, ..Draw::IDENTITY };
        let (img, _, _) = run(&rec, 8, &d);
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(img, run(&rec, 8, &Draw::IDENTITY).0);
        let mut none = Rng::new(1);
        let dn = Augment::none().draw(&mut none);
        assert_eq!(dn, Draw { shift: dn.shift, ..Draw::IDENTITY });
        assert_eq!(dn.shift.map(f32::abs), [0.0, 0.0]);
        assert!(Augment { scale_range: [1.1, 0.9], ..Augment::none() }.validate().is_err());
        assert!(Augment { flip_prob: 2.0, ..Augment::none() }.validate().is_err());
        assert!(Augment::standard().validate().is_ok());
    }
}
