//! `fml`: self-supervised multi-level face model learning for monocular 3D face reconstruction,
//! after Tewari et al., "Self-supervised Multi-level Face Model Learning for Monocular
//! Reconstruction at over 250 Hz" (CVPR 2018).
//!
//! Data flows one way through the modules: `data` -> `encoder` -> `face_model` -> `render` ->
//! `network` (the autoencoder of Fig. 1) -> `loss` -> `train` -> `infer` (the trained pipeline);
//! a module uses only what lies upstream of it. Shared by all of them: `config` (plain data, the
//! pipeline modules' config sections included), `error`, `io`, `rng`, `checkpoint`, `kernel`
//! (CUDA plumbing), `progress` and `eval` (geometry: alignment, ICP, closest points). `synth`,
//! `bench` and `demo` use the pipeline from outside.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod demo;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod face_model;
pub mod infer;
pub mod io;
pub mod kernel;
pub mod loss;
pub mod network;
pub mod progress;
pub mod render;
pub mod rng;
pub mod synth;
pub mod train;

pub use error::{Error, Result};
