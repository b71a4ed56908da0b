//! Face crops: a square box around the landmarks, cut out with padding, resized to the training
//! resolution, with the landmarks mapped into the crop.
//!
//! The paper crops "a tight face bounding box of 240 x 240 pixels" from a Haar-cascade detection.
//! We have landmarks instead of a detector box, so the box is centred on the landmark bounding
//! box and its side is `margin * max(w, h)`. The default margin 1.3 keeps the whole jaw and
//! brows with a little context, close to what a Haar box around a face covers; the landmark
//! bbox alone (margin 1) would cut the forehead.

use super::landmarks::Landmarks68;
use crate::error::{Error, Result};
use image::RgbImage;
use image::imageops::FilterType;

/// How pixels of the box that fall outside the image are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pad {
    /// Replicate the nearest edge pixel (default): no artificial hard border for the network to
    /// latch onto, and the same rule the loader's augmentation uses when it shifts a crop.
    Edge,
    /// Fill with black.
    Black,
}

/// Crop geometry and resampling.
#[derive(Clone, Debug, PartialEq)]
pub struct CropConfig {
    /// Output side in pixels (the paper, Sec. 7: 240).
    pub size: u32,
    /// Box side as a multiple of the larger side of the landmark bounding box.
    pub margin: f32,
    pub pad: Pad,
    /// Resampling filter. `Triangle` (default) is bilinear when enlarging and, because the image
    /// crate widens the kernel by the scale factor, an area-like average when shrinking, so
    /// large faces are not aliased.
    pub filter: FilterType,
}

impl Default for CropConfig {
    fn default() -> Self {
        CropConfig { size: 240, margin: 1.3, pad: Pad::Edge, filter: FilterType::Triangle }
    }
}

/// A square box in source-image pixels: columns `x0..x0+side`, rows `y0..y0+side`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FaceBox {
    pub x0: i64,
    pub y0: i64,
    pub side: i64,
}

/// A cropped face: `image` is `size x size`, `landmarks` are in crop pixel coordinates.
#[derive(Clone, Debug)]
pub struct FaceCrop {
    pub image: RgbImage,
    pub landmarks: Landmarks68,
    pub face_box: FaceBox,
}

/// The integer-aligned square box around the confident landmarks, or `None` when no landmark
/// has confidence > 0. Rounding the box to whole pixels keeps the crop itself a plain copy; the
/// landmarks are mapped with the rounded box, so no accuracy is lost.
pub fn face_box(lm: &Landmarks68, margin: f32) -> Option<FaceBox> {
    let [u0, v0, u1, v1] = lm.bbox()?;
    let (cx, cy) = ((u0 + u1) as f64 * 0.5, (v0 + v1) as f64 * 0.5);
    let side = (margin as f64 * (u1 - u0).max(v1 - v0) as f64).round().max(1.0);
    let x0 = (cx - side * 0.5).round() as i64;
    let y0 = (cy - side * 0.5).round() as i64;
    Some(FaceBox { x0, y0, side: side as i64 })
}

/// Cut `b` out of `img`, filling outside pixels per `pad`. Output is `side x side`.
pub fn extract_box(img: &RgbImage, b: FaceBox, pad: Pad) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let side = b.side as usize;
    let mut out = vec![0u8; side * side * 3];
    let src = img.as_raw();
    for (r, row) in out.chunks_exact_mut(side * 3).enumerate() {
        let sy = b.y0 + r as i64;
        if pad == Pad::Black && !(0..h).contains(&sy) {
            continue;
        }
        let sy = sy.clamp(0, h - 1) as usize;
        let src_row = &src[sy * w as usize * 3..(sy + 1) * w as usize * 3];
        // Columns of the box that lie inside the image: a straight copy.
        let lo = (-b.x0).clamp(0, b.side);
        let hi = (w - b.x0).clamp(0, b.side);
        if lo < hi {
            let s0 = (b.x0 + lo) as usize * 3;
            row[lo as usize * 3..hi as usize * 3].copy_from_slice(&src_row[s0..s0 + (hi - lo) as usize * 3]);
        }
        if pad == Pad::Edge {
            let first = &src_row[0..3];
            let last = &src_row[src_row.len() - 3..];
            for c in 0..lo.min(b.side) as usize {
                row[c * 3..c * 3 + 3].copy_from_slice(first);
            }
            for c in hi.max(0) as usize..side {
                row[c * 3..c * 3 + 3].copy_from_slice(last);
            }
        }
    }
    RgbImage::from_raw(side as u32, side as u32, out).expect("buffer size matches")
}

/// Smallest face box (source pixels) a landmark crop accepts.
pub const MIN_FACE_BOX: i64 = 8;

/// Largest box side (source pixels) cut out before resizing: the box is built whole (`side² x 3`
/// bytes, 768 MiB here), so a panorama taken whole or a huge box would otherwise exhaust memory
/// and abort without a message.
pub const MAX_BOX_SIDE: i64 = 16384;

/// An error for a box too large to cut out (see [`MAX_BOX_SIDE`]).
pub fn check_box_side(b: FaceBox) -> Result<()> {
    if b.side > MAX_BOX_SIDE {
        return Err(Error::invalid(format!(
            "the crop box of {} px exceeds {MAX_BOX_SIDE} px (it would need {:.1} GiB): crop or shrink the image first",
            b.side,
            (b.side as f64).powi(2) * 3.0 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// Crop, resize and map landmarks. Errors (with `Error::Invalid`) when no landmark is confident,
/// or the box lies off the image, is smaller than [`MIN_FACE_BOX`] or is absurdly larger than the
/// image (which only garbage landmarks produce).
pub fn crop_face(img: &RgbImage, lm: &Landmarks68, cfg: &CropConfig) -> Result<FaceCrop> {
    if cfg.size == 0 || !(cfg.margin.is_finite() && cfg.margin > 0.0) {
        return Err(Error::invalid(format!("crop size {} and margin {} must be positive", cfg.size, cfg.margin)));
    }
    let b = face_box(lm, cfg.margin).ok_or_else(|| Error::invalid("no confident landmark to place the face box"))?;
    let (w, h) = (img.width() as i64, img.height() as i64);
    // Landmarks off the image or collapsed onto one spot would give a crop of nothing but
    // padding: a wrong landmark file, not a face.
    if b.x0 >= w || b.y0 >= h || b.x0 + b.side <= 0 || b.y0 + b.side <= 0 {
        return Err(Error::invalid(format!(
            "the landmarks' face box ({}, {}, side {}) lies outside the {w}x{h} image",
            b.x0, b.y0, b.side
        )));
    }
    if b.side < MIN_FACE_BOX {
        return Err(Error::invalid(format!(
            "the landmarks span a face box of {} px (less than {MIN_FACE_BOX}): are they all at one place?",
            b.side
        )));
    }
    let limit = 4 * img.width().max(img.height()) as i64;
    if b.side > limit {
        return Err(Error::invalid(format!(
            "face box of {} px is far larger than the {}x{} image",
            b.side,
            img.width(),
            img.height()
        )));
    }
    check_box_side(b)?;
    let boxed = extract_box(img, b, cfg.pad);
    let image =
        if b.side == cfg.size as i64 { boxed } else { image::imageops::resize(&boxed, cfg.size, cfg.size, cfg.filter) };
    // The resize maps the box's edges onto the crop's edges (pixel centres at +0.5 on both
    // sides), so continuous coordinates scale about the box corner.
    let s = cfg.size as f64 / b.side as f64;
    let mut landmarks = lm.clone();
    for p in landmarks.points.iter_mut() {
        *p = [((p[0] as f64 - b.x0 as f64) * s) as f32, ((p[1] as f64 - b.y0 as f64) * s) as f32];
    }
    Ok(FaceCrop { image, landmarks, face_box: b })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn lm_box(u0: f32, v0: f32, u1: f32, v1: f32) -> Landmarks68 {
        let mut lm = Landmarks68 { points: [[0.0; 2]; 68], confidence: [1.0; 68] };
        for (i, p) in lm.points.iter_mut().enumerate() {
            let t = i as f32 / 67.0;
            *p = [u0 + (u1 - u0) * t, v0 + (v1 - v0) * (1.0 - t)];
        }
        lm
    }

    #[test]
    fn box_is_square_and_centred() {
        let b = face_box(&lm_box(10.0, 20.0, 50.0, 100.0), 1.5).unwrap();
        assert_eq!(b.side, 120);
        assert_eq!((b.x0, b.y0), (30 - 60, 60 - 60));
        let mut lm = lm_box(0.0, 0.0, 1.0, 1.0);
        lm.confidence = [0.0; 68];
        assert!(face_box(&lm, 1.3).is_none());
    }

    #[test]
    fn padding_modes() {
        let img = RgbImage::from_fn(4, 3, |x, y| Rgb([x as u8 * 10, y as u8 * 10, 7]));
        let b = FaceBox { x0: -2, y0: -1, side: 6 };
        let e = extract_box(&img, b, Pad::Edge);
        assert_eq!(e.get_pixel(0, 0).0, [0, 0, 7]);
        assert_eq!(e.get_pixel(2, 1).0, [0, 0, 7]);
        assert_eq!(e.get_pixel(5, 5).0, [30, 20, 7]);
        assert_eq!(e.get_pixel(3, 2).0, [10, 10, 7]);
        let k = extract_box(&img, b, Pad::Black);
        assert_eq!(k.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(k.get_pixel(5, 2).0, [30, 10, 7]);
        assert_eq!(k.get_pixel(3, 2).0, [10, 10, 7]);
        assert_eq!(k.get_pixel(3, 5).0, [0, 0, 0]);
        // Entirely outside on the right: edge replication still fills it.
        let far = extract_box(&img, FaceBox { x0: 10, y0: 0, side: 2 }, Pad::Edge);
        assert_eq!(far.get_pixel(1, 1).0, [30, 10, 7]);
    }

    /// A box too large to cut out is an error naming the size, not an allocation that aborts.
    #[test]
    fn a_huge_box_is_an_error() {
        let img = RgbImage::new(5000, 2);
        let lm = lm_box(100.0, 1.0, 4900.0, 1.0);
        let cfg = |margin| CropConfig { size: 16, margin, ..Default::default() };
        assert_eq!(crop_face(&img, &lm, &cfg(1.0)).unwrap().image.dimensions(), (16, 16)); // side 4800
        let e = crop_face(&img, &lm, &cfg(3.5)).unwrap_err().to_string(); // side 16800
        assert!(e.contains("16800 px exceeds") && e.contains("GiB"), "{e}");
    }

    #[test]
    fn landmarks_off_the_image_or_on_one_spot_are_errors() {
        let img = RgbImage::new(100, 80);
        let cfg = CropConfig::default();
        let at = |x: f32, y: f32| Landmarks68 { points: [[x, y]; 68], confidence: [1.0; 68] };
        let mut spread = at(0.0, 0.0);
        for (i, p) in spread.points.iter_mut().enumerate() {
            *p = [1e9 + (i % 8) as f32 * 1e7, 1e9 + (i / 8) as f32 * 1e7];
        }
        let e = crop_face(&img, &spread, &cfg).unwrap_err().to_string();
        assert!(e.contains("outside the 100x80 image"), "{e}");
        let e = crop_face(&img, &at(50.0, 40.0), &cfg).unwrap_err().to_string();
        assert!(e.contains("one place"), "{e}");
    }

    #[test]
    fn landmarks_follow_the_pixels() {
        // A bright 2x2 block centred at (41, 61) in a 100x100 image; after crop + resize the
        // mapped landmark must land on the block's centre of mass.
        let mut img = RgbImage::new(100, 100);
        for y in 60..62 {
            for x in 40..42 {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        let mut lm = lm_box(20.0, 30.0, 70.0, 90.0);
        lm.points[33] = [41.0, 61.0];
        for size in [37, 240] {
            let crop = crop_face(&img, &lm, &CropConfig { size, ..Default::default() }).unwrap();
            let (mut sx, mut sy, mut sw) = (0.0f64, 0.0f64, 0.0f64);
            for (x, y, p) in crop.image.enumerate_pixels() {
                let w = p[0] as f64;
                sx += w * (x as f64 + 0.5);
                sy += w * (y as f64 + 0.5);
                sw += w;
            }
            let q = crop.landmarks.points[33];
            let scale = size as f64 / crop.face_box.side as f64;
            assert!((sx / sw - q[0] as f64).abs() < 0.1 * scale.max(1.0), "size {size}: {} vs {}", sx / sw, q[0]);
            assert!((sy / sw - q[1] as f64).abs() < 0.1 * scale.max(1.0), "size {size}: {} vs {}", sy / sw, q[1]);
        }
    }
}
