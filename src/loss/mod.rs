//! The self-supervised training loss of Sec. 6 (eqs. 6-15): multi-level photometric alignment,
//! sparse landmarks with sliding contour points, and the regularisers, each a named term.

pub mod fused;
pub mod regularizers;
pub mod sparse;

use crate::config::LossConfig;
use crate::error::{Error, Result};
use crate::network::{FaceNet, Prediction};
use crate::render::layer::{RenderInput, Rendered};
use candle_core::{Device, Tensor};
use regularizers::{Edges, SkinPairs};
use sparse::SparseLandmarks;

/// A batch as the loss needs it.
#[derive(Clone, Debug)]
pub struct TrainBatch {
    /// `[B, 3, S, S]` encoder input in [0, 1].
    pub images: Tensor,
    /// `[B, S, S, 3]` the same images for the renderer's sampling.
    pub images_hwc: Tensor,
    /// `[B, 68, 2]` detected landmarks, crop pixels.
    pub landmarks: Tensor,
    /// `[B, 68]` confidences in [0, 1] (0 = missing).
    pub confidence: Tensor,
}

impl TrainBatch {
    /// Build from NCHW images and landmarks.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, S, S]` in [0, 1]
    /// - `landmarks`: `[B, 68, 2]` crop pixels; `confidence`: `[B, 68]`
    /// - the batch also holds `images_hwc`: `[B, S, S, 3]`
    pub fn new(images: Tensor, landmarks: Tensor, confidence: Tensor) -> Result<Self> {
        let images_hwc = images.permute((0, 2, 3, 1))?.contiguous()?; // [B, 3, S, S] -> [B, S, S, 3]
        Ok(TrainBatch { images, images_hwc, landmarks, confidence })
    }

    /// Build from the flat host arrays of a loaded batch.
    ///
    /// # Shapes
    /// - `images`: `B * 3 * size * size` values, read as `[B, 3, S, S]` (S = `size`)
    /// - `landmarks`: `B * 68 * 2` values, `[B, 68, 2]`; `confidence`: `B * 68` values, `[B, 68]`
    pub fn from_host(
        images: Vec<f32>,
        landmarks: Vec<f32>,
        confidence: Vec<f32>,
        b: usize,
        size: usize,
        device: &Device,
    ) -> Result<Self> {
        Self::new(
            Tensor::from_vec(images, (b, 3, size, size), device)?,
            Tensor::from_vec(landmarks, (b, 68, 2), device)?,
            Tensor::from_vec(confidence, (b, 68), device)?,
        )
    }
}

/// The named terms of one evaluation (unweighted batch means) and the weighted total.
#[derive(Clone, Debug)]
pub struct LossTerms {
    /// Scalar, differentiable.
    pub total: Tensor,
    /// (name, unweighted batch mean) of every active term, scalars.
    pub terms: Vec<(&'static str, Tensor)>,
    /// Mean landmark distance in pixels (not differentiated).
    pub landmark_px: Tensor,
    /// Renderings of the base and (with correctives) final level.
    pub base: Rendered,
    pub fine: Option<Rendered>,
}

impl LossTerms {
    /// Host values of the total and every term, checking they are finite.
    pub fn values(&self) -> Result<Vec<(String, f64)>> {
        let mut out = vec![("total".to_string(), scalar(&self.total)?)];
        for (name, t) in &self.terms {
            out.push((name.to_string(), scalar(t)?));
        }
        out.push(("landmark_px".into(), scalar(&self.landmark_px)?));
        if let Some((name, v)) = out.iter().find(|(_, v)| !v.is_finite()) {
            let all: Vec<String> = out.iter().map(|(n, v)| format!("{n}={v}")).collect();
            return Err(Error::NonFinite(format!("loss term {name} is {v} ({})", all.join(", "))));
        }
        Ok(out)
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// The loss of Sec. 6 for one face model.
#[derive(Clone, Debug)]
pub struct Objective {
    pub cfg: LossConfig,
    pub sparse: SparseLandmarks,
    edges: Edges,
    pairs: SkinPairs,
}

impl Objective {
    pub fn new(net: &FaceNet, cfg: &LossConfig, seed: u64) -> Result<Self> {
        let m = &net.face_model;
        Ok(Objective {
            cfg: cfg.clone(),
            sparse: SparseLandmarks::new(m, true, &net.device)?,
            edges: Edges::new(m, &net.device)?,
            pairs: SkinPairs::new(m, cfg.glo_partners, seed, &net.device)?,
        })
    }

    /// Evaluate every term for a prediction.
    pub fn compute(&self, net: &FaceNet, pred: &Prediction, batch: &TrainBatch) -> Result<LossTerms> {
        let c = &self.cfg;
        let p = &pred.params;
        let lv = &pred.levels;
        let k = net.intrinsics();
        let render = |v: &Tensor, r: &Tensor| {
            net.formation.render(&RenderInput {
                vertices: v,
                reflectance: r,
                rotation: &p.rotation,
                translation: &p.translation,
                gamma: &p.gamma,
                image: &batch.images_hwc,
            })
        };
        let base = render(&lv.base_geometry, &lv.base_reflectance)?;
        let mut terms: Vec<(&'static str, Tensor, f32)> = Vec::new();
        // Landmark vertices are picked on the base level (eq. 10, Fig. 2); `sparse_final` reuses them.
        let lm_idx = self.sparse.vertex_indices(&base.camera_vertices, &batch.landmarks, &k)?;
        let (sparse, px) =
            self.sparse.loss_at(&base.camera_vertices, &lm_idx, &batch.landmarks, &batch.confidence, &k)?;
        terms.push(("sparse", sparse.mean_all()?, c.sparse));
        terms.push(("photo_base", net.formation.photometric(&base)?.mean_all()?, c.photo));
        let (std_g, std_a) = regularizers::statistical(&p.z_shape, &p.z_expr, &p.z_albedo)?;
        terms.push(("std_geometry", std_g.mean_all()?, c.std_geometry));
        terms.push(("std_albedo", std_a.mean_all()?, c.std_albedo));
        let mut fine = None;
        if let (Some(goff), Some(_)) = (&lv.geometry_offset, &lv.reflectance_offset) {
            let geometry = lv.final_geometry()?;
            let reflectance = lv.final_reflectance()?;
            let f = render(&geometry, &reflectance)?;
            terms.push(("photo_final", net.formation.photometric(&f)?.mean_all()?, c.photo));
            if c.sparse_final > 0.0 {
                // Not the paper's (eq. 10 is on the base level only); off by default, see LossConfig.
                let (s, _) =
                    self.sparse.loss_at(&f.camera_vertices, &lm_idx, &batch.landmarks, &batch.confidence, &k)?;
                terms.push(("sparse_final", s.mean_all()?, c.sparse_final));
            }
            terms.push(("smo", regularizers::smoothness(goff, &self.edges)?.mean_all()?, c.smo));
            terms.push(("sta", regularizers::stabilisation(goff)?.mean_all()?, c.sta));
            let w = regularizers::chroma_weights(&f.sampled, &f.visible, &self.edges, c.ref_beta)?;
            terms.push((
                "ref",
                regularizers::reflectance_sparsity(&reflectance, &w, &self.edges, c.ref_p)?.mean_all()?,
                c.ref_sparsity,
            ));
            terms.push(("glo", regularizers::global_reflectance(&reflectance, &self.pairs)?.mean_all()?, c.glo));
            fine = Some(f);
        }
        let mut total: Option<Tensor> = None;
        for (_, t, w) in &terms {
            if *w == 0.0 {
                continue;
            }
            let wt = (t * *w as f64)?;
            total = Some(match total {
                Some(s) => (s + wt)?,
                None => wt,
            });
        }
        let total = match total {
            Some(t) => t,
            None => return Err(Error::invalid("every loss weight is zero")),
        };
        Ok(LossTerms {
            total,
            terms: terms.into_iter().map(|(n, t, _)| (n, t)).collect(),
            landmark_px: px.mean_all()?,
            base,
            fine,
        })
    }
}

#[cfg(test)]
mod tests;
