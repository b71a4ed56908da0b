//! CUDA helpers shared by our custom ops: launch configurations, views of candle storage and
//! output tensors built from device buffers.

use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor, bail};

/// Threads per block of every kernel. `kernels/render.cu` sizes its shared reduction buffers with
/// the same number (`#define BLOCK 256`) and its tree reductions assume a power of two: change
/// both together.
pub(crate) const BLOCK: u32 = 256;

/// One thread per element over a 1-D grid.
///
/// The block count is computed in `usize`: casting `total` to u32 first (as this did before)
/// silently launched too few blocks past 2^32 elements, e.g. the 2400 x B*784 column matrix of
/// AlexNet's conv2 at B >= 2283 (a size `fml bench infer`'s batch sweep reaches on an 80 GB GPU),
/// which left most of the output at zero. Grids beyond CUDA's 2^31 - 1 blocks are an error.
pub(crate) fn linear(total: usize) -> Result<LaunchConfig> {
    let blocks = total.div_ceil(BLOCK as usize).max(1);
    if blocks > i32::MAX as usize {
        bail!("a kernel over {total} elements needs {blocks} blocks, more than CUDA's 2^31 - 1");
    }
    Ok(LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
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
