//! Training (Sec. 6-7): the AdaDelta optimiser and the pretraining / finetuning loop.

pub mod adadelta;
