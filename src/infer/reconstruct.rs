//! Reconstruction of faces in images with a trained network: cropping (box, landmarks or the
//! whole image), batched regression, meshes at both levels, the parameter record and the overlay.
//!
//! Pipeline per batch: every input is read and cropped on the CPU in parallel (the crop is the
//! one `fml prepare` makes, so the network sees what it saw in training), the crops go through
//! the network in one `[B, 3, S, S]` batch on the run's device, and each result is turned into
//! meshes, a [`ParamRecord`] and optionally an overlay on the CPU. One bad input fails alone.

use super::Trained;
use super::overlay::{OverlayConfig, SourceCamera, render_overlay};
use super::record::{
    CameraRecord, Coefficients, CorrectiveRecord, CropRecord, Illumination, ModelInfo, ParamRecord, PoseRecord,
};
use crate::data::crop::{CropConfig, FaceBox, check_box_side, crop_face, extract_box};
use crate::data::image::read_rgb8;
use crate::data::landmarks::{Landmarks68, read_landmarks_for_image};
use crate::error::{Error, Result};
use crate::face_model::topology::vertex_normals;
use crate::io::mesh::Mesh;
use crate::render::camera::{euler_to_matrix, rotate, transform};
use crate::render::sh;
use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which level of the multi-level model to output (Sec. 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The affine base model (eqs. 3-4).
    Base,
    /// Base plus learned correctives (eqs. 1-2).
    Final,
}

/// Coordinate frame of the written mesh vertices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Frame {
    /// Model frame, mm (docs/conventions.md): the face without its pose.
    Model,
    /// Camera frame, mm: `R v + t`, camera at the origin looking down -z (OpenGL style).
    Camera,
}

/// How an input image is cut to the network's face crop.
#[derive(Clone, Debug, PartialEq)]
pub enum CropSpec {
    /// The image is a ready face crop. A non-square image is extended to the square of side
    /// max(w, h) about its centre (edge-replicated), so nothing of the face is cut off and the
    /// aspect ratio is kept.
    Whole,
    /// The crop itself, `[x, y, w, h]` in source pixels (continuous coordinates, top-left
    /// origin). A non-square box becomes the square of side max(w, h) about its centre, rounded
    /// to whole pixels like the landmark box. To match training the box should be about
    /// `margin` (1.3) times the face's landmark box, as a face detector's box roughly is.
    BBox([f32; 4]),
    /// A landmark file (.pts / .land): the crop `fml prepare` makes from it.
    Landmarks(PathBuf),
    /// Landmarks in memory (source pixels).
    Points(Box<Landmarks68>),
}

/// Where an input image comes from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    File(PathBuf),
    /// A decoded image; `name` identifies it in errors and records.
    Memory {
        name: String,
        image: RgbImage,
    },
}

/// One image to reconstruct and how to crop it.
#[derive(Clone, Debug)]
pub struct InputImage {
    pub source: ImageSource,
    pub crop: CropSpec,
}

impl InputImage {
    pub fn file(path: impl Into<PathBuf>, crop: CropSpec) -> Self {
        InputImage { source: ImageSource::File(path.into()), crop }
    }

    pub fn memory(name: impl Into<String>, image: RgbImage, crop: CropSpec) -> Self {
        InputImage { source: ImageSource::Memory { name: name.into(), image }, crop }
    }

    /// The file it is read from (None for an in-memory image).
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            ImageSource::File(p) => Some(p),
            ImageSource::Memory { .. } => None,
        }
    }

    /// The file path or the in-memory name.
    pub fn name(&self) -> String {
        match &self.source {
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::Memory { name, .. } => name.clone(),
        }
    }
}

/// How a crop was obtained (recorded in the parameter file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMethod {
    Whole,
    Bbox,
    Landmarks,
}

/// Settings of a [`Reconstructor`].
#[derive(Clone, Debug)]
pub struct ReconstructOptions {
    /// Output level; `None` = final when the checkpoint has correctives, else base.
    pub level: Option<Level>,
    /// Vertex colours: reflectance shaded with the predicted SH light at the camera-space
    /// normals (instead of the reflectance itself).
    pub shaded: bool,
    pub frame: Frame,
    /// Render an overlay on the source image.
    pub overlay: Option<OverlayConfig>,
    /// Crop margin, padding and resampling (the size is always the network's input size).
    /// Defaults to `fml prepare`'s.
    pub crop: CropConfig,
}

impl Default for ReconstructOptions {
    fn default() -> Self {
        ReconstructOptions {
            level: None,
            shaded: false,
            frame: Frame::Model,
            overlay: None,
            crop: CropConfig::default(),
        }
    }
}

/// The reconstruction of one image.
#[derive(Clone, Debug)]
pub struct Reconstruction {
    /// The input's name (its path for files).
    pub name: String,
    /// Base-level mesh (model triangles, colours per [`ReconstructOptions::shaded`]).
    pub base: Mesh,
    /// Final-level mesh; `None` when the checkpoint has no correctives.
    pub fine: Option<Mesh>,
    /// The level [`mesh`](Self::mesh) returns.
    pub level: Level,
    /// Every regressed parameter with the crop and cameras.
    pub params: ParamRecord,
    /// The reconstruction drawn over the source image (when asked for).
    pub overlay: Option<RgbImage>,
}

impl Reconstruction {
    /// The mesh of the selected level.
    pub fn mesh(&self) -> &Mesh {
        match (self.level, &self.fine) {
            (Level::Final, Some(m)) => m,
            _ => &self.base,
        }
    }
}

/// A cropped input ready for the network.
struct Prepared {
    name: String,
    source: RgbImage,
    /// `S x S`.
    crop: RgbImage,
    face_box: FaceBox,
    method: CropMethod,
    /// Given landmarks in source pixels (drawn on the overlay).
    landmarks: Option<Landmarks68>,
}

/// The network's outputs for one image, on the host.
struct HostPrediction {
    z_shape: Vec<f32>,
    z_expr: Vec<f32>,
    z_albedo: Vec<f32>,
    gamma: Vec<f32>,
    rotation: [f32; 3],
    translation: [f32; 3],
    corr_geometry: Option<Vec<f32>>,
    corr_reflectance: Option<Vec<f32>>,
    /// `[N, 3]` each.
    base_geometry: Vec<[f32; 3]>,
    base_reflectance: Vec<[f32; 3]>,
    fine_geometry: Option<Vec<[f32; 3]>>,
    fine_reflectance: Option<Vec<[f32; 3]>>,
}

/// The square box for a user's `[x, y, w, h]`: side `max(w, h)` about the box centre, rounded to
/// whole pixels (as [`crate::data::crop::face_box`] rounds the landmark box).
pub fn bbox_to_face_box(b: [f32; 4]) -> Result<FaceBox> {
    let [x, y, w, h] = b;
    if !(x.is_finite() && y.is_finite() && w.is_finite() && h.is_finite()) || w <= 0.0 || h <= 0.0 {
        return Err(Error::invalid(format!("bbox {x},{y},{w},{h}: need finite x, y and positive w, h")));
    }
    let side = (w.max(h) as f64).round().max(1.0);
    let (cx, cy) = (x as f64 + w as f64 * 0.5, y as f64 + h as f64 * 0.5);
    Ok(FaceBox { x0: (cx - side * 0.5).round() as i64, y0: (cy - side * 0.5).round() as i64, side: side as i64 })
}

/// The square box that makes a whole `width x height` image the crop.
pub fn whole_image_box(width: u32, height: u32) -> FaceBox {
    let side = width.max(height) as i64;
    // Floor division keeps the box integral; an odd difference leaves the extra pixel at the end.
    FaceBox { x0: (width as i64 - side).div_euclid(2), y0: (height as i64 - side).div_euclid(2), side }
}

/// Cut box `b` from `img` and resize it to `cfg.size`, exactly as [`crop_face`] does.
fn crop_box(img: &RgbImage, b: FaceBox, cfg: &CropConfig) -> Result<RgbImage> {
    check_box_side(b)?;
    let boxed = extract_box(img, b, cfg.pad);
    Ok(if b.side == cfg.size as i64 { boxed } else { image::imageops::resize(&boxed, cfg.size, cfg.size, cfg.filter) })
}

/// Crop `img` per `spec`: the `S x S` crop, its box in source pixels, the method, and the given
/// landmarks (if any). `name` names the image in errors.
fn crop_input(
    img: &RgbImage,
    spec: &CropSpec,
    cfg: &CropConfig,
    name: &str,
) -> Result<(RgbImage, FaceBox, CropMethod, Option<Landmarks68>)> {
    let (w, h) = img.dimensions();
    let from_landmarks = |lm: Landmarks68, origin: &str| -> Result<_> {
        let c = crop_face(img, &lm, cfg).map_err(|e| Error::invalid(format!("{name}{origin}: {e}")))?;
        Ok((c.image, c.face_box, CropMethod::Landmarks, Some(lm)))
    };
    match spec {
        CropSpec::Whole => {
            let b = whole_image_box(w, h);
            let crop = crop_box(img, b, cfg).map_err(|e| Error::invalid(format!("{name}: {e}")))?;
            Ok((crop, b, CropMethod::Whole, None))
        }
        CropSpec::BBox(r) => {
            let b = bbox_to_face_box(*r).map_err(|e| Error::invalid(format!("{name}: {e}")))?;
            if b.x0 >= w as i64 || b.y0 >= h as i64 || b.x0 + b.side <= 0 || b.y0 + b.side <= 0 {
                return Err(Error::invalid(format!(
                    "{name}: bbox {},{},{},{} lies outside the {w}x{h} image",
                    r[0], r[1], r[2], r[3]
                )));
            }
            if b.side > 4 * w.max(h) as i64 {
                return Err(Error::invalid(format!(
                    "{name}: bbox of {} px is far larger than the {w}x{h} image",
                    b.side
                )));
            }
            let crop = crop_box(img, b, cfg).map_err(|e| Error::invalid(format!("{name}: {e}")))?;
            Ok((crop, b, CropMethod::Bbox, None))
        }
        CropSpec::Landmarks(path) => {
            from_landmarks(read_landmarks_for_image(path, h)?, &format!(" (landmarks {})", path.display()))
        }
        CropSpec::Points(lm) => from_landmarks((**lm).clone(), ""),
    }
}

/// Crop images `[S, S, 3]` u8 to the encoder's `[B, 3, S, S]` in [0, 1] (same `v / 255` as the
/// training loader).
fn to_batch(crops: &[&RgbImage], s: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = crops.iter().flat_map(|img| crate::data::image::rgb8_to_planar(img.as_raw())).collect();
    Ok(Tensor::from_vec(data, (crops.len(), 3, s, s), device)?)
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_device(&Device::Cpu)?.to_vec2::<f32>()?)
}

/// `[B, N, 3]` -> B host arrays of N points.
fn points(t: &Tensor) -> Result<Vec<Vec<[f32; 3]>>> {
    let flat = t.flatten_from(1)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    Ok(flat.into_iter().map(|v| v.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()).collect())
}

fn arr3(v: &[f32]) -> [f32; 3] {
    [v[0], v[1], v[2]]
}

/// Runs a trained network on images.
pub struct Reconstructor {
    trained: Trained,
    opts: ReconstructOptions,
    level: Level,
    crop: CropConfig,
}

impl Reconstructor {
    /// Check the options against the run: `Level::Final` needs a checkpoint with correctives.
    ///
    /// Choice: asking for the final level of a base-only (pretraining) checkpoint is an error
    /// rather than a silent fallback, since the user would otherwise believe they see the
    /// corrective level. Leaving the level unset picks the best the checkpoint has.
    pub fn new(trained: Trained, opts: ReconstructOptions) -> Result<Self> {
        let has_correctives = trained.net.layout.correctives > 0;
        let level = match opts.level {
            Some(Level::Final) if !has_correctives => {
                return Err(Error::invalid(format!(
                    "{} has no corrective level (a base-only, pretraining checkpoint): use --level base, or a \
                     checkpoint from `fml finetune`",
                    trained.source.display()
                )));
            }
            Some(l) => l,
            None if has_correctives => Level::Final,
            None => Level::Base,
        };
        if let Some(o) = &opts.overlay {
            o.validate()?;
        }
        let crop = CropConfig { size: trained.net.intrinsics().width as u32, ..opts.crop.clone() };
        Ok(Reconstructor { trained, opts, level, crop })
    }

    /// The level written as "the" mesh.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The loaded run.
    pub fn trained(&self) -> &Trained {
        &self.trained
    }

    /// Reconstruct one image.
    pub fn reconstruct(&self, input: &InputImage) -> Result<Reconstruction> {
        self.reconstruct_batch(std::slice::from_ref(input)).pop().expect("one result per input")
    }

    /// Reconstruct a batch: one result per input, in order. A failing input (unreadable image,
    /// bad landmarks, box outside the image, non-finite prediction) fails alone.
    pub fn reconstruct_batch(&self, inputs: &[InputImage]) -> Vec<Result<Reconstruction>> {
        let prepared: Vec<Result<Prepared>> = inputs.par_iter().map(|i| self.prepare(i)).collect();
        let ok: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        let predictions = if ok.is_empty() { Ok(Vec::new()) } else { self.predict(&ok) };
        let mut predictions = match predictions {
            Ok(p) => p.into_iter().map(Some).collect::<Vec<_>>(),
            Err(e) => {
                let msg = e.to_string();
                return prepared
                    .into_iter()
                    .map(|p| p.and_then(|p| Err(Error::invalid(format!("{}: prediction failed: {msg}", p.name)))))
                    .collect();
            }
        };
        // Pair each prepared input with its prediction (predictions are in the order of `ok`).
        let mut next = 0;
        let jobs: Vec<(Result<Prepared>, Option<HostPrediction>)> = prepared
            .into_iter()
            .map(|p| {
                let pred = if p.is_ok() {
                    next += 1;
                    predictions[next - 1].take()
                } else {
                    None
                };
                (p, pred)
            })
            .collect();
        jobs.into_par_iter()
            .map(|(p, pred)| {
                let p = p?;
                self.finish(&p, pred.expect("a prediction for every prepared input"))
            })
            .collect()
    }

    fn prepare(&self, input: &InputImage) -> Result<Prepared> {
        let name = input.name();
        let source = match &input.source {
            ImageSource::File(p) => read_rgb8(p)?,
            ImageSource::Memory { image, .. } => {
                if image.width() == 0 || image.height() == 0 {
                    return Err(Error::invalid(format!("{name}: image has zero width or height")));
                }
                image.clone()
            }
        };
        let (crop, face_box, method, landmarks) = crop_input(&source, &input.crop, &self.crop, &name)?;
        Ok(Prepared { name, source, crop, face_box, method, landmarks })
    }

    /// Regress a batch and bring every output to the host.
    fn predict(&self, batch: &[&Prepared]) -> Result<Vec<HostPrediction>> {
        let net = &self.trained.net;
        let s = net.intrinsics().width;
        let crops: Vec<&RgbImage> = batch.iter().map(|p| &p.crop).collect();
        let images = to_batch(&crops, s, &net.device)?; // [B, 3, S, S]
        let pred = net.predict(&images)?;
        let p = &pred.params;
        let (zs, ze, za, g) = (rows(&p.z_shape)?, rows(&p.z_expr)?, rows(&p.z_albedo)?, rows(&p.gamma)?);
        let (rot, tr) = (rows(&p.rotation)?, rows(&p.translation)?);
        let cg = p.corr_geometry.as_ref().map(rows).transpose()?;
        let cr = p.corr_reflectance.as_ref().map(rows).transpose()?;
        let bg = points(&pred.levels.base_geometry)?; // B x [N, 3]
        let br = points(&pred.levels.base_reflectance)?;
        let fine = pred.levels.geometry_offset.is_some();
        let fg = if fine { Some(points(&pred.levels.final_geometry()?)?) } else { None };
        let fr = if fine { Some(points(&pred.levels.final_reflectance()?)?) } else { None };
        let b = batch.len();
        let mut out = Vec::with_capacity(b);
        let (mut zs, mut ze, mut za, mut g) = (zs.into_iter(), ze.into_iter(), za.into_iter(), g.into_iter());
        let (mut bg, mut br) = (bg.into_iter(), br.into_iter());
        let mut cg = cg.map(|v| v.into_iter());
        let mut cr = cr.map(|v| v.into_iter());
        let mut fg = fg.map(|v| v.into_iter());
        let mut fr = fr.map(|v| v.into_iter());
        for i in 0..b {
            out.push(HostPrediction {
                z_shape: zs.next().expect("B rows"),
                z_expr: ze.next().expect("B rows"),
                z_albedo: za.next().expect("B rows"),
                gamma: g.next().expect("B rows"),
                rotation: arr3(&rot[i]),
                translation: arr3(&tr[i]),
                corr_geometry: cg.as_mut().and_then(|c| c.next()),
                corr_reflectance: cr.as_mut().and_then(|c| c.next()),
                base_geometry: bg.next().expect("B rows"),
                base_reflectance: br.next().expect("B rows"),
                fine_geometry: fg.as_mut().and_then(|c| c.next()),
                fine_reflectance: fr.as_mut().and_then(|c| c.next()),
            });
        }
        Ok(out)
    }

    /// Per-vertex colours: reflectance, or reflectance shaded by the SH light at the
    /// camera-space normals `R n`; clamped to [0, 1].
    fn colours(&self, refl: &[[f32; 3]], normals: &[[f32; 3]], r: &[[f32; 3]; 3], gamma: &[f32]) -> Vec<[f32; 3]> {
        refl.iter()
            .zip(normals)
            .map(|(&c, &n)| {
                let c = if self.opts.shaded { sh::shade(gamma, rotate(r, n), c) } else { c };
                c.map(|x| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) })
            })
            .collect()
    }

    fn mesh(
        &self,
        geometry: &[[f32; 3]],
        refl: &[[f32; 3]],
        normals: &[[f32; 3]],
        r: &[[f32; 3]; 3],
        p: &HostPrediction,
    ) -> Mesh {
        let vertices = match self.opts.frame {
            Frame::Model => geometry.to_vec(),
            Frame::Camera => geometry.iter().map(|&v| transform(r, p.translation, v)).collect(),
        };
        Mesh {
            vertices,
            triangles: self.trained.net.face_model.triangles.clone(),
            colors: Some(self.colours(refl, normals, r, &p.gamma)),
        }
    }

    /// Meshes, parameter record and overlay of one image.
    fn finish(&self, prep: &Prepared, p: HostPrediction) -> Result<Reconstruction> {
        let all_finite = [&p.z_shape, &p.z_expr, &p.z_albedo, &p.gamma]
            .into_iter()
            .chain(p.corr_geometry.iter())
            .chain(p.corr_reflectance.iter())
            .all(|v| v.iter().all(|x| x.is_finite()))
            && p.rotation.iter().chain(&p.translation).all(|x| x.is_finite())
            && p.base_geometry.iter().flatten().all(|x| x.is_finite())
            && p.fine_geometry.iter().flatten().flatten().all(|x| x.is_finite());
        if !all_finite {
            return Err(Error::NonFinite(format!("{}: the network's prediction", prep.name)));
        }
        let model = &self.trained.net.face_model;
        let r = euler_to_matrix(p.rotation);
        let base_normals = vertex_normals(&p.base_geometry, &model.triangles);
        let base = self.mesh(&p.base_geometry, &p.base_reflectance, &base_normals, &r, &p);
        let (fine, fine_normals) = match (&p.fine_geometry, &p.fine_reflectance) {
            (Some(g), Some(c)) => {
                let n = vertex_normals(g, &model.triangles);
                (Some(self.mesh(g, c, &n, &r, &p)), Some(n))
            }
            _ => (None, None),
        };
        let (geometry, refl, normals) = match (self.level, &p.fine_geometry, &p.fine_reflectance, &fine_normals) {
            (Level::Final, Some(g), Some(c), Some(n)) => (g, c, n),
            _ => (&p.base_geometry, &p.base_reflectance, &base_normals),
        };

        let k = self.trained.net.intrinsics();
        let (w, h) = prep.source.dimensions();
        let cam = SourceCamera::new(&k, prep.face_box, w as usize, h as usize);
        let verts_cam: Vec<[f32; 3]> = geometry.iter().map(|&v| transform(&r, p.translation, v)).collect();
        let landmarks: Vec<Option<[f32; 2]>> =
            model.landmarks.iter().map(|&i| cam.project(verts_cam[i as usize])).collect();

        let params = self.record(prep, &p, &r, &k, &cam, landmarks.clone());
        let overlay = match &self.opts.overlay {
            Some(cfg) => {
                let normals_cam: Vec<[f32; 3]> = normals.iter().map(|&n| rotate(&r, n)).collect();
                let lm: Vec<[f32; 2]> = landmarks.iter().flatten().copied().collect();
                Some(render_overlay(
                    &prep.source,
                    &cam,
                    &verts_cam,
                    &normals_cam,
                    refl,
                    &model.triangles,
                    &p.gamma,
                    &lm,
                    prep.landmarks.as_ref(),
                    cfg,
                )?)
            }
            None => None,
        };
        Ok(Reconstruction { name: prep.name.clone(), base, fine, level: self.level, params, overlay })
    }

    fn record(
        &self,
        prep: &Prepared,
        p: &HostPrediction,
        r: &[[f32; 3]; 3],
        k: &crate::render::camera::Intrinsics,
        cam: &SourceCamera,
        landmarks: Vec<Option<[f32; 2]>>,
    ) -> ParamRecord {
        let t = &self.trained;
        let model = &t.net.face_model;
        let coeffs = |z: &[f32], std: &[f32]| Coefficients {
            z: z.to_vec(),
            value: z.iter().zip(std).map(|(a, b)| a * b).collect(),
        };
        let (w, h) = prep.source.dimensions();
        let b = prep.face_box;
        ParamRecord {
            format: ParamRecord::FORMAT.into(),
            input: prep.name.clone(),
            checkpoint: t.source.display().to_string(),
            checkpoint_stage: t.meta.stage.clone(),
            checkpoint_step: t.meta.step,
            model: ModelInfo {
                name: model.meta("name").to_string(),
                vertices: model.num_vertices(),
                triangles: model.triangles.len(),
            },
            level: self.level,
            mesh_frame: self.opts.frame,
            mesh_colours: if self.opts.shaded { "shaded".into() } else { "reflectance".into() },
            image_size: [w, h],
            crop: CropRecord {
                method: prep.method,
                x0: b.x0,
                y0: b.y0,
                side: b.side,
                size: k.width,
                scale: k.width as f64 / b.side as f64,
            },
            crop_camera: CameraRecord::centred(k),
            source_camera: cam.record(),
            pose: PoseRecord::new(p.rotation, r, p.translation),
            shape: coeffs(&p.z_shape, &model.shape_std),
            expression: coeffs(&p.z_expr, &model.expr_std),
            reflectance: coeffs(&p.z_albedo, &model.albedo_std),
            illumination: Illumination::new(&p.gamma),
            correctives: match (&p.corr_geometry, &p.corr_reflectance) {
                (Some(g), Some(c)) => Some(CorrectiveRecord { geometry: g.clone(), reflectance: c.clone() }),
                _ => None,
            },
            landmarks,
        }
    }
}

/// Where `path` would have its landmarks beside it: `x.pts`, else `x.land` (any case).
pub fn sibling_landmarks(image: &Path) -> Option<PathBuf> {
    ["pts", "land", "PTS", "LAND"].iter().map(|e| image.with_extension(e)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, Meta};
    use crate::config::Config;
    use crate::network::FaceNet;
    use crate::network::params::ParamLayout;
    use crate::render::layer::Backend;
    use candle_nn::VarMap;

    /// A tiny-config net (fresh, zero head = mean face) with `bias` set on some head outputs,
    /// saved as a run in `dir` and loaded back on `device`.
    pub(crate) fn tiny_run(
        dir: &Path,
        correctives: usize,
        bias: impl Fn(&ParamLayout) -> Vec<(usize, f32)>,
        device: &Device,
    ) -> Trained {
        let mut cfg = Config::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap();
        if correctives > 0 {
            cfg.correctives.count = correctives;
            // Non-zero bases (training starts them at zero) so the final level differs.
            cfg.correctives.init_std = [1e-3, 1e-4];
        }
        let model = crate::face_model::demo::demo_model();
        let varmap = VarMap::new();
        let net = FaceNet::new(&model, &cfg, correctives > 0, Backend::Fast, &varmap, &Device::Cpu).unwrap();
        {
            let data = varmap.data().lock().unwrap();
            let head = &data["encoder.head.bias"];
            let mut v = head.as_tensor().to_vec1::<f32>().unwrap();
            for (i, x) in bias(&net.layout) {
                v[i] = x;
            }
            head.set(&Tensor::from_vec(v, head.dims1().unwrap(), &Device::Cpu).unwrap()).unwrap();
        }
        let meta = Meta {
            format_version: crate::checkpoint::FORMAT_VERSION,
            stage: if correctives > 0 { "finetune".into() } else { "pretrain".into() },
            step: 0,
            loader: Default::default(),
            seed: 1,
            num_vertices: model.num_vertices(),
            num_outputs: net.layout.num_outputs(),
            correctives,
            modes: None,
            finetuned_from: None,
            data: None,
        };
        std::fs::write(dir.join("config.toml"), cfg.to_toml()).unwrap();
        checkpoint::save(&dir.join(checkpoint::FILE), &varmap, &[], &meta).unwrap();
        super::super::load_run(dir, device).unwrap()
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 2) as u8, ((x + y) % 200) as u8]))
    }

    #[test]
    fn boxes_from_bbox_and_whole_images() {
        assert_eq!(bbox_to_face_box([10.0, 20.0, 40.0, 30.0]).unwrap(), FaceBox { x0: 10, y0: 15, side: 40 });
        assert_eq!(bbox_to_face_box([0.0, 0.0, 64.0, 64.0]).unwrap(), FaceBox { x0: 0, y0: 0, side: 64 });
        assert!(bbox_to_face_box([0.0, 0.0, -1.0, 5.0]).is_err());
        assert!(bbox_to_face_box([f32::NAN, 0.0, 1.0, 5.0]).is_err());
        assert_eq!(whole_image_box(64, 64), FaceBox { x0: 0, y0: 0, side: 64 });
        assert_eq!(whole_image_box(100, 60), FaceBox { x0: 0, y0: -20, side: 100 });
        assert_eq!(whole_image_box(61, 80), FaceBox { x0: -10, y0: 0, side: 80 });
        let img = gradient(30, 20);
        let cfg = CropConfig { size: 16, ..Default::default() };
        let e = crop_input(&img, &CropSpec::BBox([40.0, 0.0, 10.0, 10.0]), &cfg, "a.png").unwrap_err().to_string();
        assert!(e.contains("a.png") && e.contains("outside"), "{e}");
        let (c, b, m, _) = crop_input(&img, &CropSpec::Whole, &cfg, "a.png").unwrap();
        assert_eq!((c.dimensions(), b, m), ((16, 16), FaceBox { x0: 0, y0: -5, side: 30 }, CropMethod::Whole));
    }

    #[test]
    fn batch_isolates_failures_and_matches_single_images() {
        let dir = tempfile::tempdir().unwrap();
        // First identity z-score 0.5 and yaw 0.2 rad (rotation scale 1 in tiny.toml).
        let bias = |l: &ParamLayout| vec![(0, 0.5), (l.shape + l.expr + l.albedo + sh::NUM_COEFFS + 1, 0.2)];
        let t = tiny_run(dir.path(), 0, bias, &Device::Cpu);
        let opts = ReconstructOptions { overlay: Some(OverlayConfig::default()), ..Default::default() };
        let rec = Reconstructor::new(t, opts).unwrap();
        assert_eq!(rec.level(), Level::Base);
        let inputs = vec![
            InputImage::memory("a", gradient(64, 64), CropSpec::Whole),
            InputImage::memory("bad", gradient(64, 64), CropSpec::BBox([500.0, 0.0, 10.0, 10.0])),
            InputImage::file(dir.path().join("missing.png"), CropSpec::Whole),
            InputImage::memory("c", gradient(90, 70), CropSpec::BBox([10.0, 5.0, 50.0, 50.0])),
        ];
        let out = rec.reconstruct_batch(&inputs);
        assert_eq!(out.len(), 4);
        assert!(out[1].as_ref().unwrap_err().to_string().contains("outside"));
        assert!(out[2].as_ref().unwrap_err().to_string().contains("missing.png"));
        let a = out[0].as_ref().unwrap();
        let c = out[3].as_ref().unwrap();
        assert_eq!(a.base.vertices.len(), rec.trained().net.face_model.num_vertices());
        assert!(a.fine.is_none());
        assert_eq!(c.overlay.as_ref().unwrap().dimensions(), (90, 70));
        assert_eq!((c.params.crop.x0, c.params.crop.y0, c.params.crop.side), (10, 5, 50));
        // The shape coefficient went through: z = 0.5, value = 0.5 * std.
        let std0 = rec.trained().net.face_model.shape_std[0];
        assert!((a.params.shape.z[0] - 0.5).abs() < 1e-6);
        assert!((a.params.shape.value[0] - 0.5 * std0).abs() < 1e-5);
        assert!((a.params.pose.euler_rad[1] - 0.2).abs() < 1e-6);
        assert!((a.params.pose.euler_deg[1] - 0.2f32.to_degrees()).abs() < 1e-4);
        // The same image alone gives the same result as inside the batch.
        let single = rec.reconstruct(&inputs[3]).unwrap();
        for (p, q) in single.base.vertices.iter().zip(&c.base.vertices) {
            for k in 0..3 {
                assert!((p[k] - q[k]).abs() < 1e-4);
            }
        }
        assert_eq!(single.overlay, c.overlay);
    }

    #[test]
    fn final_level_needs_correctives() {
        let dir = tempfile::tempdir().unwrap();
        let t = tiny_run(dir.path(), 0, |_| vec![], &Device::Cpu);
        let opts = ReconstructOptions { level: Some(Level::Final), ..Default::default() };
        let e = Reconstructor::new(t, opts).err().unwrap().to_string();
        assert!(e.contains("no corrective level") && e.contains("--level base"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        // Corrective geometry coefficient 0 set to 100 (the random initial basis is small, not 0).
        let t = tiny_run(dir.path(), 4, |l| vec![(l.num_outputs() - 8, 100.0)], &Device::Cpu);
        let rec = Reconstructor::new(t, ReconstructOptions::default()).unwrap();
        assert_eq!(rec.level(), Level::Final);
        let r = rec.reconstruct(&InputImage::memory("a", gradient(64, 64), CropSpec::Whole)).unwrap();
        let fine = r.fine.as_ref().unwrap();
        assert!(std::ptr::eq(r.mesh(), fine));
        let moved = fine.vertices.iter().zip(&r.base.vertices).any(|(a, b)| (a[0] - b[0]).abs() > 1e-3);
        let d = fine.vertices.iter().zip(&r.base.vertices).map(|(a, b)| (a[0] - b[0]).abs()).fold(0f32, f32::max);
        assert!(moved, "the corrective level equals the base level (max x difference {d})");
        // 100 from the bias plus the small random corrective rows of the head.
        let c0 = r.params.correctives.as_ref().unwrap().geometry[0];
        assert!((c0 - 100.0).abs() < 0.5, "{c0}");
    }

    /// CPU and GPU give the same reconstruction (the network and model evaluation run on the
    /// device; meshing and overlays on the host).
    #[cfg(feature = "cuda")]
    #[test]
    fn cpu_and_cuda_agree() {
        let gpu = match Device::new_cuda(0) {
            Ok(gpu) => gpu,
            // As tests/cuda.rs: benches/gpu_check.sh sets FML_REQUIRE_CUDA, where a skip is a failure.
            Err(e) if std::env::var_os("FML_REQUIRE_CUDA").is_some() => panic!("FML_REQUIRE_CUDA is set but: {e}"),
            Err(_) => {
                eprintln!("no CUDA device: skipped");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let bias = |l: &ParamLayout| vec![(0, 0.7), (3, -0.4), (l.num_outputs() - 8, 50.0)];
        let cpu = Reconstructor::new(tiny_run(dir.path(), 4, bias, &Device::Cpu), Default::default()).unwrap();
        let cuda = Reconstructor::new(tiny_run(dir.path(), 4, bias, &gpu), Default::default()).unwrap();
        let input = InputImage::memory("a", gradient(80, 64), CropSpec::Whole);
        let (a, b) = (cpu.reconstruct(&input).unwrap(), cuda.reconstruct(&input).unwrap());
        for (p, q) in a.mesh().vertices.iter().zip(&b.mesh().vertices) {
            for k in 0..3 {
                assert!((p[k] - q[k]).abs() < 1e-2, "{p:?} vs {q:?}");
            }
        }
        for (x, y) in a.params.pose.euler_rad.iter().zip(&b.params.pose.euler_rad) {
            assert!((x - y).abs() < 1e-4);
        }
    }
}
