//! CUDA helpers shared by our custom ops: launch configurations, views of candle storage and
//! output tensors built from device buffers.

use super::launch;
use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor, bail};

/// CUDA's launch configuration for a [`launch::Launch`].
pub(crate) fn config(l: launch::Launch) -> LaunchConfig {
    LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }
}

/// One thread per element over a 1-D grid ([`launch::linear`]).
pub(crate) fn linear(total: usize) -> Result<LaunchConfig> {
    Ok(config(launch::linear(total)?))
}

pub(crate) fn view<'a, T: candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    use candle_core::backend::BackendStorage;
    if s.dtype() != T::DTYPE {
        // candle's own message ("unexpected dtype") would not say which op or what it needs.
        bail!("{what}: the CUDA kernels take {:?}, got {:?}", T::DTYPE, s.dtype());
    }
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => bail!("{what}: input must be contiguous"),
    }
}

pub(crate) fn cuda_of<'a>(s: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("{what}: expected a CUDA tensor"),
    }
}

pub(crate) fn check_f32(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        bail!("{what}: the CUDA kernels take f32, got {:?}", t.dtype());
    }
    Ok(())
}

pub(crate) fn to_tensor(slice: CudaSlice<f32>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}
