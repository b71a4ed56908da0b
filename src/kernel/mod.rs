//! Shared plumbing of our custom candle ops (render layer and encoder): CPU data access and
//! output tensors, and (feature `cuda`) module loading and launch helpers for `kernels/*.cu`.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod launch;

use candle_core::{CpuStorage, DType, Device, Layout, Shape, Storage, Tensor, WithDType};

/// Let f32 matrix products on CUDA use TF32 tensor cores (config `train.tf32`, `--tf32`).
///
/// TF32 rounds the inputs of every cuBLAS f32 product (the encoder's convolutions, which run as
/// im2col + matmul, and its fully connected layers) to a 10-bit mantissa (about 3 significant
/// digits) and accumulates in f32; on an H100 that is up to 8x the f32 matmul rate. What it does
/// to fml's training and reconstruction accuracy has NOT been measured; it is off by default,
/// as in candle and PyTorch. Our own kernels (renderer, im2col) always compute in full f32.
/// candle keeps the setting in a process-wide flag, so this affects every CUDA device.
///
/// Returns whether TF32 is now in effect: never on the CPU, where this is a no-op (callers print
/// a note when it was asked for there).
pub fn set_tf32(device: &Device, on: bool) -> bool {
    let active = on && device.is_cuda();
    // Without feature `cuda`, candle_core::cuda is candle's stub backend and this does nothing.
    candle_core::cuda::set_gemm_reduced_precision_f32(active);
    active
}

/// The note printed when TF32 is requested on the CPU.
pub const TF32_CPU_NOTE: &str = "note: TF32 (--tf32 / train.tf32) only applies to CUDA; on the CPU it has no effect";

/// Scalar type of the CPU twins.
pub trait Real: WithDType + num_traits::Float {}
impl Real for f32 {}
impl Real for f64 {}

/// Vertex-block size for rayon work items: large enough to amortise scheduling, small enough to
/// balance 30k-vertex meshes across cores.
pub(crate) const CPU_BLOCK: usize = 512;

/// The contiguous data of a CPU storage as a slice of `T`.
pub(crate) fn cpu_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Run `f` on the contiguous CPU data of `t`.
pub(crate) fn with_cpu<T: WithDType, R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(cs) => f(cpu_slice::<T>(cs, l, what)?),
        _ => candle_core::bail!("{what}: expected a CPU tensor"),
    }
}

/// A tensor from a CPU vector.
pub(crate) fn cpu_tensor<T: WithDType>(v: Vec<T>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Check a tensor's dtype is f32 or f64 and return it.
pub(crate) fn float_dtype(t: &Tensor, what: &str) -> candle_core::Result<DType> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(t.dtype()),
        d => candle_core::bail!("{what}: expected f32 or f64, got {d:?}"),
    }
}

/// Check `[B, N, 3]` with B, N >= 1 and return (B, N).
///
/// Empty batches and meshes are refused on every device, so that both behave alike: the CUDA
/// reductions launch one grid row per image, and CUDA has neither empty grids nor empty
/// allocations.
pub(crate) fn dims_bn3(t: &Tensor, what: &str) -> candle_core::Result<(usize, usize)> {
    match t.dims() {
        &[0, _, 3] => candle_core::bail!("{what}: empty batch (shape {:?})", t.dims()),
        &[_, 0, 3] => candle_core::bail!("{what}: a mesh without vertices (shape {:?})", t.dims()),
        &[b, n, 3] => Ok((b, n)),
        d => candle_core::bail!("{what}: expected shape [B, N, 3], got {d:?}"),
    }
}

/// Refuse `t` unless its shape is `dims`.
///
/// The backward passes take several tensors whose sizes their kernels trust; a mismatch would
/// read past a buffer (a panic on the CPU; on a GPU an illegal address, which poisons the whole
/// CUDA context).
pub(crate) fn expect_dims(t: &Tensor, dims: &[usize], what: &str, name: &str) -> candle_core::Result<()> {
    if t.dims() != dims {
        candle_core::bail!("{what}: {name} has shape {:?}, expected {dims:?}", t.dims());
    }
    Ok(())
}
