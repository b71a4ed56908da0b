//! Per-vertex unit normals from triangles (area-weighted), as a custom op with a gather-based
//! backward: every vertex loops over its incident triangles, so no atomics are needed and results
//! are deterministic on CPU and GPU.

use super::{CPU_BLOCK, Real, cpu_slice, cpu_tensor, dims_bn3, expect_dims, float_dtype, with_cpu};
use crate::face_model::topology::VertexTriangles;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Parameters shared by the forward and backward kernels (CPU and CUDA).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NormalsParams {
    pub batch: u32,
    pub num_vertices: u32,
    pub num_triangles: u32,
}

/// Mesh connectivity on a device: triangles and the vertex -> triangle adjacency.
#[derive(Clone, Debug)]
pub struct NormalsTopology {
    /// `[F, 3]` u32
    pub triangles: Tensor,
    /// `[N + 1]` u32 offsets into `vertex_triangles`
    pub offsets: Tensor,
    /// `[3F]` u32 incident triangle ids, grouped by vertex
    pub vertex_triangles: Tensor,
    pub num_vertices: usize,
    pub num_triangles: usize,
}

impl NormalsTopology {
    pub fn new(num_vertices: usize, triangles: &[[u32; 3]], device: &Device) -> candle_core::Result<Self> {
        let adj = VertexTriangles::new(num_vertices, triangles);
        let flat: Vec<u32> = triangles.iter().flatten().copied().collect();
        Ok(NormalsTopology {
            triangles: Tensor::from_vec(flat, (triangles.len(), 3), device)?,
            offsets: Tensor::from_vec(adj.offsets, num_vertices + 1, device)?,
            vertex_triangles: Tensor::from_vec(adj.triangles.clone(), adj.triangles.len(), device)?,
            num_vertices,
            num_triangles: triangles.len(),
        })
    }

    fn params(&self, batch: usize) -> NormalsParams {
        NormalsParams {
            batch: batch as u32,
            num_vertices: self.num_vertices as u32,
            num_triangles: self.num_triangles as u32,
        }
    }
}

/// Squared-length regulariser inside the normalisation (keeps isolated vertices finite).
pub const NORMAL_EPS: f64 = 1e-20;

#[inline]
fn load<T: Real>(v: &[T], base: usize, i: u32) -> [T; 3] {
    let o = (base + i as usize) * 3;
    [v[o], v[o + 1], v[o + 2]]
}
#[inline]
fn sub<T: Real>(a: [T; 3], b: [T; 3]) -> [T; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
#[inline]
fn cross<T: Real>(a: [T; 3], b: [T; 3]) -> [T; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// Unnormalised vertex normal of vertex `i` of batch item starting at `base`.
#[inline]
fn accumulate<T: Real>(v: &[T], base: usize, i: usize, tris: &[u32], offs: &[u32], vt: &[u32]) -> [T; 3] {
    let mut acc = [T::zero(); 3];
    for &t in &vt[offs[i] as usize..offs[i + 1] as usize] {
        let t = t as usize;
        let (a, b, c) = (load(v, base, tris[3 * t]), load(v, base, tris[3 * t + 1]), load(v, base, tris[3 * t + 2]));
        let f = cross(sub(b, a), sub(c, a));
        for k in 0..3 {
            acc[k] += f[k];
        }
    }
    acc
}

/// CPU forward: `out[b, i] = acc_i / sqrt(|acc_i|^2 + eps)`.
pub fn normals_fwd_cpu<T: Real>(p: &NormalsParams, v: &[T], tris: &[u32], offs: &[u32], vt: &[u32]) -> Vec<T> {
    let n = p.num_vertices as usize;
    let mut out = vec![T::zero(); p.batch as usize * n * 3];
    out.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let g = blk * CPU_BLOCK + j;
            let (b, i) = (g / n, g % n);
            let acc = accumulate(v, b * n, i, tris, offs, vt);
            let inv = (acc[0] * acc[0] + acc[1] * acc[1] + acc[2] * acc[2] + T::from_f64(NORMAL_EPS)).sqrt().recip();
            for k in 0..3 {
                dst[k] = acc[k] * inv;
            }
        }
    });
    out
}

/// CPU backward: gradient with respect to the vertices given the gradient `g` of the normals.
pub fn normals_bwd_cpu<T: Real>(p: &NormalsParams, v: &[T], g: &[T], tris: &[u32], offs: &[u32], vt: &[u32]) -> Vec<T> {
    let n = p.num_vertices as usize;
    let total = p.batch as usize * n;
    // Pass 1: gradient with respect to each unnormalised normal acc_i:
    // d(acc/L)/dacc = I/L - acc acc^T / L^3.
    let mut gacc = vec![T::zero(); total * 3];
    gacc.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let gi = blk * CPU_BLOCK + j;
            let (b, i) = (gi / n, gi % n);
            let acc = accumulate(v, b * n, i, tris, offs, vt);
            let l2 = acc[0] * acc[0] + acc[1] * acc[1] + acc[2] * acc[2] + T::from_f64(NORMAL_EPS);
            let inv = l2.sqrt().recip();
            let gg = [g[gi * 3], g[gi * 3 + 1], g[gi * 3 + 2]];
            let dot = (acc[0] * gg[0] + acc[1] * gg[1] + acc[2] * gg[2]) * inv * inv;
            for k in 0..3 {
                dst[k] = (gg[k] - acc[k] * dot) * inv;
            }
        }
    });
    // Pass 2: each face normal f_t = (v1 - v0) x (v2 - v0) feeds the accumulators of its three
    // corners, so dL/df_t = sum of their gacc; gather that back to every vertex of t.
    let mut out = vec![T::zero(); total * 3];
    out.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let gk = blk * CPU_BLOCK + j;
            let (b, k) = (gk / n, gk % n);
            let base = b * n;
            let mut acc = [T::zero(); 3];
            for &t in &vt[offs[k] as usize..offs[k + 1] as usize] {
                let t = t as usize;
                let idx = [tris[3 * t], tris[3 * t + 1], tris[3 * t + 2]];
                let (a, bb, c) = (load(v, base, idx[0]), load(v, base, idx[1]), load(v, base, idx[2]));
                let (e1, e2) = (sub(bb, a), sub(c, a));
                let mut gf = [T::zero(); 3];
                for &corner in &idx {
                    let gc = load(&gacc, base, corner);
                    for q in 0..3 {
                        gf[q] += gc[q];
                    }
                }
                // d(gf . (e1 x e2)) / d v1 = e2 x gf, / d v2 = gf x e1, / d v0 = -(both).
                let d1 = cross(e2, gf);
                let d2 = cross(gf, e1);
                for (slot, &corner) in idx.iter().enumerate() {
                    if corner as usize != k {
                        continue;
                    }
                    for q in 0..3 {
                        acc[q] += match slot {
                            0 => -(d1[q] + d2[q]),
                            1 => d1[q],
                            _ => d2[q],
                        };
                    }
                }
            }
            dst.copy_from_slice(&acc);
        }
    });
    out
}

/// The forward op; holds the topology so `bwd` can run the backward kernels.
struct NormalsOp {
    topo: NormalsTopology,
}

impl CustomOp1 for NormalsOp {
    fn name(&self) -> &'static str {
        "fml-vertex-normals"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let p = self.topo.params(dims[0]);
        let out = with_cpu::<u32, _>(&self.topo.triangles, "normals", |tris| {
            with_cpu::<u32, _>(&self.topo.offsets, "normals", |offs| {
                with_cpu::<u32, _>(&self.topo.vertex_triangles, "normals", |vt| {
                    Ok(match s {
                        CpuStorage::F32(_) => {
                            CpuStorage::F32(normals_fwd_cpu(&p, cpu_slice::<f32>(s, l, "normals")?, tris, offs, vt))
                        }
                        CpuStorage::F64(_) => {
                            CpuStorage::F64(normals_fwd_cpu(&p, cpu_slice::<f64>(s, l, "normals")?, tris, offs, vt))
                        }
                        _ => candle_core::bail!("normals: expected f32 or f64"),
                    })
                })
            })
        })?;
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let p = self.topo.params(l.shape().dims()[0]);
        let out = super::cuda::normals_fwd(&p, s, l, &self.topo)?;
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(normals_backward(arg, &grad.contiguous()?, &self.topo)?))
    }
}

/// Gradient of the normals op with respect to the vertices.
///
/// # Shapes
/// `vertices`, `grad`: `[B, N, 3]` -> `[B, N, 3]`.
pub fn normals_backward(vertices: &Tensor, grad: &Tensor, topo: &NormalsTopology) -> candle_core::Result<Tensor> {
    let (b, n) = dims_bn3(vertices, "normals backward")?;
    if n != topo.num_vertices {
        candle_core::bail!("normals backward: {n} vertices but the topology has {}", topo.num_vertices);
    }
    expect_dims(grad, &[b, n, 3], "normals backward", "grad")?;
    let p = topo.params(b);
    #[cfg(feature = "cuda")]
    if vertices.device().is_cuda() {
        return super::cuda::normals_bwd(&p, vertices, grad, topo);
    }
    let shape = vertices.shape().clone();
    with_cpu::<u32, _>(&topo.triangles, "normals", |tris| {
        with_cpu::<u32, _>(&topo.offsets, "normals", |offs| {
            with_cpu::<u32, _>(&topo.vertex_triangles, "normals", |vt| match vertices.dtype() {
                candle_core::DType::F32 => with_cpu::<f32, _>(vertices, "normals", |v| {
                    with_cpu::<f32, _>(grad, "normals", |g| {
                        cpu_tensor(normals_bwd_cpu(&p, v, g, tris, offs, vt), shape.clone())
                    })
                }),
                _ => with_cpu::<f64, _>(vertices, "normals", |v| {
                    with_cpu::<f64, _>(grad, "normals", |g| {
                        cpu_tensor(normals_bwd_cpu(&p, v, g, tris, offs, vt), shape.clone())
                    })
                }),
            })
        })
    })
}

/// Unit vertex normals of a batch of meshes (differentiable).
///
/// # Shapes
/// `vertices`: `[B, N, 3]` -> `[B, N, 3]`.
pub fn vertex_normals(vertices: &Tensor, topo: &NormalsTopology) -> candle_core::Result<Tensor> {
    let (_, n) = dims_bn3(vertices, "vertex_normals")?;
    float_dtype(vertices, "vertex_normals")?;
    if n != topo.num_vertices {
        candle_core::bail!("vertex_normals: {n} vertices but the topology has {}", topo.num_vertices);
    }
    vertices.contiguous()?.apply_op1(NormalsOp { topo: topo.clone() })
}
