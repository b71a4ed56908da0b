//! CUDA launches of the render kernels in `kernels/render.cu` (feature `cuda`). The PTX is built
//! by build.rs with nvcc and loaded once per device through candle's module cache.

use super::normals::{NormalsParams, NormalsTopology};
use super::photo::PhotoParams;
use super::sample::SampleParams;
use super::shade::ShadeParams;
use crate::kernel::cuda::{alloc_out, check_f32, config, cuda_of, cuda_on, linear, to_tensor, view, view_all};
use crate::kernel::launch;
use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/render.ptx"));
const MODULE: &str = "fml_render";

unsafe impl DeviceRepr for NormalsParams {}
unsafe impl DeviceRepr for ShadeParams {}
unsafe impl DeviceRepr for SampleParams {}
unsafe impl DeviceRepr for PhotoParams {}

/// Grid of (blocks per image, images) for the two-stage reductions ([`launch::per_image`]).
fn per_image(batch: u32, n: u32) -> Result<(LaunchConfig, u32)> {
    let (l, blocks) = launch::per_image(batch, n)?;
    Ok((config(l), blocks))
}

// ------------------------------------------------------------------------------ normals

pub(crate) fn normals_fwd(
    p: &NormalsParams,
    s: &CudaStorage,
    l: &Layout,
    topo: &NormalsTopology,
) -> Result<CudaStorage> {
    let dev = &s.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let v = view::<f32>(s, l, total * 3, "normals")?;
    let (gt, lt) = topo.triangles.storage_and_layout();
    let (go, lo) = topo.offsets.storage_and_layout();
    let (gv, lv) = topo.vertex_triangles.storage_and_layout();
    let tris = view::<u32>(cuda_on(&gt, dev, "normals")?, lt, p.num_triangles as usize * 3, "normals")?;
    let offs = view::<u32>(cuda_on(&go, dev, "normals")?, lo, p.num_vertices as usize + 1, "normals")?;
    let vt = view_all::<u32>(cuda_on(&gv, dev, "normals")?, lv, "normals")?;
    let out = alloc_out(dev, total * 3)?;
    let f = dev.get_or_load_custom_func("fml_normals_fwd", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&v).arg(&tris).arg(&offs).arg(&vt).arg(&out);
    unsafe { b.launch(linear(total)?) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

pub(crate) fn normals_bwd(
    p: &NormalsParams,
    vertices: &Tensor,
    grad: &Tensor,
    topo: &NormalsTopology,
) -> Result<Tensor> {
    check_f32(vertices, "normals backward")?;
    let (gs, ls) = vertices.storage_and_layout();
    let (gg, lg) = grad.storage_and_layout();
    let s = cuda_of(&gs, "normals backward")?;
    let dev = &s.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let v = view::<f32>(s, ls, total * 3, "normals backward")?;
    let g = view::<f32>(cuda_on(&gg, dev, "normals backward")?, lg, total * 3, "normals backward")?;
    let (gt, lt) = topo.triangles.storage_and_layout();
    let (go, lo) = topo.offsets.storage_and_layout();
    let (gv, lv) = topo.vertex_triangles.storage_and_layout();
    let tris = view::<u32>(cuda_on(&gt, dev, "normals")?, lt, p.num_triangles as usize * 3, "normals")?;
    let offs = view::<u32>(cuda_on(&go, dev, "normals")?, lo, p.num_vertices as usize + 1, "normals")?;
    let vt = view_all::<u32>(cuda_on(&gv, dev, "normals")?, lv, "normals")?;
    let gacc = alloc_out(dev, total * 3)?;
    let out = alloc_out(dev, total * 3)?;
    let f1 = dev.get_or_load_custom_func("fml_normals_bwd_acc", MODULE, PTX)?;
    let mut b1 = f1.builder();
    b1.arg(p).arg(&v).arg(&g).arg(&tris).arg(&offs).arg(&vt).arg(&gacc);
    unsafe { b1.launch(linear(total)?) }.w()?;
    let f2 = dev.get_or_load_custom_func("fml_normals_bwd_gather", MODULE, PTX)?;
    let mut b2 = f2.builder();
    b2.arg(p).arg(&v).arg(&gacc).arg(&tris).arg(&offs).arg(&vt).arg(&out);
    unsafe { b2.launch(linear(total)?) }.w()?;
    Ok(to_tensor(out, dev, vertices.shape().clone()))
}

// ------------------------------------------------------------------------------ shading

pub(crate) fn shade_fwd(
    p: &ShadeParams,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<CudaStorage> {
    let dev = &s1.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let n = view::<f32>(s1, l1, total * 3, "shade")?;
    let r = view::<f32>(s2, l2, total * 3, "shade")?;
    let g = view::<f32>(s3, l3, p.batch as usize * 27, "shade")?;
    let out = alloc_out(dev, total * 3)?;
    let f = dev.get_or_load_custom_func("fml_shade_fwd", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&n).arg(&r).arg(&g).arg(&out);
    unsafe { b.launch(linear(total)?) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

pub(crate) fn shade_bwd(
    p: &ShadeParams,
    normals: &Tensor,
    refl: &Tensor,
    gamma: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_f32(normals, "shade backward")?;
    let (g1, l1) = normals.storage_and_layout();
    let (g2, l2) = refl.storage_and_layout();
    let (g3, l3) = gamma.storage_and_layout();
    let (g4, l4) = grad.storage_and_layout();
    let s1 = cuda_of(&g1, "shade backward")?;
    let dev = &s1.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let what = "shade backward";
    let n = view::<f32>(s1, l1, total * 3, what)?;
    let r = view::<f32>(cuda_on(&g2, dev, what)?, l2, total * 3, what)?;
    let gm = view::<f32>(cuda_on(&g3, dev, what)?, l3, p.batch as usize * 27, what)?;
    let g = view::<f32>(cuda_on(&g4, dev, what)?, l4, total * 3, what)?;
    let (cfg, blocks) = per_image(p.batch, p.num_vertices)?;
    let gn = alloc_out(dev, total * 3)?;
    let gr = alloc_out(dev, total * 3)?;
    let partial = alloc_out(dev, p.batch as usize * blocks as usize * 27)?;
    let gg = alloc_out(dev, p.batch as usize * 27)?;
    let f = dev.get_or_load_custom_func("fml_shade_bwd", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&n).arg(&r).arg(&gm).arg(&g).arg(&gn).arg(&gr).arg(&partial);
    unsafe { b.launch(cfg) }.w()?;
    let f2 = dev.get_or_load_custom_func("fml_shade_bwd_reduce", MODULE, PTX)?;
    let mut b2 = f2.builder();
    b2.arg(p).arg(&blocks).arg(&partial).arg(&gg);
    unsafe { b2.launch(linear(p.batch as usize * 27)?) }.w()?;
    let shape = normals.shape().clone();
    Ok((to_tensor(gn, dev, shape.clone()), to_tensor(gr, dev, shape), to_tensor(gg, dev, (p.batch as usize, 27))))
}

// ------------------------------------------------------------------------------ sampling

/// Elements of the `[B, H, W, 3]` images the sampling kernels read.
fn image_len(p: &SampleParams) -> usize {
    p.batch as usize * p.height as usize * p.width as usize * 3
}

pub(crate) fn sample_fwd(p: &SampleParams, s: &CudaStorage, l: &Layout, image: &Tensor) -> Result<CudaStorage> {
    check_f32(image, "sample")?;
    let dev = &s.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let v = view::<f32>(s, l, total * 3, "sample")?;
    let (gi, li) = image.storage_and_layout();
    let img = view::<f32>(cuda_on(&gi, dev, "sample")?, li, image_len(p), "sample")?;
    let out = alloc_out(dev, total * 3)?;
    let f = dev.get_or_load_custom_func("fml_sample_fwd", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&v).arg(&img).arg(&out);
    unsafe { b.launch(linear(total)?) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

pub(crate) fn sample_bwd(p: &SampleParams, vertices: &Tensor, image: &Tensor, grad: &Tensor) -> Result<Tensor> {
    check_f32(vertices, "sample backward")?;
    let (g1, l1) = vertices.storage_and_layout();
    let (g2, l2) = image.storage_and_layout();
    let (g3, l3) = grad.storage_and_layout();
    let s1 = cuda_of(&g1, "sample backward")?;
    let dev = &s1.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let what = "sample backward";
    let v = view::<f32>(s1, l1, total * 3, what)?;
    let img = view::<f32>(cuda_on(&g2, dev, what)?, l2, image_len(p), what)?;
    let g = view::<f32>(cuda_on(&g3, dev, what)?, l3, total * 3, what)?;
    let out = alloc_out(dev, total * 3)?;
    let f = dev.get_or_load_custom_func("fml_sample_bwd", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&v).arg(&img).arg(&g).arg(&out);
    unsafe { b.launch(linear(total)?) }.w()?;
    Ok(to_tensor(out, dev, vertices.shape().clone()))
}

// ------------------------------------------------------------------------------ photometric

/// Per-image (loss, visible count) on the device.
fn photo_sums(
    p: &PhotoParams,
    dev: &CudaDevice,
    a: &CudaView<f32>,
    c: &CudaView<f32>,
    m: &CudaView<f32>,
) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
    let (cfg, blocks) = per_image(p.batch, p.num_vertices)?;
    let partial = alloc_out(dev, p.batch as usize * blocks as usize * 2)?;
    let loss = alloc_out(dev, p.batch as usize)?;
    let counts = alloc_out(dev, p.batch as usize)?;
    let f = dev.get_or_load_custom_func("fml_photo_partial", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(a).arg(c).arg(m).arg(&partial);
    unsafe { b.launch(cfg) }.w()?;
    let f2 = dev.get_or_load_custom_func("fml_photo_finish", MODULE, PTX)?;
    let mut b2 = f2.builder();
    b2.arg(p).arg(&blocks).arg(&partial).arg(&loss).arg(&counts);
    unsafe { b2.launch(linear(p.batch as usize)?) }.w()?;
    Ok((loss, counts))
}

pub(crate) fn photo_fwd(
    p: &PhotoParams,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<CudaStorage> {
    let dev = &s1.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let a = view::<f32>(s1, l1, total * 3, "photo")?;
    let c = view::<f32>(s2, l2, total * 3, "photo")?;
    let m = view::<f32>(s3, l3, total, "photo")?;
    let (loss, _) = photo_sums(p, dev, &a, &c, &m)?;
    Ok(CudaStorage::wrap_cuda_slice(loss, dev.clone()))
}

pub(crate) fn photo_bwd(
    p: &PhotoParams,
    sampled: &Tensor,
    shaded: &Tensor,
    mask: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    check_f32(sampled, "photo backward")?;
    let (g1, l1) = sampled.storage_and_layout();
    let (g2, l2) = shaded.storage_and_layout();
    let (g3, l3) = mask.storage_and_layout();
    let (g4, l4) = grad.storage_and_layout();
    let s1 = cuda_of(&g1, "photo backward")?;
    let dev = &s1.device;
    let total = p.batch as usize * p.num_vertices as usize;
    let what = "photo backward";
    let a = view::<f32>(s1, l1, total * 3, what)?;
    let c = view::<f32>(cuda_on(&g2, dev, what)?, l2, total * 3, what)?;
    let m = view::<f32>(cuda_on(&g3, dev, what)?, l3, total, what)?;
    let g = view::<f32>(cuda_on(&g4, dev, what)?, l4, p.batch as usize, what)?;
    let (_, counts) = photo_sums(p, dev, &a, &c, &m)?;
    let out = alloc_out(dev, total * 3)?;
    let f = dev.get_or_load_custom_func("fml_photo_bwd", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(p).arg(&a).arg(&c).arg(&m).arg(&g).arg(&counts).arg(&out);
    unsafe { b.launch(linear(total)?) }.w()?;
    Ok(to_tensor(out, dev, sampled.shape().clone()))
}
