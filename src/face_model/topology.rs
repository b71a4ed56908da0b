//! Mesh topology helpers: vertex normals (CPU and differentiable), 1-ring neighbourhoods and the
//! vertex-to-triangle adjacency used by the gather-based normal kernels.

use candle_core::{Device, Tensor};

/// Area-weighted vertex normals (unit length; a vertex with no valid triangle gets +z).
pub fn vertex_normals(vertices: &[[f32; 3]], triangles: &[[u32; 3]]) -> Vec<[f32; 3]> {
    let mut acc = vec![[0.0f64; 3]; vertices.len()];
    for t in triangles {
        let [a, b, c] = t.map(|i| vertices[i as usize].map(|x| x as f64));
        let e1 = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let e2 = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let n = cross(e1, e2);
        for &i in t {
            for k in 0..3 {
                acc[i as usize][k] += n[k];
            }
        }
    }
    acc.iter()
        .map(|n| {
            let l = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            if l > 1e-20 { [(n[0] / l) as f32, (n[1] / l) as f32, (n[2] / l) as f32] } else { [0.0, 0.0, 1.0] }
        })
        .collect()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// Sorted, de-duplicated 1-ring neighbours of every vertex (eqs. 12-13's N_i).
pub fn one_ring(num_vertices: usize, triangles: &[[u32; 3]]) -> Vec<Vec<u32>> {
    let mut ring: Vec<Vec<u32>> = vec![Vec::new(); num_vertices];
    for t in triangles {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            if a != b {
                ring[a as usize].push(b);
                ring[b as usize].push(a);
            }
        }
    }
    for r in &mut ring {
        r.sort_unstable();
        r.dedup();
    }
    ring
}

/// Compressed vertex -> incident-triangle lists (`offsets[i]..offsets[i+1]` into `triangles`).
/// Lets normal kernels gather per vertex instead of scattering with atomics, so results are
/// deterministic on CPU and GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VertexTriangles {
    pub offsets: Vec<u32>,
    pub triangles: Vec<u32>,
}

impl VertexTriangles {
    /// Build the adjacency of `triangles` over `num_vertices` vertices.
    pub fn new(num_vertices: usize, triangles: &[[u32; 3]]) -> Self {
        let mut count = vec![0u32; num_vertices + 1];
        for t in triangles {
            for &i in t {
                count[i as usize + 1] += 1;
            }
        }
        for i in 0..num_vertices {
            count[i + 1] += count[i];
        }
        let offsets = count.clone();
        let mut fill = count;
        let mut tris = vec![0u32; offsets[num_vertices] as usize];
        for (ti, t) in triangles.iter().enumerate() {
            for &i in t {
                tris[fill[i as usize] as usize] = ti as u32;
                fill[i as usize] += 1;
            }
        }
        VertexTriangles { offsets, triangles: tris }
    }
}

/// Mesh topology as tensors, for the differentiable reference normals.
#[derive(Clone, Debug)]
pub struct TopologyTensors {
    /// `[F]` first, second and third corner of each triangle (u32).
    pub corners: [Tensor; 3],
    /// `[3F]` vertex of each corner, corner-major, for the scatter back to vertices.
    pub scatter: Tensor,
    pub num_vertices: usize,
}

impl TopologyTensors {
    /// Upload `triangles` (F of them, over `num_vertices` vertices) to `device`.
    ///
    /// # Shapes
    /// - returns: `corners` `[F]` u32 each, `scatter` `[3F]` u32
    pub fn new(num_vertices: usize, triangles: &[[u32; 3]], device: &Device) -> candle_core::Result<Self> {
        let col = |k: usize| -> candle_core::Result<Tensor> {
            let v: Vec<u32> = triangles.iter().map(|t| t[k]).collect();
            Tensor::from_vec(v, triangles.len(), device) // [F]
        };
        let corners = [col(0)?, col(1)?, col(2)?]; // [F] each
        let scatter = Tensor::cat(&corners, 0)?; // [3F]: all first corners, then second, then third
        Ok(TopologyTensors { corners, scatter, num_vertices })
    }
}

/// Differentiable area-weighted unit vertex normals from candle ops (autograd gives gradients).
///
/// # Shapes
/// `vertices`: `[B, N, 3]` -> `[B, N, 3]`.
pub fn vertex_normals_tensor(vertices: &Tensor, topo: &TopologyTensors) -> candle_core::Result<Tensor> {
    let a = vertices.index_select(&topo.corners[0], 1)?; // [B, F, 3]
    let b = vertices.index_select(&topo.corners[1], 1)?; // [B, F, 3]
    let c = vertices.index_select(&topo.corners[2], 1)?; // [B, F, 3]
    let fnorm = cross_tensor(&(b - &a)?, &(c - &a)?)?; // [B, F, 3], length = twice the area
    let per_corner = Tensor::cat(&[&fnorm, &fnorm, &fnorm], 1)?; // [B, 3F, 3]
    let acc = vertices.zeros_like()?.index_add(&topo.scatter, &per_corner, 1)?; // [B, N, 3]
    let len = (acc.sqr()?.sum_keepdim(2)? + 1e-20)?.sqrt()?; // [B, N, 1]
    acc.broadcast_div(&len) // [B, N, 3] / [B, N, 1] -> [B, N, 3]
}

/// Cross product along the last dimension.
///
/// # Shapes
/// `[..., 3] x [..., 3] -> [..., 3]`.
pub fn cross_tensor(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let d = a.rank() - 1;
    let (a0, a1, a2) = (a.narrow(d, 0, 1)?, a.narrow(d, 1, 1)?, a.narrow(d, 2, 1)?); // [..., 1] each
    let (b0, b1, b2) = (b.narrow(d, 0, 1)?, b.narrow(d, 1, 1)?, b.narrow(d, 2, 1)?); // [..., 1] each
    let x = ((&a1 * &b2)? - (&a2 * &b1)?)?; // [..., 1]
    let y = ((&a2 * &b0)? - (&a0 * &b2)?)?; // [..., 1]
    let z = ((&a0 * &b1)? - (&a1 * &b0)?)?; // [..., 1]
    Tensor::cat(&[x, y, z], d) // [..., 3]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regular octahedron: each vertex normal is the vertex direction itself.
    fn octahedron() -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
        let v = vec![
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, -1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, -1.0],
        ];
        let t = vec![[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]];
        (v, t)
    }

    #[test]
    fn octahedron_normals_point_outward() {
        let (v, t) = octahedron();
        let n = vertex_normals(&v, &t);
        for (p, q) in v.iter().zip(&n) {
            for k in 0..3 {
                assert!((p[k] - q[k]).abs() < 1e-6, "{p:?} vs {q:?}");
            }
        }
    }

    #[test]
    fn tensor_normals_match_cpu() {
        let (mut v, t) = octahedron();
        v[4] = [0.1, 0.2, 1.5]; // break the symmetry
        let cpu = vertex_normals(&v, &t);
        let dev = Device::Cpu;
        let vt = Tensor::from_vec(v.iter().flatten().copied().collect::<Vec<f32>>(), (1, 6, 3), &dev).unwrap();
        let topo = TopologyTensors::new(6, &t, &dev).unwrap();
        let n = vertex_normals_tensor(&vt, &topo).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in cpu.iter().flatten().zip(&n) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn one_ring_and_adjacency() {
        let (_, t) = octahedron();
        let ring = one_ring(6, &t);
        assert_eq!(ring[4], vec![0, 1, 2, 3]);
        let vt = VertexTriangles::new(6, &t);
        assert_eq!(vt.offsets.len(), 7);
        assert_eq!(vt.offsets[6] as usize, 24);
        for i in 0..6 {
            for &ti in &vt.triangles[vt.offsets[i] as usize..vt.offsets[i + 1] as usize] {
                assert!(t[ti as usize].contains(&(i as u32)));
            }
        }
    }
}
