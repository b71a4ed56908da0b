//! The fast path of the image formation layer: candle custom ops with a plain-Rust (rayon) CPU
//! implementation and CUDA kernels (`kernels/render.cu`, feature `cuda`).
//!
//! Each op has one `#[repr(C)]` parameter struct shared by its forward and backward kernels on
//! both devices (the CUDA kernels take the same struct by value). The CPU code is generic over
//! f32/f64 so that tests can check it against float64 finite differences. Backward passes are
//! plain functions that return several gradient tensors at once; they are called from the ops'
//! `bwd` and build their outputs directly from device storage.

pub mod normals;
pub mod photo;
pub mod sample;
pub mod shade;

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub(crate) use crate::kernel::{CPU_BLOCK, Real, cpu_slice, cpu_tensor, dims_bn3, expect_dims, float_dtype, with_cpu};
