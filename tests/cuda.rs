//! CUDA against CPU: every custom kernel (vertex normals, SH shading, projection + bilinear
//! sampling, photometric l2,1, im2col unfold/fold), the whole image formation layer and a whole
//! FaceNet forward + loss + backward, outputs and gradients, on seeded random inputs.
//!
//! The `cuda_*` tests need feature `cuda` and a GPU. Without a GPU they print a message and
//! pass, unless `FML_REQUIRE_CUDA` is set (benches/gpu_check.sh sets it): then that is a failure.
//! The `harness_*` tests run the very same checks on machines without a GPU, with a stand-in
//! for the GPU's different rounding: the float64 CPU path for the ops and the layer (compared
//! with the float32 CPU path, as the GPU is), weights perturbed by a few ulps for the network.
//! They keep the comparisons, tolerances and the inputs' safety margins honest where CI runs.
//!
//! Every check prints its measured error (`--nocapture` shows them).

use candle_core::{DType, Device, Tensor, Var};
use fml::config::Config;
use fml::encoder::EncoderConfig;
use fml::encoder::im2col::{conv2d_cbhw, fold, unfold};
use fml::face_model::FaceModel;
use fml::loss::{Objective, TrainBatch};
use fml::network::FaceNet;
use fml::render::camera::Intrinsics;
use fml::render::ops::normals::{NormalsTopology, vertex_normals};
use fml::render::ops::photo::photometric_l21;
use fml::render::ops::sample::project_and_sample;
use fml::render::ops::shade::shade;
use fml::render::{Backend, ImageFormation, RenderInput};
use fml::rng::Rng;
use std::collections::BTreeMap;

// ------------------------------------------------------------------------------ plumbing

/// Where the code under test runs: a device and the float type used there.
#[derive(Clone, Debug)]
struct Target {
    device: Device,
    dtype: DType,
}

impl Target {
    /// The CPU twins in f32: what every target is compared with.
    fn cpu_f32() -> Self {
        Target { device: Device::Cpu, dtype: DType::F32 }
    }

    /// Host values as a tensor of this target.
    fn put(&self, v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(self.dtype))
            .and_then(|t| t.to_device(&self.device))
            .expect("tensor on the target")
    }

    fn var(&self, v: &[f64], shape: &[usize]) -> Var {
        Var::from_tensor(&self.put(v, shape)).expect("var")
    }
}

/// Host copy of any float or u32 tensor as f64.
fn host(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("host copy")
}

fn grad_of(grads: &candle_core::backprop::GradStore, v: &Var, what: &str) -> Vec<f64> {
    host(grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{what}: no gradient")))
}

/// Non-finite entries must agree exactly (NaN with NaN, inf with inf of the same sign).
fn same_non_finite(what: &str, got: &[f64], want: &[f64]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values on the target, {} on the CPU", got.len(), want.len()));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !(g == w || g.is_finite() && w.is_finite() || g.is_nan() && w.is_nan()) {
            return Err(format!("{what}: entry {i} is {g} on the target, {w} on the CPU"));
        }
    }
    Ok(())
}

/// Largest difference over the finite entries relative to the largest |CPU value| (at least
/// `floor`), if within `tol`.
fn compare(what: &str, got: &[f64], want: &[f64], floor: f64, tol: f64) -> Result<f64, String> {
    same_non_finite(what, got, want)?;
    let scale = want.iter().filter(|w| w.is_finite()).fold(floor, |s, w| s.max(w.abs()));
    let (mut worst, mut at) = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_finite() && w.is_finite() && (g - w).abs() > worst {
            (worst, at) = ((g - w).abs(), i);
        }
    }
    let e = worst / scale;
    if e > tol {
        return Err(format!(
            "{what}: error {e:.3e} (relative to the largest value) > {tol:.0e} at entry {at}: target {} vs CPU {}",
            got[at], want[at]
        ));
    }
    Ok(e)
}

/// The relative l2 error `|got - want| / |want|` over finite entries, if within `tol`: for
/// gradients summed over many paths, where one rounding-sized flip (a ReLU at 0, a vertex on a
/// pixel-cell edge) may move a single entry a lot without meaning anything.
fn compare_l2(what: &str, got: &[f64], want: &[f64], tol: f64) -> Result<f64, String> {
    same_non_finite(what, got, want)?;
    let (mut d2, mut w2) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        if g.is_finite() && w.is_finite() {
            d2 += (g - w) * (g - w);
            w2 += w * w;
        }
    }
    if w2 == 0.0 {
        return Err(format!("{what}: the CPU value is zero, nothing is compared"));
    }
    let e = (d2 / w2).sqrt();
    if e > tol {
        return Err(format!("{what}: relative l2 error {e:.3e} > {tol:.0e}"));
    }
    Ok(e)
}

/// [`compare`], printing the measured error; panics when out of tolerance.
fn check(what: &str, got: &[f64], want: &[f64], floor: f64, tol: f64) -> f64 {
    let e = compare(what, got, want, floor, tol).unwrap_or_else(|m| panic!("{m}"));
    eprintln!("  {what}: max error {e:.2e} of the largest value (tolerance {tol:.0e})");
    e
}

/// [`compare_l2`], printing the measured error; panics when out of tolerance.
fn check_l2(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    let e = compare_l2(what, got, want, tol).unwrap_or_else(|m| panic!("{m}"));
    eprintln!("  {what}: relative l2 error {e:.2e} (tolerance {tol:.0e})");
    e
}

fn normals(rng: &mut Rng, count: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(count * 3);
    for _ in 0..count {
        let v = [rng.normal(), rng.normal(), rng.normal()];
        let l = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-6);
        out.extend(v.iter().map(|x| x / l));
    }
    out
}

fn gaussian(rng: &mut Rng, count: usize) -> Vec<f64> {
    (0..count).map(|_| rng.normal()).collect()
}

/// SH coefficients `[b, 27]` around a bright ambient term.
fn light(rng: &mut Rng, b: usize) -> Vec<f64> {
    let mut g = Vec::new();
    for _ in 0..b {
        for c in 0..3 {
            for band in 0..9 {
                g.push(if band == 0 { 3.0 + rng.range(-0.3, 0.3) } else { rng.range(-0.4, 0.4) } + 0.01 * c as f64);
            }
        }
    }
    g
}

/// A `k` x `k` vertex grid (`size` mm, z = 0, facing +z) and its triangles.
fn grid(k: usize, size: f64) -> (Vec<[f64; 3]>, Vec<[u32; 3]>) {
    let mut v = Vec::new();
    for j in 0..k {
        for i in 0..k {
            v.push([size * (i as f64 / (k - 1) as f64 - 0.5), size * (j as f64 / (k - 1) as f64 - 0.5), 0.0]);
        }
    }
    let mut t = Vec::new();
    for j in 0..k - 1 {
        for i in 0..k - 1 {
            let a = (j * k + i) as u32;
            t.push([a, a + 1, a + k as u32 + 1]);
            t.push([a, a + k as u32 + 1, a + k as u32]);
        }
    }
    (v, t)
}

// ------------------------------------------------------------------------------ the checks

/// Vertex normals, forward and backward, on a noisy grid plus a collapsed triangle (zero area:
/// the normalisation's epsilon keeps it finite) and a vertex in no triangle.
fn check_normals(t: &Target, tol: (f64, f64)) {
    eprintln!("vertex normals on {:?} {:?}", t.device, t.dtype);
    let (b, k) = (3, 23);
    let (base, mut tris) = grid(k, 100.0);
    let n_grid = base.len();
    let n = n_grid + 4;
    tris.push([n_grid as u32, n_grid as u32 + 1, n_grid as u32 + 2]);
    let mut rng = Rng::new(101);
    let mut v = Vec::new();
    for _ in 0..b {
        let shift = [rng.range(-20.0, 20.0), rng.range(-20.0, 20.0), rng.range(-900.0, -700.0)];
        for p in &base {
            v.extend([
                p[0] + shift[0] + rng.normal() * 0.5,
                p[1] + shift[1] + rng.normal() * 0.5,
                p[2] + shift[2] + rng.normal() * 2.0,
            ]);
        }
        let collapsed = [rng.normal(), rng.normal(), shift[2]];
        for _ in 0..3 {
            v.extend(collapsed);
        }
        v.extend([rng.normal(), rng.normal(), shift[2]]);
    }
    let g = gaussian(&mut rng, b * n * 3);
    let run = |t: &Target| {
        let topo = NormalsTopology::new(n, &tris, &t.device).unwrap();
        let var = t.var(&v, &[b, n, 3]);
        let out = vertex_normals(var.as_tensor(), &topo).unwrap(); // [B, N, 3]
        let grads = (&out * t.put(&g, &[b, n, 3])).unwrap().sum_all().unwrap().backward().unwrap();
        (host(&out), grad_of(&grads, &var, "normals"))
    };
    let (want, want_g) = run(&Target::cpu_f32());
    let (got, got_g) = run(t);
    assert!(want_g.iter().all(|x| x.is_finite()), "the CPU gradient must be finite");
    // The collapsed triangle and the lone vertex: normal exactly 0, gradient 0, on both.
    for bi in 0..b {
        for i in n_grid..n {
            for c in 0..3 {
                let o = (bi * n + i) * 3 + c;
                assert_eq!(got[o], 0.0, "degenerate vertex {i}: normal {}", got[o]);
                assert_eq!(got_g[o], 0.0, "degenerate vertex {i}: gradient {}", got_g[o]);
            }
        }
    }
    check("normals forward", &got, &want, 1.0, tol.0);
    check("normals backward", &got_g, &want_g, 1e-12, tol.1);
}

/// SH shading, forward and the three gradients; N is not a multiple of the 256-thread block so
/// the SH-gradient reduction has a partial block.
fn check_shade(t: &Target, tol: (f64, f64)) {
    eprintln!("SH shading on {:?} {:?}", t.device, t.dtype);
    let (b, n) = (3, 1037);
    let mut rng = Rng::new(202);
    let nrm = normals(&mut rng, b * n);
    let refl: Vec<f64> = (0..b * n * 3).map(|_| rng.range(0.2, 0.9)).collect();
    let gamma = light(&mut rng, b);
    let g = gaussian(&mut rng, b * n * 3);
    let run = |t: &Target| {
        let (vn, vr, vg) = (t.var(&nrm, &[b, n, 3]), t.var(&refl, &[b, n, 3]), t.var(&gamma, &[b, 27]));
        let out = shade(vn.as_tensor(), vr.as_tensor(), vg.as_tensor()).unwrap(); // [B, N, 3]
        let grads = (&out * t.put(&g, &[b, n, 3])).unwrap().sum_all().unwrap().backward().unwrap();
        (
            host(&out),
            grad_of(&grads, &vn, "normals"),
            grad_of(&grads, &vr, "reflectance"),
            grad_of(&grads, &vg, "gamma"),
        )
    };
    let want = run(&Target::cpu_f32());
    let got = run(t);
    check("shade forward", &got.0, &want.0, 1e-12, tol.0);
    check("shade d normals", &got.1, &want.1, 1e-12, tol.1);
    check("shade d reflectance", &got.2, &want.2, 1e-12, tol.1);
    check("shade d gamma", &got.3, &want.3, 1e-12, tol.1);
}

/// Projection and bilinear sampling, forward and backward.
///
/// Random points project to pixel positions at least 0.05 px from every cell edge and 0.01 px
/// inside or outside the sampleable area: the sampled colour is continuous across cell edges but
/// its gradient is not, and the sampleable test is a step, so points closer to either than the
/// devices' rounding (about 1e-5 px here) could legitimately differ. Fixed edge cases follow:
/// an exact pixel centre (integer footprint, weight 0), the last cell (weight ~1 on the far
/// column/row), exactly on the near plane, behind the camera, NaN and infinite coordinates.
/// The image is 37 x 29 (odd, not square) so that a swapped width/height would show.
fn check_sample(t: &Target, tol: (f64, f64)) {
    eprintln!("projection + bilinear sampling on {:?} {:?}", t.device, t.dtype);
    let k = Intrinsics { focal: 60.0, width: 37, height: 29, near: 1.0 };
    let [cx, cy] = k.centre().map(f64::from);
    let f = k.focal as f64;
    let (w, h) = (k.width as f64, k.height as f64);
    let mut rng = Rng::new(303);
    let b = 2;
    // Back-project a pixel position (xi, yi) (pixel-index coordinates) at depth d.
    let point = |xi: f64, yi: f64, d: f64| [(xi + 0.5 - cx) * d / f, -(yi + 0.5 - cy) * d / f, -d];
    let mut per_image: Vec<Vec<[f64; 3]>> = Vec::new();
    for _ in 0..b {
        let mut pts = Vec::new();
        for i in 0..1500 {
            let d = rng.range(5.0, 50.0);
            let (xi, yi) = if i % 10 == 9 {
                // Outside: left/right/top/bottom by at least 0.01 px.
                let off = rng.range(0.01, 5.0);
                match (i / 10) % 4 {
                    0 => (-off, rng.range(0.0, h - 1.0)),
                    1 => (w - 1.0 + off, rng.range(0.0, h - 1.0)),
                    2 => (rng.range(0.0, w - 1.0), -off),
                    _ => (rng.range(0.0, w - 1.0), h - 1.0 + off),
                }
            } else {
                let cell = |m: f64, rng: &mut Rng| (rng.below(m as usize - 1) as f64) + rng.range(0.05, 0.95);
                (cell(w, &mut rng), cell(h, &mut rng))
            };
            pts.push(point(xi, yi, d));
        }
        // Edge cases.
        pts.push([0.0, 0.0, -10.0]); // exact pixel centre (18, 14): integer footprint
        pts.push(point(w - 1.0 - 1e-3, h - 1.0 - 1e-3, 20.0)); // the last cell, weights ~1
        pts.push(point(w - 2.0 + 0.5, 0.25, 30.0)); // last column's cell, first row
        pts.push([0.0, 0.0, -(k.near as f64)]); // on the near plane: not sampleable
        pts.push([0.0, 0.0, -1.5 * k.near as f64]); // just in front of it
        pts.push([1.0, 1.0, 10.0]); // behind the camera
        pts.push([f64::NAN, 0.0, -10.0]);
        pts.push([0.0, 0.0, f64::NAN]);
        pts.push([f64::INFINITY, 0.0, -10.0]);
        pts.push([0.0, f64::NEG_INFINITY, -10.0]);
        pts.push([3.0, 2.0, f64::INFINITY]);
        pts.push([3.0, 2.0, f64::NEG_INFINITY]); // infinitely far: projects to the centre
        per_image.push(pts);
    }
    let n = per_image[0].len();
    let v: Vec<f64> = per_image.iter().flatten().flatten().copied().collect();
    let img: Vec<f64> = (0..b * k.height * k.width * 3).map(|_| rng.uniform()).collect();
    let g = gaussian(&mut rng, b * n * 3);
    let run = |t: &Target| {
        let var = t.var(&v, &[b, n, 3]);
        let image = t.put(&img, &[b, k.height, k.width, 3]);
        let out = project_and_sample(var.as_tensor(), &image, &k).unwrap(); // [B, N, 3]
        let grads = (&out * t.put(&g, &[b, n, 3])).unwrap().sum_all().unwrap().backward().unwrap();
        (host(&out), grad_of(&grads, &var, "vertices"))
    };
    let (want, want_g) = run(&Target::cpu_f32());
    let (got, got_g) = run(t);
    // The fixed cases: exact pixel centre (18, 14) of each image; nothing at the unsampleable ones.
    for bi in 0..b {
        let o = bi * n + 1500;
        let texel = ((bi * k.height + 14) * k.width + 18) * 3;
        for c in 0..3 {
            let expect = Tensor::new(&[img[texel + c]], &Device::Cpu).unwrap().to_dtype(t.dtype).unwrap();
            assert_eq!(got[o * 3 + c], host(&expect)[0], "image {bi}: the pixel centre samples its texel");
        }
        for (j, what) in
            [(3, "near plane"), (5, "behind"), (6, "NaN x"), (7, "NaN z"), (8, "inf x"), (9, "-inf y"), (10, "inf z")]
        {
            let o = (bi * n + 1500 + j) * 3;
            assert!(
                got[o..o + 3].iter().chain(&got_g[o..o + 3]).all(|&x| x == 0.0),
                "image {bi}, {what}: sampled or moved"
            );
        }
    }
    let inside = want.chunks(3).filter(|c| c.iter().any(|&x| x != 0.0)).count();
    assert!(inside > b * 1200, "most random points must be sampleable, {inside} are");
    check("sample forward", &got, &want, 1.0, tol.0);
    check("sample backward", &got_g, &want_g, 1e-12, tol.1);
}

/// The photometric l2,1 term, value and gradients, with masked-out NaNs, an image with nothing
/// visible (loss 0, gradient 0), an exact zero residual and a visible NaN (NaN loss).
fn check_photo(t: &Target, tol: (f64, f64)) {
    eprintln!("photometric l2,1 on {:?} {:?}", t.device, t.dtype);
    let (b, n) = (4, 777);
    let mut rng = Rng::new(404);
    let mut sampled: Vec<f64> = (0..b * n * 3).map(|_| rng.uniform()).collect();
    let mut shaded: Vec<f64> = (0..b * n * 3).map(|_| rng.uniform()).collect();
    let mut mask: Vec<f64> = (0..b * n).map(|_| if rng.uniform() < 0.7 { 1.0 } else { 0.0 }).collect();
    // Image 0: a NaN mask entry counts as invisible; exact zero residuals at two visible vertices.
    mask[5] = f64::NAN;
    for i in [10, 11] {
        mask[i] = 1.0;
        for c in 0..3 {
            shaded[i * 3 + c] = sampled[i * 3 + c];
        }
    }
    // Image 1: NaNs at invisible vertices do not reach the loss.
    for i in [n + 3, n + 100, n + 700] {
        mask[i] = 0.0;
        sampled[i * 3] = f64::NAN;
        shaded[i * 3 + 2] = f64::NAN;
    }
    // Image 2: nothing visible.
    for m in &mut mask[2 * n..3 * n] {
        *m = 0.0;
    }
    // Image 3: a visible NaN.
    mask[3 * n + 42] = 1.0;
    shaded[(3 * n + 42) * 3 + 1] = f64::NAN;
    let wl = gaussian(&mut rng, b);
    let run = |t: &Target| {
        let (va, vc) = (t.var(&sampled, &[b, n, 3]), t.var(&shaded, &[b, n, 3]));
        let loss = photometric_l21(va.as_tensor(), vc.as_tensor(), &t.put(&mask, &[b, n])).unwrap(); // [B]
        let grads = (&loss * t.put(&wl, &[b])).unwrap().sum_all().unwrap().backward().unwrap();
        (host(&loss), grad_of(&grads, &va, "sampled"), grad_of(&grads, &vc, "shaded"))
    };
    let want = run(&Target::cpu_f32());
    let got = run(t);
    assert!(got.0[0].is_finite() && got.0[1].is_finite() && got.0[3].is_nan(), "losses {:?}", got.0);
    assert_eq!(got.0[2], 0.0, "no visible vertex: loss 0");
    assert!(got.1[2 * n * 3..3 * n * 3].iter().all(|&x| x == 0.0), "no visible vertex: zero gradient");
    for i in [10, 11] {
        assert!(got.1[i * 3..i * 3 + 3].iter().all(|&x| x == 0.0), "zero residual: zero gradient");
    }
    check("photometric forward", &got.0, &want.0, 1e-12, tol.0);
    check("photometric d sampled", &got.1, &want.1, 1e-12, tol.1);
    check("photometric d shaded", &got.2, &want.2, 1e-12, tol.1);
}

/// Inputs that start inside their buffer. A batch narrowed out of a larger one is contiguous with
/// a non-zero start offset, so the ops hand it to their kernels as it is and every kernel must
/// read from that offset (the CUDA views add it to the device pointer). The whole chain (normals,
/// shading, sampling of an image also narrowed, the photometric term) runs forward and backward
/// on rows 1..=B of B + 2 and is compared with the CPU on the same values built without an offset.
fn check_offsets(t: &Target, tol: (f64, f64)) {
    eprintln!("inputs at a start offset on {:?} {:?}", t.device, t.dtype);
    let (b, k) = (2, 19);
    let (base, tris) = grid(k, 30.0);
    let n = base.len();
    let (w, h) = (37, 29);
    let cam = Intrinsics { focal: 300.0, width: w, height: h, near: 1.0 };
    let mut rng = Rng::new(505);
    let mut v = Vec::new();
    for _ in 0..b + 2 {
        for p in &base {
            v.extend([p[0] + rng.normal() * 0.3, p[1] + rng.normal() * 0.3, -600.0 + rng.normal() * 2.0]);
        }
    }
    let refl: Vec<f64> = (0..(b + 2) * n * 3).map(|_| rng.range(0.2, 0.9)).collect();
    let gamma = light(&mut rng, b + 2);
    let img: Vec<f64> = (0..(b + 2) * h * w * 3).map(|_| rng.uniform()).collect();
    // Rows 1..=b of a [b + 2, ...] array with `per` values per row.
    let inner = |x: &[f64], per: usize| x[per..(b + 1) * per].to_vec();
    let run = |t: &Target, offset: bool| {
        let rows = if offset { b + 2 } else { b };
        let pick = |x: &[f64], per: usize| if offset { x.to_vec() } else { inner(x, per) };
        let cut = |x: &Tensor| if offset { x.narrow(0, 1, b).unwrap() } else { x.clone() };
        let vv = t.var(&pick(&v, n * 3), &[rows, n, 3]);
        let vr = t.var(&pick(&refl, n * 3), &[rows, n, 3]);
        let vg = t.var(&pick(&gamma, 27), &[rows, 27]);
        let image = t.put(&pick(&img, h * w * 3), &[rows, h, w, 3]);
        let topo = NormalsTopology::new(n, &tris, &t.device).unwrap();
        let nrm = vertex_normals(&cut(vv.as_tensor()), &topo).unwrap(); // [B, N, 3]
        let shaded = shade(&nrm, &cut(vr.as_tensor()), &cut(vg.as_tensor())).unwrap(); // [B, N, 3]
        let sampled = project_and_sample(&cut(vv.as_tensor()), &cut(&image), &cam).unwrap(); // [B, N, 3]
        // The photometric op's inputs at an offset too: padded by a row on each side, cut out.
        let pad = |x: &Tensor| {
            if offset {
                let z = x.narrow(0, 0, 1).unwrap().zeros_like().unwrap();
                cut(&Tensor::cat(&[&z, x, &z], 0).unwrap())
            } else {
                x.clone()
            }
        };
        let mask = cut(&Tensor::ones((rows, n), t.dtype, &t.device).unwrap()); // [B, N]
        let loss = photometric_l21(&pad(&sampled), &pad(&shaded), &mask).unwrap(); // [B]
        let grads = loss.sum_all().unwrap().backward().unwrap();
        let g = |var: &Var, what: &str, per: usize| {
            let all = grad_of(&grads, var, what);
            if offset {
                // Rows outside the batch get no gradient.
                assert!(all[..per].iter().chain(&all[(b + 1) * per..]).all(|&x| x == 0.0), "{what}: outside rows");
                inner(&all, per)
            } else {
                all
            }
        };
        (host(&loss), g(&vv, "vertices", n * 3), g(&vr, "reflectance", n * 3), g(&vg, "gamma", 27))
    };
    let want = run(&Target::cpu_f32(), false);
    let got = run(t, true);
    assert!(want.0.iter().all(|x| x.is_finite() && *x > 0.0), "losses {:?}", want.0);
    check("offset photometric forward", &got.0, &want.0, 1e-12, tol.0);
    check_l2("offset d vertices", &got.1, &want.1, tol.1);
    check("offset d reflectance", &got.2, &want.2, 1e-12, tol.1);
    check("offset d gamma", &got.3, &want.3, 1e-12, tol.1);
}

/// im2col and col2im on their own (pure copies and short in-order sums: equal on both devices),
/// then a whole convolution forward and backward through the BLAS.
fn check_im2col(device: &Device, tol: f64) {
    eprintln!("im2col on {device:?}");
    let cpu = Device::Cpu;
    let mut rng = Rng::new(505);
    // (C, B, H, W, kernel, stride, pad): AlexNet's conv1 shape class, strided, padded, stride =
    // kernel, an even kernel with pad > kernel/2, and odd, non-square sizes throughout.
    for (c, b, h, w, kk, s, p) in [
        (3, 2, 33, 31, 11, 4, 0),
        (5, 3, 17, 15, 5, 2, 2),
        (4, 2, 9, 11, 3, 1, 1),
        (2, 1, 7, 7, 3, 3, 0),
        (3, 2, 6, 5, 4, 1, 3),
    ] {
        let what = format!("C{c} B{b} {h}x{w} k{kk} s{s} p{p}");
        let x = gaussian(&mut rng, c * b * h * w);
        let xt =
            |d: &Device| Tensor::from_vec(x.iter().map(|&v| v as f32).collect::<Vec<_>>(), (c, b, h, w), d).unwrap();
        let (cols_cpu, pc) = unfold(&xt(&cpu), kk, s, p).unwrap();
        let (cols_dev, pd) = unfold(&xt(device), kk, s, p).unwrap();
        assert_eq!(pc, pd);
        assert_eq!(host(&cols_dev), host(&cols_cpu), "unfold {what}");
        let (rows, ncols) = pc.cols_shape();
        let g = gaussian(&mut rng, rows * ncols);
        let gt =
            |d: &Device| Tensor::from_vec(g.iter().map(|&v| v as f32).collect::<Vec<_>>(), (rows, ncols), d).unwrap();
        check(
            &format!("fold {what}"),
            &host(&fold(&gt(device), &pd).unwrap()),
            &host(&fold(&gt(&cpu), &pc).unwrap()),
            1e-12,
            1e-6,
        );
        // A convolution, forward and backward: unfold, matmul (gemm / cuBLAS), fold.
        let o = 6;
        let wv = gaussian(&mut rng, o * c * kk * kk);
        let bias = gaussian(&mut rng, o);
        let gy_len = o * b * pc.out_h as usize * pc.out_w as usize;
        let gy = gaussian(&mut rng, gy_len);
        let run = |t: &Target| {
            let xv = t.var(&x, &[c, b, h, w]);
            let wt = t.var(&wv, &[o, c, kk, kk]);
            let bt = t.var(&bias, &[o]);
            let y = conv2d_cbhw(xv.as_tensor(), wt.as_tensor(), bt.as_tensor(), s, p).unwrap(); // [O, B, Ho, Wo]
            let gyt = t.put(&gy, y.dims());
            let grads = (&y * gyt).unwrap().sum_all().unwrap().backward().unwrap();
            [host(&y), grad_of(&grads, &xv, "x"), grad_of(&grads, &wt, "weight"), grad_of(&grads, &bt, "bias")]
        };
        let want = run(&Target::cpu_f32());
        let got = run(&Target { device: device.clone(), dtype: DType::F32 });
        for (i, name) in ["forward", "d input", "d weight", "d bias"].iter().enumerate() {
            check_l2(&format!("conv {what} {name}"), &got[i], &want[i], tol);
        }
    }
}

/// A wavy patch model for the layer test (every vertex in the face region).
fn patch_model(k: usize, size: f64, amp: f64) -> FaceModel {
    let (v, triangles) = grid(k, size);
    let mean: Vec<f32> = v
        .iter()
        .flat_map(|p| {
            [p[0] as f32, p[1] as f32, (amp * ((p[0] / size * 5.0).sin() * (p[1] / size * 4.0).cos())) as f32]
        })
        .collect();
    let n = v.len();
    FaceModel {
        mean_shape: mean,
        shape_basis: vec![],
        shape_std: vec![],
        expr_basis: vec![],
        expr_std: vec![],
        mean_albedo: vec![0.5; n * 3],
        albedo_basis: vec![],
        albedo_std: vec![],
        triangles,
        landmarks: vec![0; 68],
        contour_right: vec![0],
        contour_left: vec![1],
        skin_mask: vec![0, 1],
        face_region: (0..n as u32).collect(),
        metadata: BTreeMap::new(),
    }
}

struct LayerScene {
    model: FaceModel,
    k: Intrinsics,
    b: usize,
    n: usize,
    v: Vec<f64>,
    r: Vec<f64>,
    rot: Vec<f64>,
    tr: Vec<f64>,
    gamma: Vec<f64>,
    image: Vec<f64>,
    weights: Vec<f64>,
}

/// Perturbed patches well inside a 64 x 56 smooth random image, all facing the camera.
fn layer_scene(seed: u64) -> LayerScene {
    let model = patch_model(11, 100.0, 4.0);
    let k = Intrinsics { focal: 300.0, width: 64, height: 56, near: 1.0 };
    let (b, n) = (2, model.num_vertices());
    let mut rng = Rng::new(seed);
    let mut v = Vec::new();
    let mut r = Vec::new();
    for _ in 0..b {
        for i in 0..n * 3 {
            v.push(model.mean_shape[i] as f64 + rng.normal() * 0.3);
            r.push(rng.range(0.2, 0.9));
        }
    }
    let mut rot = Vec::new();
    let mut tr = Vec::new();
    for _ in 0..b {
        rot.extend([rng.range(-0.3, 0.3), rng.range(-0.4, 0.4), rng.range(-0.2, 0.2)]);
        tr.extend([rng.range(-5.0, 5.0), rng.range(-5.0, 5.0), rng.range(-900.0, -800.0)]);
    }
    let gamma = light(&mut rng, b);
    let freqs: Vec<[f64; 4]> = (0..b * 3)
        .map(|_| [rng.range(0.05, 0.3), rng.range(0.05, 0.3), rng.range(0.0, 6.0), rng.range(0.2, 0.4)])
        .collect();
    let mut image = Vec::new();
    for bi in 0..b {
        for y in 0..k.height {
            for x in 0..k.width {
                for c in 0..3 {
                    let f = freqs[bi * 3 + c];
                    image.push(0.5 + f[3] * (f[0] * x as f64 + f[2]).sin() * (f[1] * y as f64).cos());
                }
            }
        }
    }
    let weights = gaussian(&mut rng, b * n * 3);
    LayerScene { model, k, b, n, v, r, rot, tr, gamma, image, weights }
}

struct LayerOut {
    camera: Vec<f64>,
    normals: Vec<f64>,
    shaded: Vec<f64>,
    sampled: Vec<f64>,
    visible: Vec<f64>,
    photo: Vec<f64>,
    grads: Vec<(&'static str, Vec<f64>)>,
}

/// The layer (Backend::Fast) on a target: every output, and the gradients of a scalar that
/// uses each of them (the photometric term plus weighted shaded and sampled colours).
fn run_layer(t: &Target, s: &LayerScene) -> LayerOut {
    let (b, n) = (s.b, s.n);
    let layer = ImageFormation::new(&s.model, s.k, Backend::Fast, &t.device).unwrap();
    let v = t.var(&s.v, &[b, n, 3]);
    let r = t.var(&s.r, &[b, n, 3]);
    let rot = t.var(&s.rot, &[b, 3]);
    let tr = t.var(&s.tr, &[b, 3]);
    let gamma = t.var(&s.gamma, &[b, 27]);
    let image = t.put(&s.image, &[b, s.k.height, s.k.width, 3]);
    let out = layer
        .render(&RenderInput {
            vertices: v.as_tensor(),
            reflectance: r.as_tensor(),
            rotation: rot.as_tensor(),
            translation: tr.as_tensor(),
            gamma: gamma.as_tensor(),
            image: &image,
        })
        .unwrap();
    let photo = layer.photometric(&out).unwrap(); // [B]
    let w = t.put(&s.weights, &[b, n, 3]);
    let m = out.visible.unsqueeze(2).unwrap(); // [B, N, 1]
    let extra = ((out.shaded.broadcast_mul(&m).unwrap() * &w).unwrap().sum_all().unwrap()
        + (out.sampled.broadcast_mul(&m).unwrap() * w.affine(0.5, 0.1).unwrap()).unwrap().sum_all().unwrap())
    .unwrap();
    let total = (photo.sum_all().unwrap() + (extra * 1e-3).unwrap()).unwrap();
    let grads = total.backward().unwrap();
    LayerOut {
        camera: host(&out.camera_vertices),
        normals: host(&out.normals),
        shaded: host(&out.shaded),
        sampled: host(&out.sampled),
        visible: host(&out.visible),
        photo: host(&photo),
        grads: vec![
            ("vertices", grad_of(&grads, &v, "vertices")),
            ("reflectance", grad_of(&grads, &r, "reflectance")),
            ("rotation", grad_of(&grads, &rot, "rotation")),
            ("translation", grad_of(&grads, &tr, "translation")),
            ("illumination", grad_of(&grads, &gamma, "illumination")),
        ],
    }
}

/// The whole image formation layer with Backend::Fast on the target against the CPU.
///
/// The gradient of the sampled colour jumps where a vertex crosses a pixel-cell edge, and
/// visibility is a step: the scene's seed is checked (on the CPU result) to keep every vertex
/// at least 5e-4 px from a cell edge, 0.01 px inside the image and clearly front-facing, 50x the
/// devices' rounding differences here (about 1e-5 px).
fn check_layer(t: &Target, tol: (f64, f64)) {
    eprintln!("image formation layer (fast path) on {:?} {:?}", t.device, t.dtype);
    let s = layer_scene(606);
    let want = run_layer(&Target::cpu_f32(), &s);
    let k = s.k;
    let [cx, cy] = k.centre().map(f64::from);
    for (i, (p, nn)) in want.camera.chunks(3).zip(want.normals.chunks(3)).enumerate() {
        let d = -p[2];
        let xi = cx + k.focal as f64 * p[0] / d - 0.5;
        let yi = cy - k.focal as f64 * p[1] / d - 0.5;
        for (q, m) in [(xi, k.width as f64), (yi, k.height as f64)] {
            let edge = (q - q.floor()).min(q.ceil() - q);
            assert!(edge >= 5e-4, "layer scene: vertex {i} lies {edge:.1e} px from a cell edge; choose another seed");
            assert!(q >= 0.01 && q <= m - 1.01, "layer scene: vertex {i} at {q} px is near the image border");
        }
        let facing = -(nn[0] * p[0] + nn[1] * p[1] + nn[2] * p[2]) / (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
        assert!(facing > 1e-3, "layer scene: vertex {i} is nearly edge-on ({facing:.1e})");
    }
    assert!(want.visible.iter().all(|&m| m == 1.0), "layer scene: every vertex must be visible");
    let got = run_layer(t, &s);
    assert_eq!(got.visible, want.visible, "visibility differs");
    check("layer camera vertices", &got.camera, &want.camera, 1.0, tol.0);
    check("layer normals", &got.normals, &want.normals, 1.0, tol.0);
    check("layer shaded", &got.shaded, &want.shaded, 1.0, tol.0);
    check("layer sampled", &got.sampled, &want.sampled, 1.0, tol.0);
    check("layer photometric", &got.photo, &want.photo, 1e-12, tol.0);
    for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        check(&format!("layer d {name}"), g, w, 1e-12, tol.1);
    }
}

/// Non-finite input on the target behaves as on the CPU: a NaN pose gives a NaN loss for its
/// image only (never a silent 0), an infinite light a non-finite loss, a mesh behind the camera
/// nothing visible and a finite loss of 0.
fn check_layer_non_finite(t: &Target) {
    eprintln!("image formation layer, non-finite input, on {:?} {:?}", t.device, t.dtype);
    let s = layer_scene(606);
    let (b, n) = (s.b, s.n);
    let layer = ImageFormation::new(&s.model, s.k, Backend::Fast, &t.device).unwrap();
    let photo = |rot: &[f64], tr: &[f64], gamma: &[f64]| {
        let out = layer
            .render(&RenderInput {
                vertices: &t.put(&s.v, &[b, n, 3]),
                reflectance: &t.put(&s.r, &[b, n, 3]),
                rotation: &t.put(rot, &[b, 3]),
                translation: &t.put(tr, &[b, 3]),
                gamma: &t.put(gamma, &[b, 27]),
                image: &t.put(&s.image, &[b, s.k.height, s.k.width, 3]),
            })
            .unwrap();
        let visible: Vec<f64> = host(&out.visible.sum(1).unwrap());
        (host(&layer.photometric(&out).unwrap()), visible)
    };
    let mut rot = s.rot.clone();
    rot[0] = f64::NAN;
    let (p, _) = photo(&rot, &s.tr, &s.gamma);
    assert!(p[0].is_nan() && p[1].is_finite(), "NaN pose of image 0: photometric {p:?}");
    let mut gamma = s.gamma.clone();
    gamma[27 + 4] = f64::INFINITY;
    let (p, _) = photo(&s.rot, &s.tr, &gamma);
    assert!(p[0].is_finite() && !p[1].is_finite(), "infinite light of image 1: photometric {p:?}");
    let mut tr = s.tr.clone();
    tr[2] = 900.0;
    let (p, vis) = photo(&s.rot, &tr, &s.gamma);
    assert_eq!(vis[0], 0.0, "a mesh behind the camera is invisible");
    assert_eq!(p[0], 0.0, "nothing visible: photometric 0");
    assert!(p[1].is_finite() && p[1] > 0.0);
}

/// A small network and loss configuration (the demo model, 48 px crops, 8 correctives).
fn net_config() -> Config {
    let mut cfg = Config {
        encoder: EncoderConfig {
            input_size: 48,
            conv: vec![[8, 5, 2, 2, 1], [16, 3, 1, 1, 1], [16, 3, 1, 1, 0], [16, 3, 1, 1, 0], [16, 3, 1, 1, 1]],
            fc: vec![32, 32],
        },
        ..Config::default()
    };
    cfg.camera.focal = 200.0;
    cfg.correctives.count = 8;
    cfg.correctives.init_std = [2.0, 0.05];
    cfg.train.seed = 7;
    cfg
}

/// FaceNet predict, every loss term (Objective::compute) and the backward pass on the target
/// (f32) against the CPU, for pretraining (base level) and finetuning (with correctives).
///
/// `perturb` scales every weight copied to the target by (1 + perturb * N(0, 1)): the harness
/// runs CPU against CPU that way to check that the tolerances absorb rounding-sized differences.
/// The output layer gets small random weights (the trainer starts it at zero) so that pose,
/// shape, light and correctives are all non-trivial and every layer receives a gradient.
fn check_facenet(t: &Target, correctives: bool, perturb: f64, tol: (f64, f64)) {
    eprintln!("FaceNet + Objective (correctives: {correctives}) on {:?}, perturbation {perturb:e}", t.device);
    assert_eq!(t.dtype, DType::F32, "the network runs in f32");
    let cfg = net_config();
    let model = fml::face_model::demo::demo_model();
    let cpu = Device::Cpu;
    let vm_cpu = candle_nn::VarMap::new();
    let net_cpu = FaceNet::new(&model, &cfg, correctives, Backend::Fast, &vm_cpu, &cpu).unwrap();
    let mut rng = Rng::new(808);
    let mut names: Vec<String> = vm_cpu.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    {
        let data = vm_cpu.data().lock().unwrap();
        for name in ["encoder.head.weight", "encoder.head.bias"] {
            let v = &data[name];
            let std = if name.ends_with("weight") { 0.02 } else { 0.05 };
            let w: Vec<f32> = (0..v.elem_count()).map(|_| (rng.normal() * std) as f32).collect();
            v.set(&Tensor::from_vec(w, v.shape(), &cpu).unwrap()).unwrap();
        }
    }
    let vm_dev = candle_nn::VarMap::new();
    {
        let src = vm_cpu.data().lock().unwrap();
        let mut dst = vm_dev.data().lock().unwrap();
        for name in &names {
            let mut host_v: Vec<f32> = src[name].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            if perturb > 0.0 {
                for x in &mut host_v {
                    *x *= (1.0 + perturb * rng.normal()) as f32;
                }
            }
            let tensor = Tensor::from_vec(host_v, src[name].shape(), &t.device).unwrap();
            dst.insert(name.clone(), Var::from_tensor(&tensor).unwrap());
        }
    }
    let net_dev = FaceNet::new(&model, &cfg, correctives, Backend::Fast, &vm_dev, &t.device).unwrap();
    assert_eq!(vm_dev.data().lock().unwrap().len(), names.len(), "the target network made new weights");

    // A batch: smooth random images, landmarks near the crop's middle, a few missing.
    let (b, s) = (3, cfg.encoder.input_size);
    let mut images = Vec::with_capacity(b * 3 * s * s);
    for _ in 0..b * 3 {
        let (fx, fy, ph) = (rng.range(0.05, 0.4), rng.range(0.05, 0.4), rng.range(0.0, 6.0));
        for y in 0..s {
            for x in 0..s {
                images.push((0.5 + 0.3 * (fx * x as f64 + ph).sin() * (fy * y as f64).cos()) as f32);
            }
        }
    }
    let landmarks: Vec<f32> = (0..b * 68 * 2).map(|_| rng.range(0.25, 0.75) as f32 * s as f32).collect();
    let confidence: Vec<f32> = (0..b * 68).map(|i| if i % 17 == 5 { 0.0 } else { 1.0 }).collect();
    let batch =
        |d: &Device| TrainBatch::from_host(images.clone(), landmarks.clone(), confidence.clone(), b, s, d).unwrap();
    let (tb_cpu, tb_dev) = (batch(&cpu), batch(&t.device));
    let mut obj_cpu = Objective::new(&net_cpu, &cfg.loss, cfg.train.seed).unwrap();
    let mut obj_dev = Objective::new(&net_dev, &cfg.loss, cfg.train.seed).unwrap();

    let pred_cpu = net_cpu.predict(&tb_cpu.images).unwrap();
    let pred_dev = net_dev.predict(&tb_dev.images).unwrap();
    let p = |pr: &fml::network::Prediction| {
        [&pr.params.rotation, &pr.params.translation, &pr.params.gamma, &pr.params.z_shape].map(host)
    };
    for ((name, g), w) in ["rotation", "translation", "gamma", "z_shape"].iter().zip(p(&pred_dev)).zip(p(&pred_cpu)) {
        check(&format!("net {name}"), &g, &w, 1e-6, tol.0);
    }
    let rot = host(&pred_cpu.params.rotation);
    assert!(rot.iter().any(|x| x.abs() > 0.01), "the random head should turn the face: {rot:?}");
    check(
        "net base geometry",
        &host(&pred_dev.levels.base_geometry),
        &host(&pred_cpu.levels.base_geometry),
        1.0,
        tol.0,
    );
    if correctives {
        let (g, w) = (pred_dev.levels.final_geometry().unwrap(), pred_cpu.levels.final_geometry().unwrap());
        check("net final geometry", &host(&g), &host(&w), 1.0, tol.0);
    }

    let terms_cpu = obj_cpu.compute(&net_cpu, &pred_cpu, &tb_cpu).unwrap();
    let terms_dev = obj_dev.compute(&net_dev, &pred_dev, &tb_dev).unwrap();
    // The sliding contour points re-pick the candidate closest to a ray; two candidates closer
    // than rounding to the same distance may be picked differently, which is no kernel's fault.
    // Then the comparison continues with fixed contour points.
    let k = net_cpu.intrinsics();
    let picks = |o: &Objective, terms: &fml::loss::LossTerms, tb: &TrainBatch| {
        host(&o.sparse.vertex_indices(&terms.base.camera_vertices, &tb.landmarks, &k).unwrap())
    };
    let (pc, pd) = (picks(&obj_cpu, &terms_cpu, &tb_cpu), picks(&obj_dev, &terms_dev, &tb_dev));
    let (terms_cpu, terms_dev) = if pc != pd {
        let differ = pc.iter().zip(&pd).filter(|(a, b)| a != b).count();
        eprintln!("  note: {differ} sliding contour picks differ (near-ties); comparing with fixed contour points");
        obj_cpu.sparse.sliding = false;
        obj_dev.sparse.sliding = false;
        (obj_cpu.compute(&net_cpu, &pred_cpu, &tb_cpu).unwrap(), obj_dev.compute(&net_dev, &pred_dev, &tb_dev).unwrap())
    } else {
        (terms_cpu, terms_dev)
    };
    let visible = |t: &fml::loss::LossTerms| host(&t.base.visible.sum_all().unwrap())[0];
    let (vc, vd) = (visible(&terms_cpu), visible(&terms_dev));
    assert!(vc > 1000.0 * b as f64, "the face should be largely visible, {vc} vertices are");
    assert!((vc - vd).abs() <= 2.0, "visible vertices: {vd} on the target, {vc} on the CPU");
    let values_cpu = terms_cpu.values().unwrap();
    let values_dev = terms_dev.values().unwrap();
    assert_eq!(values_cpu.len(), if correctives { 11 } else { 6 }, "terms {values_cpu:?}");
    for ((name, g), (_, w)) in values_dev.iter().zip(&values_cpu) {
        check(&format!("loss {name}"), &[*g], &[*w], 1e-6, tol.0);
    }
    let grads_cpu = terms_cpu.total.backward().unwrap();
    let grads_dev = terms_dev.total.backward().unwrap();
    let (src, dst) = (vm_cpu.data().lock().unwrap(), vm_dev.data().lock().unwrap());
    for name in &names {
        let w = grad_of(&grads_cpu, &src[name], name);
        let g = grad_of(&grads_dev, &dst[name], name);
        if w.iter().all(|&x| x == 0.0) {
            // Biases of layers whose outputs feed a zero-initialised row block, if any: equal zeros.
            assert!(g.iter().all(|&x| x == 0.0), "{name}: zero on the CPU, not on the target");
            continue;
        }
        check_l2(&format!("grad {name}"), &g, &w, tol.1);
    }
}

// ------------------------------------------------------------------------------ tolerances

/// (values, gradients) of the single ops and the layer: max error relative to the largest value.
/// Measured by the harness (CPU float64 against float32, 2026-11): at most 1e-5 for values (the
/// normals, from f32 input rounding in the cross products) and 1e-5 for gradients. The GPU differs
/// from the CPU by f32 arithmetic only (FMA contraction, other summation orders; the kernels use
/// IEEE sqrt and division, no --use_fast_math): of the same size or smaller.
const OP_TOL: (f64, f64) = (1e-4, 1e-3);
/// (values, gradients) of the network: max relative error of values, relative l2 of gradients.
/// Measured by the harness with weights perturbed by 1e-6: at most 5e-6 and 2e-5. Looser than
/// the ops because visibility, ReLUs and max-pooling are steps that rounding may flip for a few
/// entries; a wrong index or a missing block in a kernel moves these by far more.
const NET_TOL: (f64, f64) = (1e-3, 1e-2);
/// A convolution through the BLAS (relative l2): sums of up to a few hundred f32 products in a
/// different order on cuBLAS, about 1e-6.
const CONV_TOL: f64 = 1e-4;

// ------------------------------------------------------------------------------ harness (CPU)

/// The float64 CPU path as the stand-in target.
fn cpu_f64() -> Target {
    Target { device: Device::Cpu, dtype: DType::F64 }
}

#[test]
fn harness_ops_hold_against_float64() {
    check_normals(&cpu_f64(), OP_TOL);
    check_shade(&cpu_f64(), OP_TOL);
    check_sample(&cpu_f64(), OP_TOL);
    check_photo(&cpu_f64(), OP_TOL);
    check_offsets(&cpu_f64(), OP_TOL);
    check_im2col(&Device::Cpu, CONV_TOL);
}

#[test]
fn harness_layer_holds_against_float64() {
    check_layer(&cpu_f64(), OP_TOL);
    check_layer_non_finite(&cpu_f64());
}

#[test]
fn harness_facenet_holds_under_perturbed_weights() {
    // 1e-6 relative is about 8 f32 ulps in every weight: more than cuBLAS's reordered sums do.
    check_facenet(&Target::cpu_f32(), false, 1e-6, NET_TOL);
    check_facenet(&Target::cpu_f32(), true, 1e-6, NET_TOL);
}

#[test]
fn harness_detects_a_wrong_result() {
    // The comparisons are not vacuous: a 1% error in one entry, a NaN where the CPU has a number
    // or an all-zero reference fails them.
    let want = [1.0, -2.0, 3.0];
    let got = [1.0, -2.0, 3.03];
    assert!(compare("x", &got, &want, 1e-12, 1e-3).unwrap_err().contains("entry 2"));
    assert!(compare_l2("x", &got, &want, 1e-3).is_err());
    assert!(compare("x", &[1.0, f64::NAN, 3.0], &want, 1e-12, 1.0).unwrap_err().contains("NaN"));
    assert!(compare_l2("x", &[0.0; 3], &[0.0; 3], 1.0).is_err());
    assert!((compare("x", &got, &want, 1e-12, 0.011).unwrap() - 0.01).abs() < 1e-9);
    assert_eq!(compare("x", &[f64::NAN, 2.0], &[f64::NAN, 2.0], 1e-12, 0.0), Ok(0.0));
}

// ------------------------------------------------------------------------------ CUDA

/// The GPU as a target, or None (with a message) when there is none; a failure instead when
/// FML_REQUIRE_CUDA is set.
#[cfg(feature = "cuda")]
fn gpu() -> Option<Target> {
    match Device::new_cuda(0) {
        Ok(device) => {
            // Full f32 matmuls: TF32 would be compared, not the kernels (the flag is global).
            fml::kernel::set_tf32(&device, false);
            Some(Target { device, dtype: DType::F32 })
        }
        Err(e) if std::env::var_os("FML_REQUIRE_CUDA").is_some() => panic!("FML_REQUIRE_CUDA is set but: {e}"),
        Err(e) => {
            eprintln!("no CUDA device ({e}): skipped");
            None
        }
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_normals_match_cpu() {
    if let Some(t) = gpu() {
        check_normals(&t, OP_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_shade_matches_cpu() {
    if let Some(t) = gpu() {
        check_shade(&t, OP_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_sample_matches_cpu() {
    if let Some(t) = gpu() {
        check_sample(&t, OP_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_photometric_matches_cpu() {
    if let Some(t) = gpu() {
        check_photo(&t, OP_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_inputs_at_an_offset_match_cpu() {
    if let Some(t) = gpu() {
        check_offsets(&t, OP_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_im2col_matches_cpu() {
    if let Some(t) = gpu() {
        check_im2col(&t.device, CONV_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_layer_matches_cpu() {
    if let Some(t) = gpu() {
        check_layer(&t, OP_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_layer_non_finite_input_matches_cpu() {
    if let Some(t) = gpu() {
        check_layer_non_finite(&t);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_facenet_pretrain_matches_cpu() {
    if let Some(t) = gpu() {
        check_facenet(&t, false, 0.0, NET_TOL);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_facenet_finetune_matches_cpu() {
    if let Some(t) = gpu() {
        check_facenet(&t, true, 0.0, NET_TOL);
    }
}
