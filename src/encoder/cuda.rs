//! CUDA launches of the im2col kernels in `kernels/im2col.cu` (feature `cuda`).

use super::im2col::ConvParams;
use crate::kernel::cuda::{alloc_out, check_f32, cuda_of, linear, to_tensor, view};
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/im2col.ptx"));
const MODULE: &str = "fml_im2col";

unsafe impl DeviceRepr for ConvParams {}

/// Elements of the `[C, B, H, W]` input of an unfold.
fn input_len(p: &ConvParams) -> usize {
    p.channels as usize * p.batch as usize * p.height as usize * p.width as usize
}

pub(crate) fn unfold(p: &ConvParams, s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let dev = &s.device;
    let x = view::<f32>(s, l, input_len(p), "unfold")?;
    let (rows, cols) = p.cols_shape();
    let out = alloc_out(dev, rows * cols)?;
    let f = dev.get_or_load_custom_func("fml_unfold", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&x).arg(&out);
    unsafe { b.launch(linear(rows * cols)?) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

pub(crate) fn fold(p: &ConvParams, grad: &Tensor, shape: (usize, usize, usize, usize)) -> Result<Tensor> {
    check_f32(grad, "fold")?;
    let (g, l) = grad.storage_and_layout();
    let s = cuda_of(&g, "fold")?;
    let dev = &s.device;
    let (rows, cols) = p.cols_shape();
    let gv = view::<f32>(s, l, rows * cols, "fold")?;
    let total = shape.0 * shape.1 * shape.2 * shape.3;
    let out = alloc_out(dev, total)?;
    let f = dev.get_or_load_custom_func("fml_fold", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&gv).arg(&out);
    unsafe { b.launch(linear(total)?) }.w()?;
    Ok(to_tensor(out, dev, shape))
}
