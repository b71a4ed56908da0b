//! `fml`: self-supervised multi-level face model learning for monocular 3D face reconstruction,
//! after Tewari et al., "Self-supervised Multi-level Face Model Learning for Monocular
//! Reconstruction at over 250 Hz" (CVPR 2018).
//!
//! Data flows one way through the modules:
//! `data` -> `encoder` -> `face_model` -> `render` -> `loss` -> `train`; `infer` runs the trained
//! pipeline. `config`, `error`, `io`, `rng` and `checkpoint` are shared by all of them.

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
