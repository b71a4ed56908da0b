//! Training (Sec. 6-7): the AdaDelta optimiser and the pretraining / finetuning loop.

pub mod adadelta;
pub mod interrupt;
pub mod trainer;

pub use trainer::{Stage, TrainOptions, TrainReport, load_face_model, select_device, train};
