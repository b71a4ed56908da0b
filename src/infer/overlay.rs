//! The overlay picture: the reconstruction rasterised with the source image's camera and
//! composited over the source image, with the projected model landmarks (and the given ones)
//! drawn as dots — the picture a user checks the alignment with.
//!
//! # The source-image camera
//! The crop is the square box `[x0, x0 + side) x [y0, y0 + side)` of the source image resized
//! to `S x S`, so a source point `(u_s, v_s)` sits at `u_c = (u_s - x0) s`, `v_c = (v_s - y0) s`
//! in the crop, `s = S / side` (the mapping `fml prepare` applies to landmarks). The network's
//! camera projects to the crop as `u_c = S/2 + f x / (-z)`, `v_c = S/2 - f y / (-z)`. Solving
//! for the source pixel:
//!
//! `u_s = x0 + u_c / s = (x0 + side/2) + (f side / S) x / (-z)`, and likewise for `v_s`,
//!
//! i.e. a pinhole camera with focal length `f_s = f side / S` and principal point
//! `(x0 + side/2, y0 + side/2)` — in general not the image centre.
//!
//! The rasteriser's [`Intrinsics`] has its principal point at the image centre, so the offset
//! `d = (cx_s - W/2, cy_s - H/2)` is folded into the camera-space points as the shear
//! `x' = x + d_u (-z) / f_s`, `y' = y - d_v (-z) / f_s`, `z' = z`. It projects every point where
//! the source camera does, keeps depth (so the z-buffer and perspective-correct interpolation
//! are unchanged), has determinant 1 (so every triangle keeps its orientation and back-face
//! culling its verdict), and the normals used for shading are passed unsheared.

use super::record::CameraRecord;
use crate::data::crop::FaceBox;
use crate::data::landmarks::Landmarks68;
use crate::error::{Error, Result};
use crate::render::camera::Intrinsics;
use crate::render::raster::{MAX_SUPERSAMPLE, RasterInput, from_rgb_image, rasterize, to_rgb_image};
use image::{Rgb, RgbImage};

/// How the overlay is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlayConfig {
    /// Opacity of the shaded reconstruction over the image. 0.6 by default: opaque enough to
    /// see the reconstructed shape and light, transparent enough to see the face's own
    /// features (eyes, mouth, jaw) through it and judge the alignment.
    pub alpha: f32,
    /// Rasteriser supersampling per axis (anti-aliased silhouettes).
    pub supersample: usize,
    /// Draw the projected 68 model landmarks (green) and the given landmarks (red).
    pub landmarks: bool,
    /// Dot radius in pixels; `None` = `max(1, min(W, H) / 160)`.
    pub dot_radius: Option<f32>,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig { alpha: 0.6, supersample: 2, landmarks: true, dot_radius: None }
    }
}

impl OverlayConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::invalid(format!("overlay alpha {} must be in [0, 1]", self.alpha)));
        }
        if !(1..=MAX_SUPERSAMPLE).contains(&self.supersample) {
            return Err(Error::invalid(format!(
                "overlay supersampling {} must be in 1..={MAX_SUPERSAMPLE}",
                self.supersample
            )));
        }
        if let Some(r) = self.dot_radius
            && !(r.is_finite() && r > 0.0)
        {
            return Err(Error::invalid(format!("overlay dot radius {r} must be positive")));
        }
        Ok(())
    }
}

/// The crop camera expressed in source-image pixels (module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceCamera {
    pub focal: f32,
    /// Principal point `(x0 + side/2, y0 + side/2)`.
    pub principal: [f32; 2],
    pub width: usize,
    pub height: usize,
    pub near: f32,
}

impl SourceCamera {
    /// The source camera of crop intrinsics `k` (an `S x S` crop) cut from box `b` of a
    /// `width x height` image.
    pub fn new(k: &Intrinsics, b: FaceBox, width: usize, height: usize) -> Self {
        let side = b.side as f64;
        let focal = (k.focal as f64 * side / k.width as f64) as f32;
        let principal = [(b.x0 as f64 + side * 0.5) as f32, (b.y0 as f64 + side * 0.5) as f32];
        SourceCamera { focal, principal, width, height, near: k.near }
    }

    /// Source pixel of a camera-space point; `None` at or behind the near plane, or not finite.
    pub fn project(&self, p: [f32; 3]) -> Option<[f32; 2]> {
        let d = -p[2];
        if !(d > self.near) {
            return None;
        }
        let uv = [self.principal[0] + self.focal * p[0] / d, self.principal[1] - self.focal * p[1] / d];
        uv.iter().all(|x| x.is_finite()).then_some(uv)
    }

    /// Centred intrinsics of the source image (principal point at `(W/2, H/2)`).
    pub fn centred(&self) -> Intrinsics {
        Intrinsics { focal: self.focal, width: self.width, height: self.height, near: self.near }
    }

    /// The point that [`centred`](Self::centred) projects where this camera projects `p`.
    pub fn shear(&self, p: [f32; 3]) -> [f32; 3] {
        let du = self.principal[0] - self.width as f32 * 0.5;
        let dv = self.principal[1] - self.height as f32 * 0.5;
        let d = -p[2];
        [p[0] + du * d / self.focal, p[1] - dv * d / self.focal, p[2]]
    }

    pub fn record(&self) -> CameraRecord {
        CameraRecord {
            focal_px: self.focal,
            cx: self.principal[0],
            cy: self.principal[1],
            width: self.width,
            height: self.height,
            near_mm: self.near,
        }
    }
}

/// Draw a filled disc of `colour` centred at continuous pixel position `c`.
fn dot(img: &mut RgbImage, c: [f32; 2], radius: f32, colour: [u8; 3]) {
    if !(c[0].is_finite() && c[1].is_finite()) {
        return;
    }
    let (w, h) = (img.width() as i64, img.height() as i64);
    let x0 = ((c[0] - radius).floor() as i64).max(0);
    let x1 = ((c[0] + radius).ceil() as i64).min(w - 1);
    let y0 = ((c[1] - radius).floor() as i64).max(0);
    let y1 = ((c[1] + radius).ceil() as i64).min(h - 1);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (dx, dy) = (x as f32 + 0.5 - c[0], y as f32 + 0.5 - c[1]);
            if dx * dx + dy * dy <= radius * radius {
                img.put_pixel(x as u32, y as u32, Rgb(colour));
            }
        }
    }
}

/// Render the reconstruction over `source`.
///
/// # Shapes
/// `vertices_cam`, `normals_cam`, `reflectance`: `[N, 3]` (camera frame, unsheared);
/// `triangles`: `[F, 3]`; `gamma`: `[27]`; `model_landmarks`: `[K, 2]` source pixels.
#[allow(clippy::too_many_arguments)]
pub fn render_overlay(
    source: &RgbImage,
    cam: &SourceCamera,
    vertices_cam: &[[f32; 3]],
    normals_cam: &[[f32; 3]],
    reflectance: &[[f32; 3]],
    triangles: &[[u32; 3]],
    gamma: &[f32],
    model_landmarks: &[[f32; 2]],
    given: Option<&Landmarks68>,
    cfg: &OverlayConfig,
) -> Result<RgbImage> {
    let (w, h) = (source.width() as usize, source.height() as usize);
    if (w, h) != (cam.width, cam.height) {
        return Err(Error::invalid(format!(
            "overlay: the camera is for {}x{}, the image is {w}x{h}",
            cam.width, cam.height
        )));
    }
    let sheared: Vec<[f32; 3]> = vertices_cam.iter().map(|&p| cam.shear(p)).collect();
    let out = rasterize(&RasterInput {
        vertices_cam: &sheared,
        normals_cam,
        reflectance,
        triangles,
        gamma,
        intrinsics: cam.centred(),
        cull_backfaces: true,
        supersample: cfg.supersample,
    })?;
    let bg = from_rgb_image(source);
    let px: Vec<[f32; 3]> = out
        .color
        .iter()
        .zip(&out.coverage)
        .zip(&bg)
        .map(|((c, &cov), b)| {
            // Render colours are not premultiplied; coverage times opacity is the alpha.
            let a = cov * cfg.alpha;
            [a * c[0] + (1.0 - a) * b[0], a * c[1] + (1.0 - a) * b[1], a * c[2] + (1.0 - a) * b[2]]
        })
        .collect();
    let mut img = to_rgb_image(w, h, &px)?;
    if cfg.landmarks {
        let r = cfg.dot_radius.unwrap_or_else(|| (w.min(h) as f32 / 160.0).max(1.0));
        if let Some(lm) = given {
            for (p, &c) in lm.points.iter().zip(&lm.confidence) {
                if c > 0.0 {
                    dot(&mut img, *p, r, [255, 40, 40]);
                }
            }
        }
        for &p in model_landmarks {
            dot(&mut img, p, r, [40, 255, 40]);
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face_model::topology::vertex_normals;
    use crate::face_model::{demo::demo_model, to_vec3};
    use crate::render::camera::euler_to_matrix;
    use crate::render::raster::pose_mesh;
    use crate::render::sh;

    #[test]
    fn source_camera_projects_like_the_crop_mapped_back() {
        let k = Intrinsics { focal: 266.7, width: 64, height: 64, near: 10.0 };
        let b = FaceBox { x0: -13, y0: 41, side: 150 };
        let cam = SourceCamera::new(&k, b, 200, 120);
        let s = 64.0 / 150.0;
        for p in [[0.0f32, 0.0, -900.0], [35.0, -20.0, -700.0], [-60.0, 48.0, -1200.0]] {
            let c = k.project(p).unwrap();
            let want = [b.x0 as f32 + c[0] / s, b.y0 as f32 + c[1] / s];
            let got = cam.project(p).unwrap();
            let via_shear = cam.centred().project(cam.shear(p)).unwrap();
            for a in 0..2 {
                assert!((got[a] - want[a]).abs() < 1e-3, "{got:?} vs {want:?}");
                assert!((via_shear[a] - want[a]).abs() < 1e-3, "{via_shear:?} vs {want:?}");
            }
        }
        assert!(cam.project([0.0, 0.0, -5.0]).is_none());
        // Not finite: no point, as behind the camera.
        assert!(cam.project([f32::NAN, 0.0, -500.0]).is_none());
        assert!(cam.project([0.0, 0.0, f32::NAN]).is_none());
        assert!(k.project([f32::INFINITY, 0.0, -500.0]).is_none() && k.project([0.0, 0.0, f32::NAN]).is_none());
        assert_eq!(cam.record().cx, -13.0 + 75.0);
    }

    /// With a box of side S the source render is the crop render shifted by (x0, y0).
    #[test]
    fn overlay_render_matches_the_crop_render_shifted() {
        let model = demo_model();
        let v = to_vec3(&model.mean_shape);
        let n = vertex_normals(&v, &model.triangles);
        let k = Intrinsics { focal: 266.7, width: 64, height: 64, near: 10.0 };
        let t = crate::network::default_translation(&model, &k, 1.0 / 1.3);
        let (vc, nc) = pose_mesh(&v, &n, &euler_to_matrix([0.1, 0.3, 0.0]), t);
        let refl = vec![[0.7f32, 0.5, 0.4]; v.len()];
        let gamma = sh::neutral();
        let crop = rasterize(&RasterInput {
            vertices_cam: &vc,
            normals_cam: &nc,
            reflectance: &refl,
            triangles: &model.triangles,
            gamma: &gamma,
            intrinsics: k,
            cull_backfaces: true,
            supersample: 1,
        })
        .unwrap();
        let b = FaceBox { x0: 20, y0: 10, side: 64 };
        let cam = SourceCamera::new(&k, b, 100, 90);
        let source = RgbImage::from_pixel(100, 90, Rgb([0, 0, 255]));
        let cfg = OverlayConfig { alpha: 1.0, supersample: 1, landmarks: false, dot_radius: None };
        let img = render_overlay(&source, &cam, &vc, &nc, &refl, &model.triangles, &gamma, &[], None, &cfg).unwrap();
        // Compare inside the box (the crop render is clipped to it, the source render is not).
        let (mut covered, mut mismatched) = (0, 0);
        for y in 10..74u32 {
            for x in 20..84u32 {
                let face = img.get_pixel(x, y).0 != [0, 0, 255];
                let want = crop.coverage[((y - 10) * 64 + x - 20) as usize] > 0.0;
                covered += want as usize;
                mismatched += (face != want) as usize;
            }
        }
        assert!(covered > 800, "covered {covered}");
        // Only silhouette pixels whose centre sits within rounding of an edge may differ.
        assert!(mismatched * 200 < covered, "{mismatched} of {covered} pixels differ");
        // Above the box the head goes on in the source render.
        assert!((0..100).any(|x| img.get_pixel(x, 8).0 != [0, 0, 255]));
        // Alpha 0.6 blends; landmarks become dots of their colour.
        let cfg = OverlayConfig { alpha: 0.6, landmarks: true, dot_radius: Some(1.5), ..cfg };
        let lm = [[50.0f32, 40.0]];
        let img = render_overlay(&source, &cam, &vc, &nc, &refl, &model.triangles, &gamma, &lm, None, &cfg).unwrap();
        assert_eq!(img.get_pixel(50, 40).0, [40, 255, 40]);
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 255]);
        let centre = img.get_pixel(20 + 32, 10 + 40).0;
        assert!(centre[2] < 200 && centre[0] > 60, "{centre:?}");
        let e = render_overlay(&RgbImage::new(5, 5), &cam, &vc, &nc, &refl, &model.triangles, &gamma, &[], None, &cfg);
        assert!(e.is_err());
        assert!(OverlayConfig { alpha: 1.5, ..Default::default() }.validate().is_err());
    }
}
