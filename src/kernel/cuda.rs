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

/// A view of the `len` elements of `s` that layout `l` covers.
///
/// The length is checked against what the kernel will read (the public entry points check shapes
/// too; this is the last line before a kernel reads past a buffer, which on a GPU is an illegal
/// address that poisons the whole CUDA context).
pub(crate) fn view<'a, T: candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
    s: &'a CudaStorage,
    l: &Layout,
    len: usize,
    what: &str,
) -> Result<CudaView<'a, T>> {
    use candle_core::backend::BackendStorage;
    if s.dtype() != T::DTYPE {
        // candle's own message ("unexpected dtype") would not say which op or what it needs.
        bail!("{what}: the CUDA kernels take {:?}, got {:?}", T::DTYPE, s.dtype());
    }
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{what}: input must be contiguous") };
    if b - a != len {
        bail!("{what}: an input of {} elements where the kernel reads {len}", b - a);
    }
    match s.as_cuda_slice::<T>()?.try_slice(a..b) {
        Some(v) => Ok(v),
        None => bail!("{what}: elements {a}..{b} lie outside a buffer of {}", s.as_cuda_slice::<T>()?.len()),
    }
}

/// A view of all the elements that layout `l` covers (index tables whose length the kernel
/// takes from other tables).
pub(crate) fn view_all<'a, T: candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    view(s, l, l.shape().elem_count(), what)
}

/// The CUDA storage of `s`.
pub(crate) fn cuda_of<'a>(s: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("{what}: expected a CUDA tensor"),
    }
}

/// The CUDA storage of `s`, which must live on the GPU of `dev`: the kernels are launched on
/// `dev`'s stream and would be handed another GPU's pointers. candle checks this only between
/// the arguments of one op, not for the tensors an op carries (topology, image) or for the
/// several inputs of our backward passes. Compared by location (GPU ordinal): two `CudaDevice`
/// handles of one GPU have different ids.
pub(crate) fn cuda_on<'a>(s: &'a Storage, dev: &CudaDevice, what: &str) -> Result<&'a CudaStorage> {
    use candle_core::backend::BackendDevice;
    let c = cuda_of(s, what)?;
    if c.device.location() != dev.location() {
        bail!("{what}: inputs on {:?} and {:?}", c.device.location(), dev.location());
    }
    Ok(c)
}

/// An uninitialised device buffer of `len` f32 for a kernel's output or intermediate.
///
/// Every kernel writes every element of its outputs (no atomics, no partial writes), so the
/// memset of `alloc_zeros` would only double the DRAM writes of the large ones (im2col's column
/// matrix above all). tests/kernels_emulated.rs checks that claim: its harness fills every output
/// with NaN before the launch and fails on any NaN left.
pub(crate) fn alloc_out(dev: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: the buffer is only read by kernels launched after the one that writes all of it, on
    // the same stream (see above); it is never read from the host before that.
    unsafe { dev.alloc::<f32>(len) }
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
