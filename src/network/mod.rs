//! The model-based face autoencoder of Fig. 1 assembled from its parts: the CNN encoder, the
//! parameter split, the multi-level face model and the image formation layer. Training adds
//! the losses; inference uses it as is.

pub mod params;

use crate::config::Config;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::face_model::FaceModel;
use crate::face_model::multilevel::{BaseLevel, Correctives, Levels, MultiLevelModel};
use crate::render::camera::Intrinsics;
use crate::render::layer::{Backend, ImageFormation};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use params::{ParamLayout, Params};

/// The regressor plus the multi-level model and renderer it is trained through.
#[derive(Clone, Debug)]
pub struct FaceNet {
    pub face_model: FaceModel,
    pub encoder: Encoder,
    pub layout: ParamLayout,
    pub model: MultiLevelModel,
    pub formation: ImageFormation,
    pub device: Device,
}

/// What the network predicts for a batch.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub params: Params,
    pub levels: Levels,
}

/// Camera translation that puts the mean face's landmark box in the middle of the crop, covering
/// `fill` of its width: the pose a zero network output stands for.
pub fn default_translation(model: &FaceModel, k: &Intrinsics, fill: f32) -> [f32; 3] {
    let lm: Vec<[f32; 3]> = model
        .landmarks
        .iter()
        .map(|&i| {
            let o = i as usize * 3;
            [model.mean_shape[o], model.mean_shape[o + 1], model.mean_shape[o + 2]]
        })
        .collect();
    let (lo, hi) = crate::face_model::bounds(&lm);
    let width = (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1e-3);
    let distance = k.focal * width / (fill * k.width as f32);
    let c = [(lo[0] + hi[0]) * 0.5, (lo[1] + hi[1]) * 0.5, (lo[2] + hi[2]) * 0.5];
    [-c[0], -c[1], -distance - c[2]]
}

impl FaceNet {
    /// Build (or restore, when `varmap` already holds the weights) the network for `face_model`.
    /// `correctives` adds the learned corrective level with `cfg.correctives.count` coefficients.
    pub fn new(
        face_model: &FaceModel,
        cfg: &Config,
        correctives: bool,
        backend: Backend,
        varmap: &VarMap,
        device: &Device,
    ) -> Result<Self> {
        let size = cfg.encoder.input_size;
        let k = Intrinsics { focal: cfg.camera.focal, width: size, height: size, near: cfg.camera.near };
        let c = if correctives { cfg.correctives.count } else { 0 };
        let layout = ParamLayout {
            shape: face_model.num_shape(),
            expr: face_model.num_expr(),
            albedo: face_model.num_albedo(),
            correctives: c,
            scales: cfg.params.clone(),
            default_translation: default_translation(face_model, &k, cfg.camera.landmark_fill),
        };
        // Corrective-coefficient outputs (the last 2C) start small and random; the rest at zero.
        let random_rows = (layout.num_outputs() - 2 * c, cfg.correctives.head_std);
        let encoder = Encoder::new(&cfg.encoder, layout.num_outputs(), random_rows, varmap, cfg.train.seed, device)?;
        let base = BaseLevel::new(face_model, device)?;
        let corr = if c > 0 {
            let init = (cfg.correctives.init_std[0], cfg.correctives.init_std[1]);
            let mut corr = Correctives::in_varmap(varmap, c, face_model.num_vertices(), init, cfg.train.seed, device)?;
            corr.scale = (cfg.correctives.scale[0], cfg.correctives.scale[1]);
            Some(corr)
        } else {
            None
        };
        Ok(FaceNet {
            face_model: face_model.clone(),
            encoder,
            layout,
            model: MultiLevelModel { base, correctives: corr },
            formation: ImageFormation::new(face_model, k, backend, device)?,
            device: device.clone(),
        })
    }

    /// The same network for inference: encoder weights and corrective bases as detached views
    /// of the `VarMap` tensors (shared storage, no copy), so that `predict` records no autograd
    /// graph. With the graph, every activation of a forward pass (the large im2col matrices
    /// included) stays alive until the prediction is dropped; without it each is freed once
    /// consumed. Used by everything that only runs the network: `infer::load_run` (reconstruct,
    /// eval, export) and `fml bench infer`. Training must keep using the tracked form.
    pub fn for_inference(&self) -> FaceNet {
        let mut net = self.clone();
        net.encoder = self.encoder.detached();
        if let Some(c) = &self.model.correctives {
            net.model.correctives = Some(c.detached());
        }
        net
    }

    /// Whether `predict` records an autograd graph (false after [`for_inference`](Self::for_inference)).
    pub fn tracks_gradients(&self) -> bool {
        self.encoder.tracks_gradients() || self.model.correctives.as_ref().is_some_and(|c| c.tracks_gradients())
    }

    /// The crop's camera intrinsics.
    pub fn intrinsics(&self) -> Intrinsics {
        self.formation.intrinsics
    }

    /// Regress parameters and evaluate both levels of the face model.
    ///
    /// # Shapes
    /// `images`: `[B, 3, S, S]` in [0, 1].
    pub fn predict(&self, images: &Tensor) -> Result<Prediction> {
        self.decode(&self.encoder.forward(images)?)
    }

    /// Split an encoder output into parameters and evaluate both levels of the face model.
    ///
    /// # Shapes
    /// `encoding`: `[B, 257 + 2C]` (the encoder's output).
    pub fn decode(&self, encoding: &Tensor) -> Result<Prediction> {
        let params = self.layout.split(encoding)?;
        let levels = self.model.evaluate(
            &params.z_shape,
            &params.z_expr,
            &params.z_albedo,
            params.corr_geometry.as_ref(),
            params.corr_reflectance.as_ref(),
        )?;
        Ok(Prediction { params, levels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face_model::demo::demo_model;

    /// A tiny network over the demo model with correctives and non-zero heads and bases, so that
    /// every output depends on every weight.
    fn tiny_net(varmap: &VarMap) -> (FaceNet, Config) {
        let mut cfg = Config {
            encoder: crate::encoder::EncoderConfig {
                input_size: 32,
                conv: vec![[4, 5, 2, 2, 1], [8, 3, 1, 1, 0], [8, 3, 1, 1, 0], [8, 3, 1, 1, 0], [8, 3, 1, 1, 1]],
                fc: vec![16, 16],
            },
            ..Config::default()
        };
        cfg.correctives.count = 3;
        cfg.correctives.init_std = [0.1, 0.01];
        cfg.correctives.head_std = 0.1;
        let net = FaceNet::new(&demo_model(), &cfg, true, Backend::Fast, varmap, &Device::Cpu).unwrap();
        (net, cfg)
    }

    #[test]
    fn inference_form_predicts_the_same_without_a_graph() {
        let varmap = VarMap::new();
        let (net, cfg) = tiny_net(&varmap);
        // Make the zero-initialised head non-zero so all parameters vary with the input.
        {
            let data = varmap.data().lock().unwrap();
            let w = &data["encoder.head.weight"];
            w.set(&Tensor::randn(0f32, 0.05, w.dims(), &Device::Cpu).unwrap()).unwrap();
        }
        let s = cfg.encoder.input_size;
        let x = Tensor::rand(0f32, 1f32, (2, 3, s, s), &Device::Cpu).unwrap();
        let trained = net.predict(&x).unwrap();
        let infer_net = net.for_inference();
        assert!(net.tracks_gradients());
        assert!(!infer_net.tracks_gradients());
        let fast = infer_net.predict(&x).unwrap();
        let pairs = [
            (&trained.levels.base_geometry, &fast.levels.base_geometry),
            (&trained.params.gamma, &fast.params.gamma),
            (trained.levels.geometry_offset.as_ref().unwrap(), fast.levels.geometry_offset.as_ref().unwrap()),
            (trained.levels.reflectance_offset.as_ref().unwrap(), fast.levels.reflectance_offset.as_ref().unwrap()),
        ];
        for (a, b) in pairs {
            assert!(a.track_op(), "the training form records a graph");
            assert!(!b.track_op(), "the inference form must not record a graph");
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b);
        }
        // The detached views share the weights' storage: an update is seen by both forms.
        {
            let data = varmap.data().lock().unwrap();
            let b = &data["encoder.head.bias"];
            b.set(&b.as_tensor().ones_like().unwrap()).unwrap();
        }
        let after = infer_net.predict(&x).unwrap().params.z_shape.to_vec2::<f32>().unwrap();
        assert_eq!(after, net.predict(&x).unwrap().params.z_shape.to_vec2::<f32>().unwrap());
        assert_ne!(after, fast.params.z_shape.to_vec2::<f32>().unwrap());
    }
}
