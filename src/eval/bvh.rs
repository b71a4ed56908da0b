//! A bounding-volume hierarchy (axis-aligned boxes, median split) over a triangle mesh for
//! closest-point-on-surface queries, single and in parallel.

use super::closest::closest_point_on_triangle;
use super::linalg::{self, Vec3};
use crate::error::{Error, Result};
use crate::io::mesh::Mesh;
use rayon::prelude::*;

/// Triangles per leaf: small leaves prune well, and a few triangles per leaf keep the tree
/// shallow so box tests do not dominate (a common choice; not tuned on this machine, whose
/// shared CPUs made timings too noisy to tell small differences apart).
const LEAF_SIZE: usize = 4;

/// An axis-aligned box.
#[derive(Clone, Copy, Debug)]
struct Aabb {
    lo: Vec3,
    hi: Vec3,
}

impl Aabb {
    fn empty() -> Self {
        Aabb { lo: [f64::INFINITY; 3], hi: [f64::NEG_INFINITY; 3] }
    }

    fn grow(&mut self, p: Vec3) {
        for k in 0..3 {
            self.lo[k] = self.lo[k].min(p[k]);
            self.hi[k] = self.hi[k].max(p[k]);
        }
    }

    fn union(&mut self, o: &Aabb) {
        self.grow(o.lo);
        self.grow(o.hi);
    }

    /// Squared distance from `p` to the box (0 inside).
    #[inline]
    fn dist_sq(&self, p: Vec3) -> f64 {
        let mut d = 0.0;
        for k in 0..3 {
            let e = (self.lo[k] - p[k]).max(p[k] - self.hi[k]).max(0.0);
            d += e * e;
        }
        d
    }
}

/// A tree node: an inner node's two children are adjacent in `nodes`; a leaf owns a run of
/// `order`.
#[derive(Clone, Copy, Debug)]
struct Node {
    bounds: Aabb,
    /// Inner node: index of the first child (the second is `first + 1`). Leaf: first entry in
    /// `order`.
    first: u32,
    /// 0 for an inner node, else the number of triangles in the leaf.
    count: u32,
}

/// The closest point on a mesh surface to a query point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SurfaceHit {
    /// The closest surface point.
    pub point: Vec3,
    /// Index of the triangle it lies on.
    pub triangle: u32,
    /// Barycentric coordinates of `point` in that triangle.
    pub barycentric: Vec3,
    /// Squared distance from the query point.
    pub dist_sq: f64,
}

impl SurfaceHit {
    /// The "nothing found" value: no triangle, NaN point, infinite distance.
    pub const MISS: SurfaceHit =
        SurfaceHit { point: [f64::NAN; 3], triangle: u32::MAX, barycentric: [f64::NAN; 3], dist_sq: f64::INFINITY };

    /// Whether a triangle was found.
    pub fn is_hit(&self) -> bool {
        self.triangle != u32::MAX
    }

    /// Distance from the query point.
    pub fn distance(&self) -> f64 {
        self.dist_sq.sqrt()
    }
}

/// A BVH over the triangles of a mesh, in `f64`. Build once, query many times; queries are
/// read-only so the tree is shared across rayon workers.
#[derive(Clone, Debug)]
pub struct TriangleBvh {
    /// `[N, 3]` vertex positions.
    vertices: Vec<Vec3>,
    /// `[F, 3]` triangles.
    triangles: Vec<[u32; 3]>,
    nodes: Vec<Node>,
    /// Triangle indices, permuted so that each leaf owns a contiguous run.
    order: Vec<u32>,
}

impl TriangleBvh {
    /// Build over `mesh`.
    ///
    /// # Errors
    /// No triangles, a triangle index out of range, or a non-finite vertex.
    pub fn new(mesh: &Mesh) -> Result<Self> {
        Self::from_parts(&mesh.vertices, &mesh.triangles)
    }

    /// Build over vertices `[N, 3]` and triangles `[F, 3]`.
    pub fn from_parts(vertices: &[[f32; 3]], triangles: &[[u32; 3]]) -> Result<Self> {
        if triangles.is_empty() {
            return Err(Error::invalid("closest-point search: the mesh has no triangles"));
        }
        let n = vertices.len();
        if let Some((t, tri)) = triangles.iter().enumerate().find(|(_, t)| t.iter().any(|&i| i as usize >= n)) {
            return Err(Error::invalid(format!(
                "closest-point search: triangle {t} {tri:?} indexes past the {n} vertices"
            )));
        }
        if let Some(i) = vertices.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(Error::invalid(format!("closest-point search: vertex {i} is not finite")));
        }
        let vertices: Vec<Vec3> = vertices.iter().map(|&v| linalg::to_f64(v)).collect();
        let tri_box = |t: &[u32; 3]| {
            let mut b = Aabb::empty();
            for &i in t {
                b.grow(vertices[i as usize]);
            }
            b
        };
        let boxes: Vec<Aabb> = triangles.iter().map(tri_box).collect();
        let centroids: Vec<Vec3> = boxes.iter().map(|b| linalg::scale(linalg::add(b.lo, b.hi), 0.5)).collect();
        let mut order: Vec<u32> = (0..triangles.len() as u32).collect();
        let mut nodes = Vec::with_capacity(2 * triangles.len() / LEAF_SIZE + 1);
        nodes.push(Node { bounds: Aabb::empty(), first: 0, count: 0 });
        // Iterative build: (node index, start, end) of the triangle run it owns.
        let mut work = vec![(0usize, 0usize, triangles.len())];
        while let Some((node, start, end)) = work.pop() {
            let mut bounds = Aabb::empty();
            let mut cbounds = Aabb::empty();
            for &t in &order[start..end] {
                bounds.union(&boxes[t as usize]);
                cbounds.grow(centroids[t as usize]);
            }
            nodes[node].bounds = bounds;
            let extent = linalg::sub(cbounds.hi, cbounds.lo);
            let axis = (0..3).fold(0, |a, k| if extent[k] > extent[a] { k } else { a });
            if end - start <= LEAF_SIZE || !(extent[axis] > 0.0) {
                // Also a leaf when all centroids coincide: no split can separate them.
                nodes[node].first = start as u32;
                nodes[node].count = (end - start) as u32;
                continue;
            }
            // Median split on the longest centroid axis; ties broken by triangle index so the
            // tree (and thus tie-breaking among equidistant triangles) is deterministic.
            let mid = start + (end - start) / 2;
            order[start..end].select_nth_unstable_by(mid - start, |&a, &b| {
                centroids[a as usize][axis].total_cmp(&centroids[b as usize][axis]).then(a.cmp(&b))
            });
            let first = nodes.len();
            nodes.push(Node { bounds: Aabb::empty(), first: 0, count: 0 });
            nodes.push(Node { bounds: Aabb::empty(), first: 0, count: 0 });
            nodes[node].first = first as u32;
            work.push((first, start, mid));
            work.push((first + 1, mid, end));
        }
        Ok(TriangleBvh { vertices, triangles: triangles.to_vec(), nodes, order })
    }

    /// Number of triangles.
    pub fn num_triangles(&self) -> usize {
        self.triangles.len()
    }

    /// Test the triangles of a leaf against the current best hit.
    fn visit_leaf(&self, node: &Node, p: Vec3, best: &mut SurfaceHit) {
        let start = node.first as usize;
        for &t in &self.order[start..start + node.count as usize] {
            let [a, b, c] = self.triangles[t as usize].map(|i| self.vertices[i as usize]);
            let (q, bary) = closest_point_on_triangle(p, a, b, c);
            let d = linalg::dist_sq(p, q);
            // Ties go to the lower triangle index so the answer does not depend on tree order.
            if d < best.dist_sq || (d == best.dist_sq && best.is_hit() && t < best.triangle) {
                *best = SurfaceHit { point: q, triangle: t, barycentric: bary, dist_sq: d };
            }
        }
    }

    /// The closest surface point to `p` (branch and bound: nearer child first, subtrees whose
    /// box is farther than the best hit so far are skipped). A non-finite query (or one so far
    /// away that squared distances overflow) gives [`SurfaceHit::MISS`].
    pub fn closest(&self, p: Vec3) -> SurfaceHit {
        self.closest_within(p, f64::INFINITY).unwrap_or(SurfaceHit::MISS)
    }

    /// The closest surface point to `p` if it is closer than `max_dist` (strictly), else None.
    /// A finite bound prunes more, so it is faster when the caller rejects far points anyway.
    pub fn closest_within(&self, p: Vec3, max_dist: f64) -> Option<SurfaceHit> {
        if !(max_dist >= 0.0) {
            return None;
        }
        let mut best = SurfaceHit { dist_sq: max_dist * max_dist, ..SurfaceHit::MISS };
        self.search(p, &mut best);
        if best.is_hit() { Some(best) } else { None }
    }

    /// Branch and bound below the root, improving `best` (nodes whose box is not farther than
    /// the best distance are visited, so equidistant lower-index triangles are still found).
    fn search(&self, p: Vec3, best: &mut SurfaceHit) {
        // The tree depth is about log2(F / LEAF_SIZE) + 1 with median splits; each level pushes
        // at most one deferred sibling, so a small fixed stack suffices for any realistic mesh
        // (2^64 triangles). Entries carry the box distance to re-check pruning when popped.
        let mut stack: [(u32, f64); 64] = [(0, 0.0); 64];
        let mut top = 0usize;
        let root_d = self.nodes[0].bounds.dist_sq(p);
        if root_d <= best.dist_sq {
            stack[0] = (0, root_d);
            top = 1;
        }
        while top > 0 {
            top -= 1;
            let (ni, nd) = stack[top];
            if nd > best.dist_sq {
                continue;
            }
            let node = &self.nodes[ni as usize];
            if node.count > 0 {
                self.visit_leaf(node, p, best);
                continue;
            }
            let (l, r) = (node.first, node.first + 1);
            let dl = self.nodes[l as usize].bounds.dist_sq(p);
            let dr = self.nodes[r as usize].bounds.dist_sq(p);
            // Push the farther child first so the nearer one is searched first.
            let (near, dn, far, df) = if dl <= dr { (l, dl, r, dr) } else { (r, dr, l, dl) };
            if df <= best.dist_sq {
                stack[top] = (far, df);
                top += 1;
            }
            if dn <= best.dist_sq {
                stack[top] = (near, dn);
                top += 1;
            }
        }
    }

    /// Closest surface points for many query points `[Q, 3]`, in parallel; the output is in
    /// query order and independent of the number of threads.
    pub fn closest_many(&self, points: &[Vec3]) -> Vec<SurfaceHit> {
        points.par_iter().with_min_len(64).map(|&p| self.closest(p)).collect()
    }

    /// Exhaustive search over all triangles (the reference for tests and tiny meshes).
    pub fn closest_brute_force(&self, p: Vec3) -> SurfaceHit {
        let all = Node { bounds: Aabb::empty(), first: 0, count: self.triangles.len() as u32 };
        let mut best = SurfaceHit::MISS;
        // `order` is a permutation of all triangles, so one "leaf" over it is the whole mesh.
        self.visit_leaf(&all, p, &mut best);
        best
    }
}

/// Unsigned distance from each point `[Q, 3]` to the surface of `mesh`, in mesh units.
///
/// # Errors
/// As [`TriangleBvh::new`], or a non-finite query point.
pub fn point_to_surface_distances(points: &[[f32; 3]], mesh: &Mesh) -> Result<Vec<f32>> {
    if let Some(i) = points.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
        return Err(Error::invalid(format!("point-to-surface distance: query point {i} is not finite")));
    }
    let bvh = TriangleBvh::new(mesh)?;
    let q: Vec<Vec3> = points.iter().map(|&p| linalg::to_f64(p)).collect();
    Ok(bvh.closest_many(&q).iter().map(|h| h.distance() as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A random "triangle soup" mesh plus a bumpy grid, so both scattered and surface-like
    /// configurations are covered.
    fn random_mesh(rng: &mut Rng, soup: usize, grid: usize) -> Mesh {
        let mut m = Mesh::default();
        for _ in 0..soup {
            let c = [rng.range(-50.0, 50.0), rng.range(-50.0, 50.0), rng.range(-50.0, 50.0)];
            let base = m.vertices.len() as u32;
            for _ in 0..3 {
                m.vertices.push([
                    (c[0] + rng.normal() * 5.0) as f32,
                    (c[1] + rng.normal() * 5.0) as f32,
                    (c[2] + rng.normal() * 5.0) as f32,
                ]);
            }
            m.triangles.push([base, base + 1, base + 2]);
        }
        let base = m.vertices.len() as u32;
        for j in 0..grid {
            for i in 0..grid {
                let x = i as f64 * 4.0 - 40.0;
                let y = j as f64 * 4.0 - 40.0;
                m.vertices.push([x as f32, y as f32, (10.0 * (x * 0.1).sin() * (y * 0.07).cos()) as f32]);
            }
        }
        for j in 0..grid.saturating_sub(1) {
            for i in 0..grid - 1 {
                let a = base + (j * grid + i) as u32;
                m.triangles.push([a, a + 1, a + grid as u32 + 1]);
                m.triangles.push([a, a + grid as u32 + 1, a + grid as u32]);
            }
        }
        // A degenerate triangle and a duplicate, which must not confuse the search.
        if grid < 3 {
            return m;
        }
        m.triangles.push([base, base, base + 1]);
        m.triangles.push([base + 1, base + 2, base + grid as u32 + 2]);
        m
    }

    #[test]
    fn matches_brute_force_on_random_meshes() {
        let mut rng = Rng::new(31);
        for (soup, grid) in [(1, 0), (7, 0), (300, 0), (0, 20), (200, 21)] {
            let mesh = random_mesh(&mut rng, soup, grid);
            let bvh = TriangleBvh::new(&mesh).unwrap();
            let queries: Vec<Vec3> =
                (0..400).map(|_| [rng.range(-80.0, 80.0), rng.range(-80.0, 80.0), rng.range(-80.0, 80.0)]).collect();
            let fast = bvh.closest_many(&queries);
            for (q, hit) in queries.iter().zip(&fast) {
                let reference = bvh.closest_brute_force(*q);
                assert_eq!(hit.dist_sq, reference.dist_sq, "query {q:?}");
                assert_eq!(hit.triangle, reference.triangle);
                assert_eq!(*hit, bvh.closest(*q));
            }
        }
    }

    #[test]
    fn bounded_search_and_distances() {
        let mut rng = Rng::new(32);
        let mesh = random_mesh(&mut rng, 0, 10);
        let bvh = TriangleBvh::new(&mesh).unwrap();
        let p = [0.0, 0.0, 30.0];
        let full = bvh.closest(p);
        assert!(bvh.closest_within(p, full.distance() * 0.99).is_none());
        assert_eq!(bvh.closest_within(p, full.distance() * 1.01), Some(full));
        let d = point_to_surface_distances(&[[0.0, 0.0, 30.0]], &mesh).unwrap();
        assert!((d[0] as f64 - full.distance()).abs() < 1e-5);
        // A point on the surface (a vertex) has distance 0.
        let v = mesh.vertices[37];
        assert_eq!(point_to_surface_distances(&[v], &mesh).unwrap(), vec![0.0]);
    }

    #[test]
    fn bad_meshes_are_errors() {
        let mut m =
            Mesh { vertices: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], triangles: vec![], colors: None };
        assert!(TriangleBvh::new(&m).unwrap_err().to_string().contains("no triangles"));
        m.triangles.push([0, 1, 3]);
        assert!(TriangleBvh::new(&m).unwrap_err().to_string().contains("triangle 0"));
        m.triangles[0] = [0, 1, 2];
        m.vertices[2][1] = f32::NAN;
        assert!(TriangleBvh::new(&m).unwrap_err().to_string().contains("vertex 2"));
        m.vertices[2][1] = 1.0;
        assert!(point_to_surface_distances(&[[f32::INFINITY, 0.0, 0.0]], &m).is_err());
    }
}
