//! The plain (non-differentiable) CPU triangle rasteriser: z-buffered, perspective-correct,
//! SH-shaded per pixel, optionally supersampled. It renders overlays of reconstructions and the
//! synthetic data sets; training uses the differentiable renderer instead.
//!
//! Conventions (docs/conventions.md): camera space looks down -z, pixel (i, j) covers
//! [i, i+1) x [j, j+1) with its centre at (i + 0.5, j + 0.5), projection by [`Intrinsics`].
//!
//! Choices made here (the task leaves them open):
//! - Near plane: a triangle with any vertex at or behind `intrinsics.near` is skipped whole
//!   (no clipping). Faces sit hundreds of millimetres in front of the camera, so this never
//!   removes a visible face triangle; it only guards against projecting through the eye.
//! - Coverage is sampled at subsample centres with a watertight rule (see [`edge`]): two
//!   triangles sharing an edge never both cover, nor both miss, a sample on that edge.
//! - Supersampling `s` takes `s x s` samples per pixel, each with its own depth test. The
//!   pixel's colour is the mean over its covered samples (not premultiplied), `coverage` is the
//!   covered fraction, `depth` and `triangle` come from its nearest covered sample.
//! - Depth is the distance along the viewing axis, `-z_cam` (what the z-buffer compares).
//! - Normals are used as given: with culling off, a back face is shaded with its own
//!   (camera-averted) normal. Shaded colours are not clamped; image conversion clamps.

use super::camera::{Intrinsics, rotate, transform};
use super::sh;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Marks a pixel that no triangle covers in [`RasterOutput::triangle`].
pub const NO_TRIANGLE: u32 = u32::MAX;

/// Pixel rows per parallel work unit. Bands are independent of the thread count, so the output
/// is identical however many threads run.
const BAND_ROWS: usize = 8;

/// Largest supported supersampling factor per axis.
pub const MAX_SUPERSAMPLE: usize = 8;

/// One mesh in camera space, ready to rasterise.
#[derive(Clone, Copy, Debug)]
pub struct RasterInput<'a> {
    /// `[N, 3]` camera-space positions (mm; in front of the camera means z < 0).
    pub vertices_cam: &'a [[f32; 3]],
    /// `[N, 3]` camera-space unit normals.
    pub normals_cam: &'a [[f32; 3]],
    /// `[N, 3]` linear RGB reflectance.
    pub reflectance: &'a [[f32; 3]],
    /// `[F, 3]` vertex indices, counter-clockwise seen from outside.
    pub triangles: &'a [[u32; 3]],
    /// `[27]` SH coefficients, `gamma[c * 9 + b]`.
    pub gamma: &'a [f32],
    pub intrinsics: Intrinsics,
    /// Skip triangles whose front side faces away from the camera.
    pub cull_backfaces: bool,
    /// Samples per pixel along each axis: 1 = one sample at the pixel centre, 2 = 2x2 SSAA.
    pub supersample: usize,
}

/// The rendered buffers, row-major `[H * W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RasterOutput {
    pub width: usize,
    pub height: usize,
    /// `[H * W]` mean shaded colour of the covered samples; 0 where nothing is covered.
    pub color: Vec<[f32; 3]>,
    /// `[H * W]` `-z_cam` of the nearest covered sample; `+inf` where nothing is covered.
    pub depth: Vec<f32>,
    /// `[H * W]` fraction of the pixel's samples that are covered, in [0, 1].
    pub coverage: Vec<f32>,
    /// `[H * W]` triangle of the nearest covered sample, or [`NO_TRIANGLE`].
    pub triangle: Vec<u32>,
}

/// A triangle prepared for scan conversion, oriented so that its signed screen area is positive.
#[derive(Clone, Copy, Debug)]
struct Setup {
    /// Screen positions of the (re-ordered) corners.
    p: [[f64; 2]; 3],
    /// Vertex indices in the same order as `p`.
    idx: [u32; 3],
    /// `1 / (-z)` of each corner, for perspective-correct interpolation.
    inv_d: [f64; 3],
    /// Twice the screen area (positive).
    area: f64,
    /// Pixel bounds, inclusive, clipped to the image.
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
    /// Camera-space geometric normal, used where the interpolated normal vanishes.
    face_normal: [f32; 3],
}

/// One sample's winner: triangle and perspective-correct barycentrics.
#[derive(Clone, Copy)]
struct Fragment {
    depth: f32,
    tri: u32,
    bary: [f32; 3],
}

const EMPTY: Fragment = Fragment { depth: f32::INFINITY, tri: NO_TRIANGLE, bary: [0.0; 3] };

#[inline]
fn orient(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

/// Edge function of the directed edge a -> b at p (positive on the left in (u, v) axes).
///
/// It is evaluated with the endpoints in a canonical (lexicographic) order and negated when
/// needed, so the two triangles sharing an edge get exactly opposite values in floating point:
/// together with [`owns_edge`] this makes the rasteriser watertight without double coverage.
#[inline]
fn edge(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> f64 {
    if (a[0], a[1]) < (b[0], b[1]) { orient(a, b, p) } else { -orient(b, a, p) }
}

/// Tie rule for samples exactly on an edge (the usual top-left rule): with triangles oriented
/// to positive area in (u, v) axes (clockwise on screen, as v points down), left edges run
/// upward (-v) and top edges run right (+u); those own their samples. The predicate is
/// antisymmetric, so exactly one of two triangles sharing an edge (traversing it in opposite
/// directions) owns a tie.
#[inline]
fn owns_edge(a: [f64; 2], b: [f64; 2]) -> bool {
    let d = [b[0] - a[0], b[1] - a[1]];
    d[1] < 0.0 || (d[1] == 0.0 && d[0] > 0.0)
}

/// `Some(screen-space barycentrics)` when the triangle covers sample `s`.
#[inline]
fn covers(t: &Setup, s: [f64; 2]) -> Option<[f64; 3]> {
    let [a, b, c] = t.p;
    let e0 = edge(b, c, s);
    let e1 = edge(c, a, s);
    let e2 = edge(a, b, s);
    let inside = |e: f64, p: [f64; 2], q: [f64; 2]| e > 0.0 || (e == 0.0 && owns_edge(p, q));
    if inside(e0, b, c) && inside(e1, c, a) && inside(e2, a, b) {
        Some([e0 / t.area, e1 / t.area, e2 / t.area])
    } else {
        None
    }
}

fn sub3(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross3(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot3(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalize(v: [f32; 3]) -> Option<[f32; 3]> {
    let l = dot3(v, v).sqrt();
    if l > 1e-12 && l.is_finite() { Some([v[0] / l, v[1] / l, v[2] / l]) } else { None }
}

/// Prepare triangle `f`; None when it is skipped (near plane, non-finite, degenerate, culled,
/// off-screen).
fn setup(input: &RasterInput, f: usize) -> Option<Setup> {
    let k = &input.intrinsics;
    let tri = input.triangles[f];
    let v = tri.map(|i| input.vertices_cam[i as usize]);
    if v.iter().flatten().any(|x| !x.is_finite()) {
        return None;
    }
    let mut p = [[0.0f64; 2]; 3];
    let mut inv_d = [0.0f64; 3];
    for c in 0..3 {
        let uv = k.project(v[c])?; // None at or behind the near plane: skip the whole triangle.
        p[c] = [uv[0] as f64, uv[1] as f64];
        inv_d[c] = 1.0 / (-v[c][2] as f64);
    }
    let n = cross3(sub3(v[1], v[0]), sub3(v[2], v[0]));
    // Front-facing when the outward normal points toward the camera at the origin.
    if input.cull_backfaces && dot3(n, [-v[0][0], -v[0][1], -v[0][2]]) <= 0.0 {
        return None;
    }
    let mut idx = tri;
    let mut area = orient(p[0], p[1], p[2]);
    if !area.is_finite() || area == 0.0 {
        return None;
    }
    if area < 0.0 {
        p.swap(1, 2);
        idx.swap(1, 2);
        inv_d.swap(1, 2);
        area = -area;
    }
    let (w, h) = (k.width as f64, k.height as f64);
    let lo = [p[0][0].min(p[1][0]).min(p[2][0]), p[0][1].min(p[1][1]).min(p[2][1])];
    let hi = [p[0][0].max(p[1][0]).max(p[2][0]), p[0][1].max(p[1][1]).max(p[2][1])];
    if hi[0] < 0.0 || hi[1] < 0.0 || lo[0] >= w || lo[1] >= h {
        return None;
    }
    // Every sample of pixel i lies strictly inside (i, i + 1).
    let x0 = lo[0].max(0.0).floor() as usize;
    let y0 = lo[1].max(0.0).floor() as usize;
    let x1 = (hi[0].min(w - 1.0).floor() as usize).min(k.width - 1);
    let y1 = (hi[1].min(h - 1.0).floor() as usize).min(k.height - 1);
    let face_normal = normalize(n).unwrap_or([0.0, 0.0, 1.0]);
    Some(Setup { p, idx, inv_d, area, x0, x1, y0, y1, face_normal })
}

fn validate(input: &RasterInput) -> Result<()> {
    let n = input.vertices_cam.len();
    let k = &input.intrinsics;
    if input.normals_cam.len() != n || input.reflectance.len() != n {
        return Err(Error::invalid(format!(
            "rasterize: {n} vertices but {} normals and {} reflectances",
            input.normals_cam.len(),
            input.reflectance.len()
        )));
    }
    if input.gamma.len() != sh::NUM_COEFFS {
        return Err(Error::invalid(format!(
            "rasterize: {} SH coefficients, expected {}",
            input.gamma.len(),
            sh::NUM_COEFFS
        )));
    }
    if input.supersample == 0 || input.supersample > MAX_SUPERSAMPLE {
        return Err(Error::invalid(format!(
            "rasterize: supersample {} is outside 1..={MAX_SUPERSAMPLE}",
            input.supersample
        )));
    }
    if k.width == 0
        || k.height == 0
        || !(k.focal.is_finite() && k.focal > 0.0)
        || !(k.near.is_finite() && k.near >= 0.0)
    {
        return Err(Error::invalid(format!(
            "rasterize: bad intrinsics (size {}x{}, focal {}, near {})",
            k.width, k.height, k.focal, k.near
        )));
    }
    if let Some(f) = input.triangles.iter().position(|t| t.iter().any(|&i| i as usize >= n)) {
        return Err(Error::invalid(format!(
            "rasterize: triangle {f} {:?} indexes past the {n} vertices",
            input.triangles[f]
        )));
    }
    Ok(())
}

/// Rasterise a camera-space mesh: z-buffer (nearest wins), perspective-correct interpolation of
/// normal and reflectance, per-sample SH shading.
///
/// Cost is O(triangles + samples): triangles are binned into bands of rows, and each band is
/// rendered by one rayon task that owns its rows.
///
/// # Shapes
/// Inputs as documented on [`RasterInput`]; every output buffer is `[H * W]`, row-major.
///
/// # Errors
/// [`Error::Invalid`] on mismatched array lengths, out-of-range triangle indices, a gamma that
/// is not 27 long, bad intrinsics or a supersampling factor outside 1..=8. Degenerate, non-finite
/// and near-plane-crossing triangles are skipped silently.
pub fn rasterize(input: &RasterInput) -> Result<RasterOutput> {
    validate(input)?;
    let (w, h) = (input.intrinsics.width, input.intrinsics.height);
    let setups: Vec<Option<Setup>> = (0..input.triangles.len()).into_par_iter().map(|f| setup(input, f)).collect();
    let num_bands = h.div_ceil(BAND_ROWS);
    let mut bins: Vec<Vec<u32>> = vec![Vec::new(); num_bands];
    for (f, s) in setups.iter().enumerate() {
        if let Some(s) = s {
            for bin in &mut bins[s.y0 / BAND_ROWS..=s.y1 / BAND_ROWS] {
                bin.push(f as u32);
            }
        }
    }
    let bands: Vec<RasterOutput> =
        (0..num_bands).into_par_iter().map(|b| render_band(input, &setups, &bins[b], b * BAND_ROWS)).collect();
    let mut out = RasterOutput {
        width: w,
        height: h,
        color: Vec::with_capacity(w * h),
        depth: Vec::with_capacity(w * h),
        coverage: Vec::with_capacity(w * h),
        triangle: Vec::with_capacity(w * h),
    };
    for band in bands {
        out.color.extend(band.color);
        out.depth.extend(band.depth);
        out.coverage.extend(band.coverage);
        out.triangle.extend(band.triangle);
    }
    Ok(out)
}

/// Render rows `y_start .. y_start + BAND_ROWS` (clipped) from the triangles of this band.
fn render_band(input: &RasterInput, setups: &[Option<Setup>], bin: &[u32], y_start: usize) -> RasterOutput {
    let w = input.intrinsics.width;
    let rows = BAND_ROWS.min(input.intrinsics.height - y_start);
    let y_end = y_start + rows;
    let s = input.supersample;
    let ss = s * s;
    // Sample (px, py, sx, sy) lives at [((py - y_start) * w + px) * ss + sy * s + sx].
    let mut frags = vec![EMPTY; rows * w * ss];
    let offsets: Vec<f64> = (0..s).map(|k| (k as f64 + 0.5) / s as f64).collect();
    for &f in bin {
        let t = setups[f as usize].as_ref().expect("only set-up triangles are binned");
        for py in t.y0.max(y_start)..=t.y1.min(y_end - 1) {
            for px in t.x0..=t.x1 {
                let base = ((py - y_start) * w + px) * ss;
                for (sy, oy) in offsets.iter().enumerate() {
                    for (sx, ox) in offsets.iter().enumerate() {
                        let Some(l) = covers(t, [px as f64 + ox, py as f64 + oy]) else { continue };
                        // 1/d is affine in screen space; weights l_i / d_i give 3D barycentrics.
                        let wts = [l[0] * t.inv_d[0], l[1] * t.inv_d[1], l[2] * t.inv_d[2]];
                        let sum = wts[0] + wts[1] + wts[2];
                        if !(sum > 0.0) {
                            continue;
                        }
                        let depth = (1.0 / sum) as f32;
                        let slot = &mut frags[base + sy * s + sx];
                        if depth < slot.depth {
                            let bary = [(wts[0] / sum) as f32, (wts[1] / sum) as f32, (wts[2] / sum) as f32];
                            *slot = Fragment { depth, tri: f, bary };
                        }
                    }
                }
            }
        }
    }
    // Deferred shading: each covered sample is shaded once, whatever the overdraw.
    let mut out = RasterOutput {
        width: w,
        height: rows,
        color: vec![[0.0; 3]; rows * w],
        depth: vec![f32::INFINITY; rows * w],
        coverage: vec![0.0; rows * w],
        triangle: vec![NO_TRIANGLE; rows * w],
    };
    for p in 0..rows * w {
        let mut acc = [0.0f32; 3];
        let mut covered = 0usize;
        for frag in &frags[p * ss..(p + 1) * ss] {
            if frag.tri == NO_TRIANGLE {
                continue;
            }
            let c = shade_fragment(input, setups[frag.tri as usize].as_ref().expect("set up"), frag.bary);
            for k in 0..3 {
                acc[k] += c[k];
            }
            covered += 1;
            if frag.depth < out.depth[p] {
                out.depth[p] = frag.depth;
                out.triangle[p] = frag.tri;
            }
        }
        if covered > 0 {
            let inv = 1.0 / covered as f32;
            out.color[p] = [acc[0] * inv, acc[1] * inv, acc[2] * inv];
            out.coverage[p] = covered as f32 / ss as f32;
        }
    }
    out
}

fn shade_fragment(input: &RasterInput, t: &Setup, b: [f32; 3]) -> [f32; 3] {
    let mut n = [0.0f32; 3];
    let mut r = [0.0f32; 3];
    for c in 0..3 {
        let i = t.idx[c] as usize;
        for k in 0..3 {
            n[k] += b[c] * input.normals_cam[i][k];
            r[k] += b[c] * input.reflectance[i][k];
        }
    }
    let n = normalize(n).unwrap_or(t.face_normal);
    sh::shade(input.gamma, n, r)
}

impl RasterOutput {
    /// Composite the render over `background` (`[H * W]`) with alpha = coverage.
    pub fn composite_over(&self, background: &[[f32; 3]]) -> Result<Vec<[f32; 3]>> {
        if background.len() != self.width * self.height {
            return Err(Error::invalid(format!(
                "composite: background has {} pixels, the render {}x{}",
                background.len(),
                self.width,
                self.height
            )));
        }
        let blend = |((c, &a), bg): ((&[f32; 3], &f32), &[f32; 3])| -> [f32; 3] {
            [a * c[0] + (1.0 - a) * bg[0], a * c[1] + (1.0 - a) * bg[1], a * c[2] + (1.0 - a) * bg[2]]
        };
        Ok(self.color.iter().zip(&self.coverage).zip(background).map(blend).collect())
    }

    /// The render over black as an 8-bit image.
    pub fn to_rgb_image(&self) -> image::RgbImage {
        let black = vec![[0.0f32; 3]; self.width * self.height];
        let px = self.composite_over(&black).expect("same size");
        to_rgb_image(self.width, self.height, &px).expect("same size")
    }
}

/// A [0, 1] value as an 8-bit channel: clamped, then rounded (NaN becomes 0).
#[inline]
pub fn quantize(x: f32) -> u8 {
    if x.is_nan() { 0 } else { (x.clamp(0.0, 1.0) * 255.0).round() as u8 }
}

/// Float RGB pixels (`[H * W]`, row-major) to an 8-bit image, clamping to [0, 1] and rounding.
pub fn to_rgb_image(width: usize, height: usize, pixels: &[[f32; 3]]) -> Result<image::RgbImage> {
    if pixels.len() != width * height {
        return Err(Error::invalid(format!("to_rgb_image: {} pixels for a {width}x{height} image", pixels.len())));
    }
    let raw: Vec<u8> = pixels.iter().flat_map(|p| p.map(quantize)).collect();
    image::RgbImage::from_raw(width as u32, height as u32, raw)
        .ok_or_else(|| Error::invalid(format!("to_rgb_image: cannot build a {width}x{height} image")))
}

/// An 8-bit image to float RGB pixels in [0, 1] (`[H * W]`, row-major).
pub fn from_rgb_image(img: &image::RgbImage) -> Vec<[f32; 3]> {
    img.pixels().map(|p| p.0.map(|c| c as f32 / 255.0)).collect()
}

/// Pose a model-frame mesh into camera space: `v_cam = R v + t`, `n_cam = R n`.
///
/// # Shapes
/// `vertices`, `normals`: `[N, 3]`; returns two `[N, 3]` arrays.
pub fn pose_mesh(
    vertices: &[[f32; 3]],
    normals: &[[f32; 3]],
    r: &[[f32; 3]; 3],
    t: [f32; 3],
) -> (Vec<[f32; 3]>, Vec<[f32; 3]>) {
    (vertices.iter().map(|&v| transform(r, t, v)).collect(), normals.iter().map(|&n| rotate(r, n)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face_model::topology::vertex_normals;

    /// 8x8 image, focal 100: a point at z = -100 maps to u = 4 + x, v = 4 - y.
    fn k8() -> Intrinsics {
        Intrinsics { focal: 100.0, width: 8, height: 8, near: 1.0 }
    }

    /// An axis-aligned camera-facing square from pixel corner (u0, v0) to (u1, v1) at distance d
    /// (for `k`), as 4 vertices and 2 counter-clockwise triangles starting at `first`.
    fn square(k: &Intrinsics, u: [f32; 2], v: [f32; 2], d: f32, first: u32) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
        let [cx, cy] = k.centre();
        let x = |u: f32| (u - cx) * d / k.focal;
        let y = |v: f32| -(v - cy) * d / k.focal;
        let verts =
            vec![[x(u[0]), y(v[0]), -d], [x(u[1]), y(v[0]), -d], [x(u[1]), y(v[1]), -d], [x(u[0]), y(v[1]), -d]];
        // Seen from +z (x right, y up) 3 -> 2 -> 1 is counter-clockwise.
        (verts, vec![[first + 3, first + 2, first + 1], [first + 3, first + 1, first]])
    }

    struct Scene {
        v: Vec<[f32; 3]>,
        n: Vec<[f32; 3]>,
        r: Vec<[f32; 3]>,
        t: Vec<[u32; 3]>,
    }

    impl Scene {
        fn new() -> Self {
            Scene { v: vec![], n: vec![], r: vec![], t: vec![] }
        }
        fn add_square(&mut self, k: &Intrinsics, u: [f32; 2], v: [f32; 2], d: f32, colour: [f32; 3]) {
            let (verts, tris) = square(k, u, v, d, self.v.len() as u32);
            self.n.extend(verts.iter().map(|_| [0.0, 0.0, 1.0]));
            self.r.extend(verts.iter().map(|_| colour));
            self.v.extend(verts);
            self.t.extend(tris);
        }
        fn render(&self, k: Intrinsics, gamma: &[f32], cull: bool, ss: usize) -> RasterOutput {
            rasterize(&RasterInput {
                vertices_cam: &self.v,
                normals_cam: &self.n,
                reflectance: &self.r,
                triangles: &self.t,
                gamma,
                intrinsics: k,
                cull_backfaces: cull,
                supersample: ss,
            })
            .unwrap()
        }
    }

    fn mask(out: &RasterOutput) -> Vec<String> {
        (0..out.height)
            .map(|j| {
                (0..out.width)
                    .map(|i| match out.coverage[j * out.width + i] {
                        0.0 => '.',
                        1.0 => '#',
                        _ => '+',
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn golden_square_coverage_colour_depth_and_ids() {
        let k = k8();
        let mut s = Scene::new();
        s.add_square(&k, [2.0, 6.0], [2.0, 6.0], 100.0, [0.2, 0.4, 0.6]);
        let out = s.render(k, &sh::neutral(), true, 1);
        let expected = ["........", "........", "..####..", "..####..", "..####..", "..####..", "........", "........"];
        assert_eq!(mask(&out), expected);
        for j in 0..8 {
            for i in 0..8 {
                let p = j * 8 + i;
                if out.coverage[p] == 1.0 {
                    for (c, e) in out.color[p].iter().zip([0.2, 0.4, 0.6]) {
                        assert!((c - e).abs() < 1e-5, "pixel ({i}, {j}): {:?}", out.color[p]);
                    }
                    assert!((out.depth[p] - 100.0).abs() < 1e-3);
                    // The diagonal from (2, 6) to (6, 2) splits the square: triangle 1 holds the
                    // top-left corner, triangle 0 the bottom-right; centres on it go to one side.
                    let diag = i + j;
                    let want = if diag < 7 {
                        1
                    } else if diag > 7 {
                        0
                    } else {
                        out.triangle[2 * 8 + 5]
                    };
                    assert_eq!(out.triangle[p], want, "pixel ({i}, {j})");
                } else {
                    assert_eq!(out.color[p], [0.0; 3]);
                    assert_eq!(out.depth[p], f32::INFINITY);
                    assert_eq!(out.triangle[p], NO_TRIANGLE);
                }
            }
        }
        let img = out.to_rgb_image();
        assert_eq!(img.get_pixel(3, 3).0, [51, 102, 153]);
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn shared_edges_are_watertight_without_double_coverage() {
        // A fan of 12 triangles around a centre, with many samples exactly on the spokes.
        let k = Intrinsics { focal: 50.0, width: 16, height: 16, near: 1.0 };
        let mut v = vec![[0.0f32, 0.0, -50.0]];
        for a in 0..12 {
            let th = a as f32 * std::f32::consts::TAU / 12.0;
            v.push([7.0 * th.cos(), 7.0 * th.sin(), -50.0]);
        }
        let tris: Vec<[u32; 3]> = (0..12).map(|a| [0, 1 + a, 1 + (a + 1) % 12]).collect();
        let input = RasterInput {
            vertices_cam: &v,
            normals_cam: &vec![[0.0, 0.0, 1.0]; v.len()],
            reflectance: &vec![[1.0; 3]; v.len()],
            triangles: &tris,
            gamma: &sh::neutral(),
            intrinsics: k,
            cull_backfaces: false,
            supersample: 1,
        };
        let setups: Vec<Setup> = (0..tris.len()).filter_map(|f| setup(&input, f)).collect();
        assert_eq!(setups.len(), 12);
        // Samples on a fine grid that includes the centre and points exactly on spokes.
        for j in 0..=64 {
            for i in 0..=64 {
                let s = [4.0 + i as f64 * 0.125, 4.0 + j as f64 * 0.125];
                let hits = setups.iter().filter(|t| covers(t, s).is_some()).count();
                let r = ((s[0] - 8.0).powi(2) + (s[1] - 8.0).powi(2)).sqrt();
                if r < 6.5 {
                    assert_eq!(hits, 1, "sample {s:?} covered {hits} times");
                } else {
                    assert!(hits <= 1, "sample {s:?} covered {hits} times");
                }
            }
        }
    }

    #[test]
    fn nearer_square_occludes_in_any_order() {
        let k = k8();
        let far = ([1.0, 7.0], [1.0, 7.0], 100.0, [1.0, 0.0, 0.0]);
        let near = ([3.0, 5.0], [3.0, 5.0], 50.0, [0.0, 1.0, 0.0]);
        for order in [[far, near], [near, far]] {
            let mut s = Scene::new();
            for (u, v, d, c) in order {
                s.add_square(&k, u, v, d, c);
            }
            let out = s.render(k, &sh::neutral(), true, 1);
            let centre = 4 * 8 + 4;
            let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
            assert!(close(out.color[centre], [0.0, 1.0, 0.0]), "{:?}", out.color[centre]);
            assert!((out.depth[centre] - 50.0).abs() < 1e-3);
            let ring = 8 + 1; // row 1, column 1
            assert!(close(out.color[ring], [1.0, 0.0, 0.0]), "{:?}", out.color[ring]);
            assert!((out.depth[ring] - 100.0).abs() < 1e-3);
            assert_eq!(out.coverage.iter().filter(|&&c| c == 1.0).count(), 36);
        }
    }

    #[test]
    fn constant_light_on_a_tilted_plane_gives_interpolated_reflectance_perspective_correctly() {
        // A plane receding in depth with reflectance linear in 3D x: each pixel must show the
        // reflectance of the 3D point its centre ray hits (screen-space interpolation would not).
        let k = Intrinsics { focal: 40.0, width: 32, height: 32, near: 1.0 };
        let corners = [[-60.0f32, -40.0, -60.0], [60.0, -40.0, -180.0], [60.0, 40.0, -180.0], [-60.0, 40.0, -60.0]];
        let refl = |p: [f32; 3]| [0.1 + 0.8 * (p[0] + 60.0) / 120.0, 0.5, 0.9 - 0.8 * (p[0] + 60.0) / 120.0];
        let n = normalize(cross3(sub3(corners[1], corners[0]), sub3(corners[2], corners[0]))).unwrap();
        let r: Vec<[f32; 3]> = corners.iter().map(|&p| refl(p)).collect();
        let mut gamma = [0.0f32; 27];
        for c in 0..3 {
            gamma[c * 9] = 0.8 / sh::C0; // constant irradiance 0.8
        }
        let out = rasterize(&RasterInput {
            vertices_cam: &corners,
            normals_cam: &[n; 4],
            reflectance: &r,
            triangles: &[[0, 1, 2], [0, 2, 3]],
            gamma: &gamma,
            intrinsics: k,
            cull_backfaces: true,
            supersample: 1,
        })
        .unwrap();
        // Plane through corners[0] with normal n: the ray t * dir hits it at t = (n.c0) / (n.dir).
        let mut checked = 0;
        for j in 0..32 {
            for i in 0..32 {
                let p = j * 32 + i;
                if out.coverage[p] < 1.0 {
                    continue;
                }
                let dir = k.ray([i as f32 + 0.5, j as f32 + 0.5]);
                let t = dot3(n, corners[0]) / dot3(n, dir);
                let hit = [dir[0] * t, dir[1] * t, dir[2] * t];
                let want = refl(hit);
                for c in 0..3 {
                    assert!((out.color[p][c] - 0.8 * want[c]).abs() < 1e-4, "pixel ({i},{j})");
                }
                assert!((out.depth[p] - t).abs() < 1e-2 * t / 100.0, "depth {} vs {t}", out.depth[p]);
                checked += 1;
            }
        }
        assert!(checked > 200, "only {checked} pixels covered");
    }

    #[test]
    fn backface_culling_on_and_off() {
        let k = k8();
        let mut s = Scene::new();
        s.add_square(&k, [2.0, 6.0], [2.0, 6.0], 100.0, [0.5; 3]);
        let front_on = s.render(k, &sh::neutral(), true, 1);
        assert_eq!(front_on.coverage.iter().sum::<f32>(), 16.0);
        // Reverse the winding: the square now shows its back to the camera.
        for t in &mut s.t {
            t.swap(1, 2);
        }
        let back_on = s.render(k, &sh::neutral(), true, 1);
        assert_eq!(back_on.coverage.iter().sum::<f32>(), 0.0);
        let back_off = s.render(k, &sh::neutral(), false, 1);
        assert_eq!(back_off.coverage.iter().sum::<f32>(), 16.0);
    }

    #[test]
    fn supersampling_gives_fractional_coverage_on_edges() {
        let k = k8();
        let mut s = Scene::new();
        s.add_square(&k, [2.0, 4.5], [0.0, 8.0], 100.0, [1.0; 3]);
        let one = s.render(k, &sh::neutral(), true, 1);
        assert_eq!(one.coverage[3 * 8 + 4], 0.0); // centre 4.5 lies on the edge, owned by no one here
        let two = s.render(k, &sh::neutral(), true, 2);
        assert_eq!(two.coverage[3 * 8 + 4], 0.5);
        assert_eq!(two.coverage[3 * 8 + 3], 1.0);
        assert_eq!(two.coverage[3 * 8 + 5], 0.0);
        // Colour is not premultiplied; compositing applies coverage as alpha.
        let edge_px = two.color[3 * 8 + 4];
        assert!(edge_px.iter().all(|c| (c - 1.0).abs() < 1e-6), "{edge_px:?}");
        let bg = vec![[0.0f32; 3]; 64];
        let blended = two.composite_over(&bg).unwrap()[3 * 8 + 4];
        assert!(blended.iter().all(|c| (c - 0.5).abs() < 1e-6), "{blended:?}");
        let mut s4 = Scene::new();
        s4.add_square(&k, [2.0, 4.25], [0.0, 8.0], 100.0, [1.0; 3]);
        assert_eq!(s4.render(k, &sh::neutral(), true, 4).coverage[3 * 8 + 4], 0.25);
    }

    #[test]
    fn degenerate_nan_and_near_plane_triangles_are_skipped() {
        let k = k8();
        let v = vec![
            [0.0, 0.0, -100.0],
            [1.0, 0.0, -100.0],
            [2.0, 0.0, -100.0], // collinear with 0 and 1
            [f32::NAN, 1.0, -100.0],
            [0.0, 1.0, 5.0], // behind the camera
            [0.0, 2.0, -100.0],
        ];
        let tris = vec![[0, 1, 1], [0, 1, 2], [0, 1, 3], [0, 1, 4], [0, 4, 5]];
        let out = rasterize(&RasterInput {
            vertices_cam: &v,
            normals_cam: &[[0.0, 0.0, 1.0]; 6],
            reflectance: &[[1.0; 3]; 6],
            triangles: &tris,
            gamma: &sh::neutral(),
            intrinsics: k,
            cull_backfaces: false,
            supersample: 2,
        })
        .unwrap();
        assert!(out.coverage.iter().all(|&c| c == 0.0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let v = vec![[0.0f32, 0.0, -100.0]; 3];
        let n = vec![[0.0f32, 0.0, 1.0]; 3];
        let g = sh::neutral();
        let base = RasterInput {
            vertices_cam: &v,
            normals_cam: &n,
            reflectance: &n,
            triangles: &[[0, 1, 2]],
            gamma: &g,
            intrinsics: k8(),
            cull_backfaces: true,
            supersample: 1,
        };
        assert!(rasterize(&base).is_ok());
        let e = rasterize(&RasterInput { triangles: &[[0, 1, 3]], ..base }).unwrap_err();
        assert!(e.to_string().contains("triangle 0"), "{e}");
        assert!(rasterize(&RasterInput { gamma: &g[..9], ..base }).is_err());
        assert!(rasterize(&RasterInput { normals_cam: &n[..2], ..base }).is_err());
        assert!(rasterize(&RasterInput { supersample: 0, ..base }).is_err());
        assert!(rasterize(&RasterInput { intrinsics: Intrinsics { width: 0, ..k8() }, ..base }).is_err());
        assert!(RasterOutput::composite_over(&rasterize(&base).unwrap(), &[[0.0; 3]; 3]).is_err());
    }

    #[test]
    fn image_conversion_clamps_and_rounds() {
        let px = [[-0.5, 0.5, 2.0], [f32::NAN, 0.25, 1.0]];
        let img = to_rgb_image(2, 1, &px).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 128, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 64, 255]);
        let back = from_rgb_image(&img);
        assert_eq!(back[0], [0.0, 128.0 / 255.0, 1.0]);
        assert!(to_rgb_image(3, 1, &px).is_err());
    }

    #[test]
    fn demo_face_renders_frontally_with_a_bright_near_nose() {
        let model = crate::face_model::demo::demo_model();
        let v = crate::face_model::to_vec3(&model.mean_shape);
        let n = vertex_normals(&v, &model.triangles);
        let k = Intrinsics { focal: 300.0, width: 64, height: 64, near: 1.0 };
        // Centre the landmarks; distance so the head (about 160 mm wide) spans ~75% of the image.
        let lm: Vec<[f32; 3]> = model.landmarks.iter().map(|&i| v[i as usize]).collect();
        let c = [lm.iter().map(|p| p[0]).sum::<f32>() / 68.0, lm.iter().map(|p| p[1]).sum::<f32>() / 68.0];
        let d = k.distance_for(160.0, 0.75);
        let r = crate::render::camera::euler_to_matrix([0.0; 3]);
        let (vc, nc) = pose_mesh(&v, &n, &r, [-c[0], -c[1], -d]);
        // Light from the camera direction: irradiance 0.5 + 0.5 n_z.
        let mut gamma = [0.0f32; 27];
        for ch in 0..3 {
            gamma[ch * 9] = 0.5 / sh::C0;
            gamma[ch * 9 + 2] = 0.5 / sh::C1;
        }
        let refl = vec![[0.6f32; 3]; v.len()];
        let out = rasterize(&RasterInput {
            vertices_cam: &vc,
            normals_cam: &nc,
            reflectance: &refl,
            triangles: &model.triangles,
            gamma: &gamma,
            intrinsics: k,
            cull_backfaces: true,
            supersample: 2,
        })
        .unwrap();
        assert_eq!(out.coverage[32 * 64 + 32], 1.0);
        assert_eq!(out.coverage[0], 0.0);
        let at = |vi: u32| {
            let uv = k.project(vc[vi as usize]).unwrap();
            (uv[1] as usize) * 64 + uv[0] as usize
        };
        let nose = at(model.landmarks[30]);
        // A cheek point: between the outer eye corner and the mouth corner, subject's right.
        let cheek_pt = [(lm[36][0] + lm[48][0]) * 0.5 - 10.0, (lm[36][1] + lm[48][1]) * 0.5];
        let cheek_v = (0..v.len())
            .min_by(|&a, &b| {
                let da = (v[a][0] - cheek_pt[0]).powi(2) + (v[a][1] - cheek_pt[1]).powi(2) - v[a][2] * 1e-3;
                let db = (v[b][0] - cheek_pt[0]).powi(2) + (v[b][1] - cheek_pt[1]).powi(2) - v[b][2] * 1e-3;
                da.total_cmp(&db)
            })
            .unwrap() as u32;
        let cheek = at(cheek_v);
        assert!(out.depth[nose] + 10.0 < out.depth[cheek], "nose {} cheek {}", out.depth[nose], out.depth[cheek]);
        assert!(out.color[nose][0] > out.color[cheek][0], "nose {:?} cheek {:?}", out.color[nose], out.color[cheek]);
        assert!(out.color[nose][0] > 0.55 && out.color[nose][0] <= 0.6 + 1e-5);
        // Coverage of the face is substantial and the left and right borders are empty.
        let covered = out.coverage.iter().filter(|&&c| c > 0.0).count();
        assert!(covered > 64 * 64 / 4, "covered {covered}");
        // The head is taller than wide: its sides stay inside the image, its crown may not.
        assert!((0..64).all(|j| out.coverage[j * 64] == 0.0 && out.coverage[j * 64 + 63] == 0.0));
    }
}
