//! Fused CPU kernels of the per-vertex-pair regularisers (eqs. 12-14) as candle custom ops.
//!
//! Written with tensor ops, each of these terms gathers both ends of every edge into `[B, E, 3]`
//! tensors (`index_select`), runs a chain of element-wise ops on them and scatters gradients
//! back (`index_add` into fresh zero tensors, plus one zero-filled accumulator per graph node);
//! on a CPU that made the finetuning step about twice as slow as pretraining. Here each term is
//! one op `[B, N, 3] -> [B]` whose backward writes the `[B, N, 3]` gradient directly, gathering per
//! vertex over a CSR adjacency (no atomics, no scatter), so results are deterministic and do not
//! depend on the thread count. The math is exactly that of the tensor formulation in
//! `regularizers.rs` (which remains the path on other devices and the oracle of the tests); only
//! the floating-point summation order differs.

use crate::kernel::{CPU_BLOCK, Real, cpu_slice, cpu_tensor, with_cpu};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// A symmetric directed adjacency in CSR form: the neighbours of vertex `i` are
/// `nbrs[offsets[i]..offsets[i + 1]]`, and that range is also the index range of the directed
/// edges `(i, j)` (the order of `Edges::src` / `Edges::dst`).
#[derive(Clone, Debug, PartialEq)]
pub struct Ring {
    /// `[N + 1]`
    pub offsets: Vec<u32>,
    /// `[E]` destination of every directed edge.
    pub nbrs: Vec<u32>,
    /// `[E]` index of the reverse edge `(j, i)` of edge `(i, j)`.
    pub rev: Vec<u32>,
    /// `[N]` `1 / |N_i|` (f32 as in the tensor formulation), 0 for an isolated vertex.
    pub inv_degree: Vec<f32>,
}

impl Ring {
    /// From sorted, symmetric neighbour lists (`topology::one_ring`).
    pub fn new(ring: &[Vec<u32>]) -> Self {
        let mut offsets = Vec::with_capacity(ring.len() + 1);
        offsets.push(0u32);
        let mut nbrs = Vec::new();
        for nb in ring {
            nbrs.extend_from_slice(nb);
            offsets.push(nbrs.len() as u32);
        }
        let mut rev = vec![0u32; nbrs.len()];
        for (i, nb) in ring.iter().enumerate() {
            for (k, &j) in nb.iter().enumerate() {
                let (a, b) = (offsets[j as usize] as usize, offsets[j as usize + 1] as usize);
                // `one_ring` adds both directions of every triangle edge, so the reverse exists.
                let back = nbrs[a..b].binary_search(&(i as u32)).expect("1-ring adjacency is symmetric");
                rev[offsets[i] as usize + k] = (a + back) as u32;
            }
        }
        let inv_degree = ring.iter().map(|nb| if nb.is_empty() { 0.0 } else { 1.0 / nb.len() as f32 }).collect();
        Ring { offsets, nbrs, rev, inv_degree }
    }

    pub fn num_vertices(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn num_edges(&self) -> usize {
        self.nbrs.len()
    }

    #[inline]
    fn edges(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i] as usize..self.offsets[i + 1] as usize
    }
}

/// Lists of partners per vertex for a set of unordered pairs (eq. 14's random skin partners): the
/// pairs touching vertex `k` are `other[offsets[k]..offsets[k + 1]]` (with multiplicity).
#[derive(Clone, Debug, PartialEq)]
pub struct PairLists {
    /// `[N + 1]`
    pub offsets: Vec<u32>,
    /// `[2P]`
    pub other: Vec<u32>,
    /// The pairs themselves, in their original order (for the forward sum).
    pub a: Vec<u32>,
    pub b: Vec<u32>,
}

impl PairLists {
    pub fn new(num_vertices: usize, a: &[u32], b: &[u32]) -> Self {
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); num_vertices];
        for (&i, &j) in a.iter().zip(b) {
            lists[i as usize].push(j);
            lists[j as usize].push(i);
        }
        let mut offsets = Vec::with_capacity(num_vertices + 1);
        offsets.push(0u32);
        let mut other = Vec::with_capacity(2 * a.len());
        for l in &lists {
            other.extend_from_slice(l);
            offsets.push(other.len() as u32);
        }
        PairLists { offsets, other, a: a.to_vec(), b: b.to_vec() }
    }
}

#[inline]
fn load<T: Real>(x: &[T], v: usize) -> [T; 3] {
    [x[3 * v], x[3 * v + 1], x[3 * v + 2]]
}

#[inline]
fn dist2<T: Real>(a: [T; 3], b: [T; 3]) -> T {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

/// `[B]` sums of per-vertex values, reduced in fixed vertex blocks (so independent of the
/// thread count): `f(b, range)` returns the partial sum of image `b` over the vertex range.
fn block_sums<T: Real>(b: usize, n: usize, f: impl Fn(usize, std::ops::Range<usize>) -> T + Sync) -> Vec<T> {
    let nblk = n.div_ceil(CPU_BLOCK).max(1);
    let parts: Vec<T> = (0..b * nblk)
        .into_par_iter()
        .map(|t| {
            let (bi, blk) = (t / nblk, t % nblk);
            f(bi, blk * CPU_BLOCK..((blk + 1) * CPU_BLOCK).min(n))
        })
        .collect();
    parts.chunks(nblk).map(|p| p.iter().fold(T::zero(), |s, &v| s + v)).collect()
}

/// `[B, N, 3]` gradient filled per vertex by `f(b, i) -> [T; 3]`.
fn per_vertex<T: Real>(b: usize, n: usize, f: impl Fn(usize, usize) -> [T; 3] + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); b * n * 3];
    out.par_chunks_mut(CPU_BLOCK * 3).enumerate().for_each(|(blk, o)| {
        for (j, dst) in o.chunks_mut(3).enumerate() {
            let g = blk * CPU_BLOCK + j;
            dst.copy_from_slice(&f(g / n, g % n));
        }
    });
    out
}

fn dims_bn3(l: &Layout, n_expected: usize, what: &str) -> candle_core::Result<(usize, usize)> {
    match l.shape().dims() {
        &[b, n, 3] if n == n_expected => Ok((b, n)),
        d => candle_core::bail!("{what}: expected [B, {n_expected}, 3], got {d:?}"),
    }
}

macro_rules! float_dispatch {
    ($s:expr, $what:expr, |$t:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: expected f32 or f64", $what),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// E_smo (eq. 12)

/// `out[b] = (1/N) sum_i (1/|N_i|) sum_{j in N_i} ||x_i - x_j||^2`.
pub fn smoothness_fwd_cpu<T: Real>(ring: &Ring, b: usize, x: &[T]) -> Vec<T> {
    let n = ring.num_vertices();
    let sums = block_sums(b, n, |bi, range| {
        let base = bi * n;
        let mut s = T::zero();
        for i in range {
            let xi = load(x, base + i);
            let mut si = T::zero();
            for e in ring.edges(i) {
                si += dist2(xi, load(x, base + ring.nbrs[e] as usize));
            }
            s += si * T::from_f64(ring.inv_degree[i] as f64);
        }
        s
    });
    sums.into_iter().map(|s| s / T::from_f64(n as f64)).collect()
}

/// `dx[b, i] = g[b] (2/N) sum_{j in N_i} (1/|N_i| + 1/|N_j|) (x_i - x_j)`: the edge (i, j) and
/// its reverse (j, i) both contain `x_i`.
pub fn smoothness_bwd_cpu<T: Real>(ring: &Ring, b: usize, x: &[T], g: &[T]) -> Vec<T> {
    let n = ring.num_vertices();
    let two_over_n = T::from_f64(2.0 / n as f64);
    per_vertex(b, n, |bi, i| {
        let base = bi * n;
        let xi = load(x, base + i);
        let wi = T::from_f64(ring.inv_degree[i] as f64);
        let mut acc = [T::zero(); 3];
        for e in ring.edges(i) {
            let j = ring.nbrs[e] as usize;
            let w = wi + T::from_f64(ring.inv_degree[j] as f64);
            let xj = load(x, base + j);
            for q in 0..3 {
                acc[q] += w * (xi[q] - xj[q]);
            }
        }
        let s = g[bi] * two_over_n;
        [acc[0] * s, acc[1] * s, acc[2] * s]
    })
}

struct SmoothnessOp {
    ring: Arc<Ring>,
}

impl CustomOp1 for SmoothnessOp {
    fn name(&self) -> &'static str {
        "fml-smoothness"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, _) = dims_bn3(l, self.ring.num_vertices(), "smoothness")?;
        let out = float_dispatch!(s, "smoothness", |T| smoothness_fwd_cpu::<T>(
            &self.ring,
            b,
            cpu_slice(s, l, "smoothness")?
        ));
        Ok((out, Shape::from(b)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, n, _) = arg.dims3()?;
        let grad = grad.contiguous()?;
        let out = match arg.dtype() {
            DType::F32 => with_cpu::<f32, _>(arg, "smoothness", |x| {
                with_cpu::<f32, _>(&grad, "smoothness", |g| {
                    cpu_tensor(smoothness_bwd_cpu(&self.ring, b, x, g), (b, n, 3))
                })
            })?,
            _ => with_cpu::<f64, _>(arg, "smoothness", |x| {
                with_cpu::<f64, _>(&grad, "smoothness", |g| {
                    cpu_tensor(smoothness_bwd_cpu(&self.ring, b, x, g), (b, n, 3))
                })
            })?,
        };
        Ok(Some(out))
    }
}

/// E_smo (eq. 12) per image on a CPU tensor.
///
/// # Shapes
/// `offset`: `[B, N, 3]` -> `[B]`.
pub fn smoothness(offset: &Tensor, ring: &Arc<Ring>) -> candle_core::Result<Tensor> {
    offset.contiguous()?.apply_op1(SmoothnessOp { ring: ring.clone() })
}

// ---------------------------------------------------------------------------------------------
// Chromaticity weights of eq. 13 (not differentiated)

/// Split a `[B, E]` per-edge buffer into the contiguous edge ranges of (image, vertex block)
/// work items: `(b, first vertex, end vertex, slice)`.
fn edge_chunks<'a, T>(ring: &Ring, b: usize, buf: &'a mut [T]) -> Vec<(usize, usize, usize, &'a mut [T])> {
    let n = ring.num_vertices();
    let nblk = n.div_ceil(CPU_BLOCK).max(1);
    let mut chunks = Vec::with_capacity(b * nblk);
    let mut rest = buf;
    for bi in 0..b {
        for blk in 0..nblk {
            let (lo, hi) = (blk * CPU_BLOCK, ((blk + 1) * CPU_BLOCK).min(n));
            let (head, tail) = rest.split_at_mut((ring.offsets[hi] - ring.offsets[lo]) as usize);
            chunks.push((bi, lo, hi, head));
            rest = tail;
        }
    }
    chunks
}

/// `w[b, e] = exp(-beta ||chroma_i - chroma_j||) v_i v_j` for every directed edge `e = (i, j)`,
/// with `chroma = s / (s_r + s_g + s_b + 1e-6)` and the norm `sqrt(d^2 + 1e-12)`, as in
/// `regularizers::chroma_weights`. The weight is symmetric, so it is computed once per
/// undirected edge (on its `i < j` direction) and copied to the reverse edge.
pub fn chroma_weights_cpu<T: Real>(ring: &Ring, b: usize, sampled: &[T], visible: &[T], beta: f64) -> Vec<T> {
    let n = ring.num_vertices();
    let e_n = ring.num_edges();
    let eps6 = T::from_f64(1e-6);
    // [B, N, 3] chromaticities, once per vertex rather than once per edge end.
    let chroma = per_vertex(b, n, |bi, i| {
        let s = load(sampled, bi * n + i);
        let d = s[0] + s[1] + s[2] + eps6;
        [s[0] / d, s[1] / d, s[2] / d]
    });
    let (neg_beta, eps) = (T::from_f64(-beta), T::from_f64(1e-12));
    let mut half = vec![T::zero(); b * e_n];
    edge_chunks(ring, b, &mut half).into_par_iter().for_each(|(bi, lo, hi, dst)| {
        let base = bi * n;
        let first = ring.offsets[lo] as usize;
        for i in lo..hi {
            let ci = load(&chroma, base + i);
            for e in ring.edges(i) {
                let j = ring.nbrs[e] as usize;
                if j > i {
                    let dist = (dist2(ci, load(&chroma, base + j)) + eps).sqrt();
                    dst[e - first] = (dist * neg_beta).exp() * (visible[base + i] * visible[base + j]);
                }
            }
        }
    });
    let mut out = vec![T::zero(); b * e_n];
    out.par_chunks_mut(e_n.max(1)).enumerate().for_each(|(bi, o)| {
        let h = &half[bi * e_n..(bi + 1) * e_n];
        for i in 0..n {
            for e in ring.edges(i) {
                o[e] = if ring.nbrs[e] as usize > i { h[e] } else { h[ring.rev[e] as usize] };
            }
        }
    });
    out
}

/// The chromaticity weights of eq. 13 on CPU tensors.
///
/// # Shapes
/// `sampled [B, N, 3]`, `visible [B, N]` -> `[B, E]`.
pub fn chroma_weights(sampled: &Tensor, visible: &Tensor, ring: &Ring, beta: f32) -> candle_core::Result<Tensor> {
    let (b, n, _) = sampled.dims3()?;
    if n != ring.num_vertices() || visible.dims() != [b, n] {
        candle_core::bail!(
            "chroma weights: sampled {:?} / visible {:?} for {} vertices",
            sampled.dims(),
            visible.dims(),
            ring.num_vertices()
        );
    }
    let sampled = sampled.detach().contiguous()?;
    let visible = visible.detach().to_dtype(sampled.dtype())?.contiguous()?;
    let shape = (b, ring.num_edges());
    match sampled.dtype() {
        DType::F32 => with_cpu::<f32, _>(&sampled, "chroma weights", |s| {
            with_cpu::<f32, _>(&visible, "chroma weights", |v| {
                cpu_tensor(chroma_weights_cpu(ring, b, s, v, beta as f64), shape)
            })
        }),
        DType::F64 => with_cpu::<f64, _>(&sampled, "chroma weights", |s| {
            with_cpu::<f64, _>(&visible, "chroma weights", |v| {
                cpu_tensor(chroma_weights_cpu(ring, b, s, v, beta as f64), shape)
            })
        }),
        d => candle_core::bail!("chroma weights: expected f32 or f64, got {d:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// E_ref (eq. 13)

/// Forward of E_ref: `out[b] = (1/N) sum_e w[b, e] (d_e^2 + 1e-8)^(p/2)` and, for the backward
/// pass, per undirected edge `{i, j}` (stored at its `i < j` direction, 0 elsewhere)
/// `k = (w[b, (i,j)] + w[b, (j,i)]) p (d^2 + 1e-8)^(p/2 - 1)`. Both directions share `d`, so
/// each `powf` is evaluated once per undirected edge (and not again in the backward pass).
pub fn ref_sparsity_fwd_cpu<T: Real>(ring: &Ring, b: usize, r: &[T], w: &[T], p: f64) -> (Vec<T>, Vec<T>) {
    let n = ring.num_vertices();
    let e_n = ring.num_edges();
    let (half_p, p_t, eps) = (T::from_f64(p / 2.0), T::from_f64(p), T::from_f64(1e-8));
    let mut coef = vec![T::zero(); b * e_n];
    let parts: Vec<(usize, T)> = edge_chunks(ring, b, &mut coef)
        .into_par_iter()
        .map(|(bi, lo, hi, dst)| {
            let base = bi * n;
            let we = &w[bi * e_n..(bi + 1) * e_n];
            let first = ring.offsets[lo] as usize;
            let mut s = T::zero();
            for i in lo..hi {
                let ri = load(r, base + i);
                for e in ring.edges(i) {
                    let j = ring.nbrs[e] as usize;
                    if j > i {
                        let d2 = dist2(ri, load(r, base + j)) + eps;
                        let pw = d2.powf(half_p);
                        let both = we[e] + we[ring.rev[e] as usize];
                        s += pw * both;
                        dst[e - first] = both * p_t * pw / d2;
                    }
                }
            }
            (bi, s)
        })
        .collect();
    let mut out = vec![T::zero(); b];
    for (bi, s) in parts {
        out[bi] += s;
    }
    let n_t = T::from_f64(n as f64);
    (out.into_iter().map(|s| s / n_t).collect(), coef)
}

/// `dr[b, i] = (g[b] / N) sum_{j in N_i} k_{ij} (r_i - r_j)` with the undirected coefficients
/// `k` of [`ref_sparsity_fwd_cpu`].
pub fn ref_sparsity_bwd_cpu<T: Real>(ring: &Ring, b: usize, r: &[T], coef: &[T], g: &[T]) -> Vec<T> {
    let n = ring.num_vertices();
    let e_n = ring.num_edges();
    let inv_n = T::from_f64(1.0 / n as f64);
    per_vertex(b, n, |bi, i| {
        let base = bi * n;
        let c = &coef[bi * e_n..(bi + 1) * e_n];
        let ri = load(r, base + i);
        let mut acc = [T::zero(); 3];
        for e in ring.edges(i) {
            let j = ring.nbrs[e] as usize;
            let rj = load(r, base + j);
            let k = if j > i { c[e] } else { c[ring.rev[e] as usize] };
            for q in 0..3 {
                acc[q] += k * (ri[q] - rj[q]);
            }
        }
        let s = g[bi] * inv_n;
        [acc[0] * s, acc[1] * s, acc[2] * s]
    })
}

struct RefSparsityOp {
    ring: Arc<Ring>,
    p: f64,
    /// `[B, E]` per-edge gradient coefficients left by the forward pass for the backward pass.
    coef: Mutex<Option<CpuStorage>>,
}

impl CustomOp2 for RefSparsityOp {
    fn name(&self) -> &'static str {
        "fml-reflectance-sparsity"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, _) = dims_bn3(l1, self.ring.num_vertices(), "reflectance sparsity")?;
        if l2.shape().dims() != [b, self.ring.num_edges()] {
            candle_core::bail!(
                "reflectance sparsity: weights {:?}, expected [{b}, {}]",
                l2.shape().dims(),
                self.ring.num_edges()
            );
        }
        macro_rules! run {
            ($t:ty, $variant:path) => {{
                let (out, coef) = ref_sparsity_fwd_cpu::<$t>(
                    &self.ring,
                    b,
                    cpu_slice(s1, l1, "reflectance sparsity")?,
                    cpu_slice(s2, l2, "reflectance sparsity")?,
                    self.p,
                );
                ($variant(out), $variant(coef))
            }};
        }
        let (out, coef) = match s1 {
            CpuStorage::F32(_) => run!(f32, CpuStorage::F32),
            CpuStorage::F64(_) => run!(f64, CpuStorage::F64),
            _ => candle_core::bail!("reflectance sparsity: expected f32 or f64"),
        };
        *self.coef.lock().expect("coefficient lock") = Some(coef);
        Ok((out, Shape::from(b)))
    }

    fn bwd(
        &self,
        r: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, n, _) = r.dims3()?;
        let grad = grad.contiguous()?;
        let guard = self.coef.lock().expect("coefficient lock");
        let Some(coef) = guard.as_ref() else {
            candle_core::bail!("reflectance sparsity: backward before forward");
        };
        let out = match coef {
            CpuStorage::F32(c) => with_cpu::<f32, _>(r, "reflectance sparsity", |x| {
                with_cpu::<f32, _>(&grad, "reflectance sparsity", |g| {
                    cpu_tensor(ref_sparsity_bwd_cpu(&self.ring, b, x, c, g), (b, n, 3))
                })
            })?,
            CpuStorage::F64(c) => with_cpu::<f64, _>(r, "reflectance sparsity", |x| {
                with_cpu::<f64, _>(&grad, "reflectance sparsity", |g| {
                    cpu_tensor(ref_sparsity_bwd_cpu(&self.ring, b, x, c, g), (b, n, 3))
                })
            })?,
            _ => candle_core::bail!("reflectance sparsity: expected f32 or f64"),
        };
        Ok((Some(out), None))
    }
}

/// E_ref (eq. 13) per image on CPU tensors; differentiable in the reflectance only.
///
/// # Shapes
/// `reflectance [B, N, 3]`, `weights [B, E]` -> `[B]`.
pub fn reflectance_sparsity(
    reflectance: &Tensor,
    weights: &Tensor,
    ring: &Arc<Ring>,
    p: f32,
) -> candle_core::Result<Tensor> {
    let w = weights.detach().to_dtype(reflectance.dtype())?.contiguous()?;
    reflectance.contiguous()?.apply_op2(&w, RefSparsityOp { ring: ring.clone(), p: p as f64, coef: Mutex::new(None) })
}

// ---------------------------------------------------------------------------------------------
// E_glo (eq. 14)

/// `out[b] = (1/|M|) sum_pairs ||r_a - r_b||^2`.
pub fn global_fwd_cpu<T: Real>(pairs: &PairLists, b: usize, n: usize, r: &[T], mask_size: usize) -> Vec<T> {
    let np = pairs.a.len();
    let sums = block_sums(b, np, |bi, range| {
        let base = bi * n;
        range
            .fold(T::zero(), |s, k| s + dist2(load(r, base + pairs.a[k] as usize), load(r, base + pairs.b[k] as usize)))
    });
    let m = T::from_f64(mask_size.max(1) as f64);
    sums.into_iter().map(|s| s / m).collect()
}

/// `dr[b, k] = g[b] (2/|M|) sum_{pairs (k, o) or (o, k)} (r_k - r_o)`.
pub fn global_bwd_cpu<T: Real>(pairs: &PairLists, b: usize, n: usize, r: &[T], g: &[T], mask_size: usize) -> Vec<T> {
    let two_over_m = T::from_f64(2.0 / mask_size.max(1) as f64);
    per_vertex(b, n, |bi, k| {
        let base = bi * n;
        let rk = load(r, base + k);
        let mut acc = [T::zero(); 3];
        for &o in &pairs.other[pairs.offsets[k] as usize..pairs.offsets[k + 1] as usize] {
            let ro = load(r, base + o as usize);
            for q in 0..3 {
                acc[q] += rk[q] - ro[q];
            }
        }
        let s = g[bi] * two_over_m;
        [acc[0] * s, acc[1] * s, acc[2] * s]
    })
}

struct GlobalOp {
    pairs: Arc<PairLists>,
    mask_size: usize,
}

impl CustomOp1 for GlobalOp {
    fn name(&self) -> &'static str {
        "fml-global-reflectance"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.pairs.offsets.len() - 1;
        let (b, _) = dims_bn3(l, n, "global reflectance")?;
        let out = float_dispatch!(s, "global reflectance", |T| global_fwd_cpu::<T>(
            &self.pairs,
            b,
            n,
            cpu_slice(s, l, "global reflectance")?,
            self.mask_size
        ));
        Ok((out, Shape::from(b)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, n, _) = arg.dims3()?;
        let grad = grad.contiguous()?;
        let m = self.mask_size;
        let out = match arg.dtype() {
            DType::F32 => with_cpu::<f32, _>(arg, "global reflectance", |x| {
                with_cpu::<f32, _>(&grad, "global reflectance", |g| {
                    cpu_tensor(global_bwd_cpu(&self.pairs, b, n, x, g, m), (b, n, 3))
                })
            })?,
            _ => with_cpu::<f64, _>(arg, "global reflectance", |x| {
                with_cpu::<f64, _>(&grad, "global reflectance", |g| {
                    cpu_tensor(global_bwd_cpu(&self.pairs, b, n, x, g, m), (b, n, 3))
                })
            })?,
        };
        Ok(Some(out))
    }
}

/// E_glo (eq. 14) per image on a CPU tensor.
///
/// # Shapes
/// `reflectance`: `[B, N, 3]` -> `[B]`.
pub fn global_reflectance(
    reflectance: &Tensor,
    pairs: &Arc<PairLists>,
    mask_size: usize,
) -> candle_core::Result<Tensor> {
    reflectance.contiguous()?.apply_op1(GlobalOp { pairs: pairs.clone(), mask_size })
}

#[cfg(test)]
mod tests {
    use super::super::regularizers::{self, Edges, SkinPairs};
    use candle_core::{Device, Tensor, Var};

    fn rand(shape: &[usize], seed: u64, scale: f64, offset: f64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (offset + scale * r.uniform()) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn ring_follows_the_edge_order_and_pairs_reverse_edges() {
        let m = crate::face_model::demo::demo_model();
        let e = Edges::new(&m, &Device::Cpu).unwrap();
        let (src, dst) = (e.src.to_vec1::<u32>().unwrap(), e.dst.to_vec1::<u32>().unwrap());
        let ring = &e.ring;
        assert_eq!(ring.num_edges(), src.len());
        for (k, (&i, &j)) in src.iter().zip(&dst).enumerate() {
            assert!(ring.edges(i as usize).contains(&k));
            assert_eq!(ring.nbrs[k], j);
            let r = ring.rev[k] as usize;
            assert_eq!((src[r], dst[r]), (j, i));
        }
    }

    /// Every fused term against its tensor-op formulation, values and gradients, on the demo
    /// model with random inputs (some vertices invisible).
    #[test]
    fn fused_terms_match_the_tensor_formulation() {
        let m = crate::face_model::demo::demo_model();
        let dev = Device::Cpu;
        let n = m.num_vertices();
        let edges = Edges::new(&m, &dev).unwrap();
        let pairs = SkinPairs::new(&m, 6, 3, &dev).unwrap();
        let b = 2;
        let offset = Var::from_tensor(&rand(&[b, n, 3], 1, 4.0, -2.0)).unwrap();
        let refl = Var::from_tensor(&rand(&[b, n, 3], 2, 0.6, 0.2)).unwrap();
        let sampled = rand(&[b, n, 3], 3, 1.0, 0.0);
        let visible = rand(&[b, n], 4, 1.0, 0.0).ge(0.2).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let g = rand(&[b], 5, 1.0, 0.5); // upstream gradient

        let check = |name: &str, fused: Tensor, reference: Tensor, var: &Var| {
            assert!(max_rel(&fused, &reference) < 1e-5, "{name}: {fused} vs {reference}");
            let gf = (&fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (&reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let (gf, gr) = (gf.get(var.as_tensor()).unwrap(), gr.get(var.as_tensor()).unwrap());
            let d = max_rel(gf, gr);
            assert!(d < 1e-4, "{name}: gradient differs by {d} (relative to its largest entry)");
        };
        check(
            "smo",
            regularizers::smoothness(offset.as_tensor(), &edges).unwrap(),
            regularizers::smoothness_tensor_ops(offset.as_tensor(), &edges).unwrap(),
            &offset,
        );
        let w = regularizers::chroma_weights(&sampled, &visible, &edges, 50.0).unwrap();
        let w_ref = regularizers::chroma_weights_tensor_ops(&sampled, &visible, &edges, 50.0).unwrap();
        assert!(max_rel(&w, &w_ref) < 1e-5);
        check(
            "ref",
            regularizers::reflectance_sparsity(refl.as_tensor(), &w, &edges, 0.9).unwrap(),
            regularizers::reflectance_sparsity_tensor_ops(refl.as_tensor(), &w_ref, &edges, 0.9).unwrap(),
            &refl,
        );
        check(
            "glo",
            regularizers::global_reflectance(refl.as_tensor(), &pairs).unwrap(),
            regularizers::global_reflectance_tensor_ops(refl.as_tensor(), &pairs).unwrap(),
            &refl,
        );
    }

    #[test]
    fn a_nan_reaches_every_term() {
        let m = crate::face_model::demo::demo_model();
        let dev = Device::Cpu;
        let n = m.num_vertices();
        let edges = Edges::new(&m, &dev).unwrap();
        let pairs = SkinPairs::new(&m, 6, 3, &dev).unwrap();
        let mut v = rand(&[1, n, 3], 1, 1.0, 0.0).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let k = m.skin_mask[0] as usize;
        v[3 * k] = f32::NAN;
        let x = Tensor::from_vec(v, (1, n, 3), &dev).unwrap();
        let vis = Tensor::ones((1, n), candle_core::DType::F32, &dev).unwrap();
        let nan = |t: Tensor| t.to_vec1::<f32>().unwrap()[0].is_nan();
        assert!(nan(regularizers::smoothness(&x, &edges).unwrap()));
        let w = regularizers::chroma_weights(&x, &vis, &edges, 50.0).unwrap();
        assert!(w.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().any(|x| x.is_nan()));
        let ones = w.ones_like().unwrap();
        assert!(nan(regularizers::reflectance_sparsity(&x, &ones, &edges, 0.9).unwrap()));
        assert!(nan(regularizers::global_reflectance(&x, &pairs).unwrap()));
    }
}
