//! The regularisers of Sec. 6.2: statistical (eq. 11), corrective smoothness (eq. 12), local
//! reflectance sparsity (eq. 13), global skin reflectance constancy (eq. 14) and stabilisation
//! (eq. 15). Each returns the per-image value `[B]` without its weight.
//!
//! On a CPU the edge- and pair-based terms (eqs. 12-14) run as the fused kernels of
//! [`super::fused`]; elsewhere (and as the tests' oracle, `*_tensor_ops`) they are written with
//! tensor ops and candle's autograd.

use super::fused::{self, PairLists, Ring};
use crate::error::Result;
use crate::face_model::FaceModel;
use crate::face_model::topology::one_ring;
use crate::rng::Rng;
use candle_core::{D, Device, Tensor};
use std::sync::Arc;

/// Directed 1-ring edges (i, j), j in N_i, with weight 1 / |N_i|.
#[derive(Clone, Debug)]
pub struct Edges {
    /// `[E]` u32
    pub src: Tensor,
    pub dst: Tensor,
    /// `[E]` f32: 1 / |N_i|
    pub inv_degree: Tensor,
    pub num_vertices: usize,
    /// The same edges as a host CSR adjacency, for the fused CPU kernels.
    pub ring: Arc<Ring>,
}

impl Edges {
    pub fn new(model: &FaceModel, device: &Device) -> Result<Self> {
        let ring = one_ring(model.num_vertices(), &model.triangles);
        let (mut s, mut d, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for (i, nb) in ring.iter().enumerate() {
            for &j in nb {
                s.push(i as u32);
                d.push(j);
                w.push(1.0 / nb.len() as f32);
            }
        }
        let e = s.len();
        Ok(Edges {
            src: Tensor::from_vec(s, e, device)?,
            dst: Tensor::from_vec(d, e, device)?,
            inv_degree: Tensor::from_vec(w, e, device)?,
            num_vertices: model.num_vertices(),
            ring: Arc::new(Ring::new(&ring)),
        })
    }

    /// Per-edge differences `x_i - x_j`.
    ///
    /// # Shapes
    /// `[B, N, 3]` -> `[B, E, 3]`.
    pub fn diff(&self, x: &Tensor) -> Result<Tensor> {
        Ok((x.index_select(&self.src, 1)? - x.index_select(&self.dst, 1)?)?)
    }
}

/// Random partner pairs for eq. 14: every skin vertex with `partners` random skin vertices
/// (fixed once per run, seeded).
#[derive(Clone, Debug)]
pub struct SkinPairs {
    /// `[P]` u32 pair ends (i in M, j in G_i), P = |M| * partners.
    pub a: Tensor,
    pub b: Tensor,
    pub mask_size: usize,
    /// The same pairs as host partner lists, for the fused CPU kernels.
    pub lists: Arc<PairLists>,
}

impl SkinPairs {
    pub fn new(model: &FaceModel, partners: usize, seed: u64, device: &Device) -> Result<Self> {
        let m = &model.skin_mask;
        let mut rng = Rng::new(seed ^ 0x5C1_4A1B);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for &i in m {
            for _ in 0..partners {
                let mut j = m[rng.below(m.len())];
                if j == i && m.len() > 1 {
                    j = m[(m.iter().position(|&x| x == i).unwrap() + 1) % m.len()];
                }
                a.push(i);
                b.push(j);
            }
        }
        let n = a.len();
        let lists = Arc::new(PairLists::new(model.num_vertices(), &a, &b));
        Ok(SkinPairs {
            a: Tensor::from_vec(a, n, device)?,
            b: Tensor::from_vec(b, n, device)?,
            mask_size: m.len(),
            lists,
        })
    }
}

/// E_std (eq. 11) split into its geometry and reflectance sums, per image.
///
/// # Shapes
/// `[B, K]` each -> (`[B]`, `[B]`).
pub fn statistical(z_shape: &Tensor, z_expr: &Tensor, z_albedo: &Tensor) -> Result<(Tensor, Tensor)> {
    let sq = |z: &Tensor| -> Result<Tensor> {
        Ok(if z.dim(1)? == 0 { Tensor::zeros(z.dim(0)?, z.dtype(), z.device())? } else { z.sqr()?.sum(1)? })
    };
    Ok(((sq(z_shape)? + sq(z_expr)?)?, sq(z_albedo)?))
}

/// E_smo (eq. 12): `(1/N) sum_i (1/|N_i|) sum_j ||F_i - F_j||^2`, per image.
///
/// # Shapes
/// `offset`: `[B, N, 3]` -> `[B]`.
pub fn smoothness(offset: &Tensor, edges: &Edges) -> Result<Tensor> {
    if offset.device().is_cpu() {
        return Ok(fused::smoothness(offset, &edges.ring)?);
    }
    smoothness_tensor_ops(offset, edges)
}

/// [`smoothness`] with tensor ops (other devices; the tests' oracle).
///
/// # Shapes
/// - `offset`: `[B, N, 3]` (the geometry corrective F_g)
/// - returns: `[B]`
pub fn smoothness_tensor_ops(offset: &Tensor, edges: &Edges) -> Result<Tensor> {
    let d2 = edges.diff(offset)?.sqr()?.sum(D::Minus1)?; // [B, E, 3] -> [B, E]
    // [B, E] * [1, E] -> sum over edges -> [B]
    Ok((d2.broadcast_mul(&edges.inv_degree.unsqueeze(0)?)?.sum(1)? / edges.num_vertices as f64)?)
}

/// E_sta (eq. 15): `(1/N) sum_i ||F_i||^2`, per image.
///
/// # Shapes
/// - `offset`: `[B, N, 3]` (the geometry corrective F_g)
/// - returns: `[B]`
pub fn stabilisation(offset: &Tensor) -> Result<Tensor> {
    let n = offset.dim(1)?;
    Ok((offset.sqr()?.sum(D::Minus1)?.sum(1)? / n as f64)?) // [B, N, 3] -> [B, N] -> [B]
}

/// Constant weights `w_ij = exp(-beta ||chroma(I(u_i)) - chroma(I(u_j))||)` of eq. 13, from
/// the colours sampled at the current (pre-update) estimate. Pairs with an invisible end get 0
/// (the image says nothing about them). Chromaticity is `I / (R + G + B)`: the paper's weights
/// "measure the chromaticity similarity".
///
/// # Shapes
/// `sampled [B, N, 3]`, `visible [B, N]` -> `[B, E]`.
pub fn chroma_weights(sampled: &Tensor, visible: &Tensor, edges: &Edges, beta: f32) -> Result<Tensor> {
    if sampled.device().is_cpu() {
        return Ok(fused::chroma_weights(sampled, visible, &edges.ring, beta)?);
    }
    chroma_weights_tensor_ops(sampled, visible, edges, beta)
}

/// [`chroma_weights`] with tensor ops (other devices; the tests' oracle).
///
/// # Shapes
/// - `sampled`: `[B, N, 3]`; `visible`: `[B, N]`
/// - returns: `[B, E]` (not differentiated)
pub fn chroma_weights_tensor_ops(sampled: &Tensor, visible: &Tensor, edges: &Edges, beta: f32) -> Result<Tensor> {
    let s = sampled.detach(); // [B, N, 3]
    let chroma = s.broadcast_div(&(s.sum_keepdim(D::Minus1)? + 1e-6)?)?; // [B, N, 3] / [B, N, 1] -> [B, N, 3]
    let dist = (edges.diff(&chroma)?.sqr()?.sum(D::Minus1)? + 1e-12)?.sqrt()?; // [B, E, 3] -> [B, E]
    let v = visible.detach(); // [B, N]
    let both = (v.index_select(&edges.src, 1)? * v.index_select(&edges.dst, 1)?)?; // [B, E]
    Ok(((dist * -(beta as f64))?.exp()? * both)?) // [B, E]
}

/// E_ref (eq. 13): `(1/N) sum_i sum_j w_ij ||r_i - r_j||_2^p`, per image. The norm is smoothed,
/// `(||.||^2 + 1e-8)^(p/2)`, because its gradient is unbounded at 0 for p < 1.
///
/// # Shapes
/// `reflectance [B, N, 3]`, `weights [B, E]` -> `[B]`.
pub fn reflectance_sparsity(reflectance: &Tensor, weights: &Tensor, edges: &Edges, p: f32) -> Result<Tensor> {
    if reflectance.device().is_cpu() {
        return Ok(fused::reflectance_sparsity(reflectance, weights, &edges.ring, p)?);
    }
    reflectance_sparsity_tensor_ops(reflectance, weights, edges, p)
}

/// [`reflectance_sparsity`] with tensor ops (other devices; the tests' oracle).
///
/// # Shapes
/// - `reflectance`: `[B, N, 3]`; `weights`: `[B, E]`
/// - returns: `[B]`
pub fn reflectance_sparsity_tensor_ops(
    reflectance: &Tensor,
    weights: &Tensor,
    edges: &Edges,
    p: f32,
) -> Result<Tensor> {
    let d2 = edges.diff(reflectance)?.sqr()?.sum(D::Minus1)?; // [B, E, 3] -> [B, E]
    let np = (d2 + 1e-8)?.powf(p as f64 / 2.0)?; // [B, E]
    Ok(((np * weights)?.sum(1)? / edges.num_vertices as f64)?) // [B, E] -> [B]
}

/// E_glo (eq. 14): `(1/|M|) sum_{i in M} sum_{j in G_i} ||r_i - r_j||^2`, per image.
///
/// # Shapes
/// `reflectance [B, N, 3]` -> `[B]`.
pub fn global_reflectance(reflectance: &Tensor, pairs: &SkinPairs) -> Result<Tensor> {
    if reflectance.device().is_cpu() {
        return Ok(fused::global_reflectance(reflectance, &pairs.lists, pairs.mask_size)?);
    }
    global_reflectance_tensor_ops(reflectance, pairs)
}

/// [`global_reflectance`] with tensor ops (other devices; the tests' oracle).
///
/// # Shapes
/// - `reflectance`: `[B, N, 3]`
/// - returns: `[B]`
pub fn global_reflectance_tensor_ops(reflectance: &Tensor, pairs: &SkinPairs) -> Result<Tensor> {
    // P = |M| * partners pairs (i, j).
    let d = (reflectance.index_select(&pairs.a, 1)? - reflectance.index_select(&pairs.b, 1)?)?; // [B, P, 3]
    Ok((d.sqr()?.sum(D::Minus1)?.sum(1)? / pairs.mask_size.max(1) as f64)?) // [B, P, 3] -> [B, P] -> [B]
}
