//! Tests of the image formation layer: fast path vs reference (outputs and gradients), float64
//! finite differences, scenes with known answers, and bad input.

use super::camera::Intrinsics;
use super::layer::{Backend, ImageFormation, RenderInput};
use super::ops;
use crate::face_model::FaceModel;
use crate::rng::Rng;
use candle_core::{D, DType, Device, Tensor, Var};
use std::collections::BTreeMap;

/// A wavy square grid patch (`k` x `k` vertices, `size` mm) in the z = 0 plane facing +z.
fn patch(k: usize, size: f32, amp: f32) -> FaceModel {
    let mut mean = Vec::new();
    for j in 0..k {
        for i in 0..k {
            let (x, y) = (size * (i as f32 / (k - 1) as f32 - 0.5), size * (j as f32 / (k - 1) as f32 - 0.5));
            let z = amp * ((x / size * 5.0).sin() * (y / size * 4.0).cos());
            mean.extend_from_slice(&[x, y, z]);
        }
    }
    let mut triangles = Vec::new();
    for j in 0..k - 1 {
        for i in 0..k - 1 {
            let a = (j * k + i) as u32;
            triangles.push([a, a + 1, a + k as u32 + 1]);
            triangles.push([a, a + k as u32 + 1, a + k as u32]);
        }
    }
    let n = k * k;
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

struct Scene {
    model: FaceModel,
    k: Intrinsics,
    vertices: Tensor,
    reflectance: Tensor,
    rotation: Tensor,
    translation: Tensor,
    gamma: Tensor,
    image: Tensor,
}

/// A random batch of `b` perturbed patches in front of the camera over a smooth random image.
fn scene(b: usize, k_grid: usize, seed: u64, dtype: DType) -> Scene {
    let mut rng = Rng::new(seed);
    let model = patch(k_grid, 100.0, 4.0);
    let n = model.num_vertices();
    let k = Intrinsics { focal: 300.0, width: 48, height: 40, near: 1.0 };
    let dev = Device::Cpu;
    let mut v = Vec::new();
    let mut r = Vec::new();
    for _ in 0..b {
        for i in 0..n {
            for c in 0..3 {
                v.push(model.mean_shape[i * 3 + c] as f64 + rng.normal() * 0.3);
                r.push(rng.range(0.2, 0.9));
            }
        }
    }
    let mut rot = Vec::new();
    let mut tr = Vec::new();
    let mut gamma = Vec::new();
    for _ in 0..b {
        rot.extend([rng.range(-0.3, 0.3), rng.range(-0.4, 0.4), rng.range(-0.2, 0.2)]);
        tr.extend([rng.range(-5.0, 5.0), rng.range(-5.0, 5.0), rng.range(-900.0, -800.0)]);
        for c in 0..3 {
            for bnd in 0..9 {
                gamma.push(if bnd == 0 { 3.0 + rng.range(-0.3, 0.3) } else { rng.range(-0.4, 0.4) } + 0.01 * c as f64);
            }
        }
    }
    // Smooth image: a few random sinusoids per channel.
    let (w, h) = (k.width, k.height);
    let mut img = Vec::with_capacity(b * h * w * 3);
    let freqs: Vec<[f64; 4]> = (0..b * 3)
        .map(|_| [rng.range(0.05, 0.3), rng.range(0.05, 0.3), rng.range(0.0, 6.0), rng.range(0.2, 0.4)])
        .collect();
    for bi in 0..b {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let f = freqs[bi * 3 + c];
                    img.push(0.5 + f[3] * (f[0] * x as f64 + f[2]).sin() * (f[1] * y as f64).cos());
                }
            }
        }
    }
    let t = |d: Vec<f64>, s: &[usize]| Tensor::from_vec(d, s, &dev).unwrap().to_dtype(dtype).unwrap();
    Scene {
        vertices: t(v, &[b, n, 3]),
        reflectance: t(r, &[b, n, 3]),
        rotation: t(rot, &[b, 3]),
        translation: t(tr, &[b, 3]),
        gamma: t(gamma, &[b, 27]),
        image: t(img, &[b, h, w, 3]),
        model,
        k,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Everything that the layer differentiates, as Vars.
struct Inputs {
    v: Var,
    r: Var,
    rot: Var,
    t: Var,
    g: Var,
}

fn vars(s: &Scene) -> Inputs {
    Inputs {
        v: Var::from_tensor(&s.vertices).unwrap(),
        r: Var::from_tensor(&s.reflectance).unwrap(),
        rot: Var::from_tensor(&s.rotation).unwrap(),
        t: Var::from_tensor(&s.translation).unwrap(),
        g: Var::from_tensor(&s.gamma).unwrap(),
    }
}

/// A scalar loss exercising every output: photometric + weighted sums of shaded and sampled
/// colours (so each op's gradient is tested, not only through the l2,1 term).
fn loss(layer: &ImageFormation, s: &Scene, x: &Inputs, w: &Tensor) -> (Tensor, super::Rendered) {
    let out = layer
        .render(&RenderInput {
            vertices: x.v.as_tensor(),
            reflectance: x.r.as_tensor(),
            rotation: x.rot.as_tensor(),
            translation: x.t.as_tensor(),
            gamma: x.g.as_tensor(),
            image: &s.image,
        })
        .unwrap();
    let photo = layer.photometric(&out).unwrap().sum_all().unwrap();
    let mask = out.visible.unsqueeze(2).unwrap();
    let extra = ((out.shaded.broadcast_mul(&mask).unwrap() * w).unwrap().sum_all().unwrap()
        + (out.sampled.broadcast_mul(&mask).unwrap() * w.affine(0.5, 0.1).unwrap()).unwrap().sum_all().unwrap())
    .unwrap();
    let extra = (extra * 1e-3).unwrap();
    ((photo + extra).unwrap(), out)
}

#[test]
fn fast_matches_reference_outputs_and_gradients() {
    let s = scene(3, 12, 11, DType::F32);
    let dev = Device::Cpu;
    let reference = ImageFormation::new(&s.model, s.k, Backend::Reference, &dev).unwrap();
    let fast = ImageFormation::new(&s.model, s.k, Backend::Fast, &dev).unwrap();
    let mut rng = Rng::new(5);
    let wv: Vec<f32> = (0..s.vertices.elem_count()).map(|_| rng.normal() as f32).collect();
    let w = Tensor::from_vec(wv, s.vertices.shape(), &dev).unwrap();
    let (xr, xf) = (vars(&s), vars(&s));
    let (lr, or) = loss(&reference, &s, &xr, &w);
    let (lf, of) = loss(&fast, &s, &xf, &w);
    let visible = of.visible.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(visible > 100.0, "scene should have many visible vertices, got {visible}");
    assert_eq!(max_abs_diff(&or.visible, &of.visible), 0.0);
    assert!(max_abs_diff(&or.normals, &of.normals) < 1e-5);
    assert!(max_abs_diff(&or.shaded, &of.shaded) < 1e-5);
    let m = of.visible.unsqueeze(2).unwrap();
    assert!(max_abs_diff(&or.sampled.broadcast_mul(&m).unwrap(), &of.sampled.broadcast_mul(&m).unwrap()) < 1e-5);
    let (a, b) = (lr.to_scalar::<f32>().unwrap(), lf.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "loss {a} vs {b}");
    let (gr, gf) = (lr.backward().unwrap(), lf.backward().unwrap());
    for (name, vr, vf) in [
        ("vertices", &xr.v, &xf.v),
        ("reflectance", &xr.r, &xf.r),
        ("rotation", &xr.rot, &xf.rot),
        ("translation", &xr.t, &xf.t),
        ("illumination", &xr.g, &xf.g),
    ] {
        let (a, b) = (gr.get(vr.as_tensor()).unwrap(), gf.get(vf.as_tensor()).unwrap());
        let scale = max_abs(a).max(1e-12);
        let err = max_abs_diff(a, b) / scale;
        assert!(scale > 1e-9, "{name}: reference gradient is zero");
        assert!(err < 2e-3, "{name}: relative gradient error {err} (scale {scale})");
    }
}

/// Directional finite differences of the fast path in float64 against its analytic gradient.
#[test]
fn fast_path_gradients_match_float64_finite_differences() {
    let s = scene(2, 6, 23, DType::F64);
    let dev = Device::Cpu;
    let layer = ImageFormation::new(&s.model, s.k, Backend::Fast, &dev).unwrap();
    let mut rng = Rng::new(3);
    let w = Tensor::from_vec(
        (0..s.vertices.elem_count()).map(|_| rng.normal()).collect::<Vec<f64>>(),
        s.vertices.shape(),
        &dev,
    )
    .unwrap();
    let x = vars(&s);
    let (l0, out0) = loss(&layer, &s, &x, &w);
    let grads = l0.backward().unwrap();
    let eval = |x: &Inputs| loss(&layer, &s, x, &w);
    let h = 1e-6;
    for (name, var) in
        [("vertices", &x.v), ("reflectance", &x.r), ("rotation", &x.rot), ("translation", &x.t), ("illumination", &x.g)]
    {
        let g = grads.get(var.as_tensor()).unwrap();
        let mut checked = 0;
        for trial in 0..3 {
            let dir =
                Tensor::from_vec((0..var.elem_count()).map(|_| rng.normal()).collect::<Vec<f64>>(), var.shape(), &dev)
                    .unwrap();
            let analytic = (g * &dir).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            let base = var.as_tensor().copy().unwrap();
            let probe = |sign: f64| {
                var.set(&(&base + (&dir * (sign * h)).unwrap()).unwrap()).unwrap();
                let (l, o) = eval(&x);
                (l.to_scalar::<f64>().unwrap(), o)
            };
            let (lp, op) = probe(1.0);
            let (lm, om) = probe(-1.0);
            var.set(&base).unwrap();
            // Away from visibility edges: the perturbation must not change the visible set.
            if max_abs_diff(&op.visible, &out0.visible) > 0.0 || max_abs_diff(&om.visible, &out0.visible) > 0.0 {
                continue;
            }
            let fd = (lp - lm) / (2.0 * h);
            let tol = 1e-5 * analytic.abs().max(fd.abs()).max(1e-3);
            assert!((fd - analytic).abs() < tol, "{name} trial {trial}: fd {fd} vs analytic {analytic}");
            checked += 1;
        }
        assert!(checked > 0, "{name}: every probe crossed a visibility edge");
    }
}

#[test]
fn frontal_plane_under_neutral_light_has_zero_photometric_error() {
    let dev = Device::Cpu;
    let model = patch(9, 80.0, 0.0);
    let n = model.num_vertices();
    let k = Intrinsics { focal: 400.0, width: 32, height: 32, near: 1.0 };
    let colour = [0.6f32, 0.3, 0.2];
    let refl: Vec<f32> = (0..n).flat_map(|_| colour).collect();
    let img: Vec<f32> = (0..32 * 32).flat_map(|_| colour).collect();
    let neutral = crate::render::sh::neutral().to_vec();
    let v = Tensor::from_vec(model.mean_shape.clone(), (1, n, 3), &dev).unwrap();
    let r = Tensor::from_vec(refl, (1, n, 3), &dev).unwrap();
    let image = Tensor::from_vec(img, (1, 32, 32, 3), &dev).unwrap();
    let g = Tensor::from_vec(neutral, (1, 27), &dev).unwrap();
    let t = Tensor::new(&[[0.0f32, 0.0, -1500.0]], &dev).unwrap();
    for backend in [Backend::Reference, Backend::Fast] {
        let layer = ImageFormation::new(&model, k, backend, &dev).unwrap();
        let frontal = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
        let input = RenderInput {
            vertices: &v,
            reflectance: &r,
            rotation: &frontal,
            translation: &t,
            gamma: &g,
            image: &image,
        };
        let out = layer.render(&input).unwrap();
        // A 80 mm plane at 1500 mm with f = 400 spans ~21 px: every vertex is visible.
        assert_eq!(out.visible.sum_all().unwrap().to_scalar::<f32>().unwrap() as usize, n);
        // Normals face the camera; shading equals reflectance; the loss is zero.
        let nz = out
            .normals
            .narrow(D::Minus1, 2, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(nz > 0.9999);
        assert!(max_abs_diff(&out.shaded, &r) < 1e-5);
        let photo = layer.photometric(&out).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(photo < 1e-5, "{backend:?}: photometric {photo}");
        // Turned away (yaw = pi): everything is back-face culled; documented loss 0.
        let away = Tensor::new(&[[0.0f32, std::f32::consts::PI, 0.0]], &dev).unwrap();
        let input = RenderInput { rotation: &away, ..input };
        let out = layer.render(&input).unwrap();
        assert_eq!(out.visible.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(layer.photometric(&out).unwrap().to_vec1::<f32>().unwrap()[0], 0.0);
    }
}

#[test]
fn bad_input_is_an_error_or_documented_behaviour() {
    let dev = Device::Cpu;
    let s = scene(1, 5, 2, DType::F32);
    let layer = ImageFormation::new(&s.model, s.k, Backend::Fast, &dev).unwrap();
    // NaN parameters: a NaN loss (reported by the trainer as an error), never a silent 0.
    let nan = Tensor::new(&[[f32::NAN, 0.0, 0.0]], &dev).unwrap();
    let input = RenderInput {
        vertices: &s.vertices,
        reflectance: &s.reflectance,
        rotation: &nan,
        translation: &s.translation,
        gamma: &s.gamma,
        image: &s.image,
    };
    for backend in [Backend::Reference, Backend::Fast] {
        let l = ImageFormation::new(&s.model, s.k, backend, &dev).unwrap();
        let photo = l.photometric(&l.render(&input).unwrap()).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(photo.is_nan(), "{backend:?}: NaN pose gave photometric {photo}");
    }
    let mut g = s.gamma.to_vec2::<f32>().unwrap();
    g[0][4] = f32::INFINITY;
    let inf_gamma = Tensor::new(g, &dev).unwrap();
    let input_g = RenderInput { rotation: &s.rotation, gamma: &inf_gamma, ..input };
    assert!(!layer.photometric(&layer.render(&input_g).unwrap()).unwrap().to_vec1::<f32>().unwrap()[0].is_finite());
    // A non-finite parameter that culls every vertex (a translation of +Inf puts the face
    // behind the near plane): NaN on both backends, not a loss of 0 on the fast path.
    let inf_t = Tensor::new(&[[0.0f32, 0.0, f32::INFINITY]], &dev).unwrap();
    let input_t = RenderInput { rotation: &s.rotation, translation: &inf_t, ..input };
    for backend in [Backend::Reference, Backend::Fast] {
        let l = ImageFormation::new(&s.model, s.k, backend, &dev).unwrap();
        let out = l.render(&input_t).unwrap();
        assert_eq!(out.visible.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{backend:?}");
        let photo = l.photometric(&out).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(photo.is_nan(), "{backend:?}: +Inf translation gave photometric {photo}");
    }
    // Everything behind the camera: invisible, finite, no panic.
    let behind = Tensor::new(&[[0.0f32, 0.0, 900.0]], &dev).unwrap();
    let input = RenderInput { translation: &behind, rotation: &s.rotation, ..input };
    let out = layer.render(&input).unwrap();
    assert_eq!(out.visible.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert!(layer.photometric(&out).unwrap().to_vec1::<f32>().unwrap()[0].is_finite());
    // Degenerate triangles (all vertices collapsed): finite normals and gradients.
    let zeros = s.vertices.zeros_like().unwrap();
    let var = Var::from_tensor(&zeros).unwrap();
    let n = ops::normals::vertex_normals(
        var.as_tensor(),
        &ops::normals::NormalsTopology::new(s.model.num_vertices(), &s.model.triangles, &dev).unwrap(),
    )
    .unwrap();
    assert!(n.sum_all().unwrap().to_scalar::<f32>().unwrap().is_finite());
    let g = n.sum_all().unwrap().backward().unwrap();
    assert!(g.get(var.as_tensor()).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().is_finite());
}

/// The backward passes are public functions: a tensor of the wrong shape (or an empty batch) is
/// an error naming the op and the tensor, never an out-of-bounds read (a panic here, an illegal
/// address on a GPU).
#[test]
fn backward_passes_refuse_mismatched_shapes_and_empty_batches() {
    let dev = Device::Cpu;
    let (b, n) = (2usize, 9usize);
    let t = |dims: &[usize]| Tensor::ones(dims, DType::F32, &dev).unwrap();
    let err = |r: candle_core::Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let tris = [[0u32, 1, 3], [1, 4, 3]];
    let topo = ops::normals::NormalsTopology::new(n, &tris, &dev).unwrap();
    let k = Intrinsics { focal: 100.0, width: 8, height: 6, near: 1.0 };

    // Each call is valid but for the one tensor named in the expected message.
    let cases: Vec<(String, &str)> = vec![
        (err(ops::normals::normals_backward(&t(&[b, n, 3]), &t(&[b, n - 1, 3]), &topo)), "grad has shape"),
        (err(ops::normals::normals_backward(&t(&[b, n + 1, 3]), &t(&[b, n + 1, 3]), &topo)), "the topology has 9"),
        (
            err(ops::shade::shade_backward(&t(&[b, n, 3]), &t(&[b, n, 3]), &t(&[b, 9]), &t(&[b, n, 3])).map(|r| r.0)),
            "gamma has shape [2, 9], expected [2, 27]",
        ),
        (
            err(ops::shade::shade_backward(&t(&[b, n, 3]), &t(&[1, n, 3]), &t(&[b, 27]), &t(&[b, n, 3])).map(|r| r.0)),
            "reflectance has shape",
        ),
        (
            err(ops::photo::photo_backward(&t(&[b, n, 3]), &t(&[b, n, 3]), &t(&[b, n]), &t(&[b + 1]), 1e-8)),
            "grad has shape [3], expected [2]",
        ),
        (
            err(ops::photo::photo_backward(&t(&[b, n, 3]), &t(&[b, n, 3]), &t(&[b, n, 1]), &t(&[b]), 1e-8)),
            "mask has shape",
        ),
        (
            err(ops::sample::sample_backward(&t(&[b, n, 3]), &t(&[b, 8, 6, 3]), &k, &t(&[b, n, 3]))),
            "image has shape [2, 8, 6, 3], expected [2, 6, 8, 3]",
        ),
        (err(ops::sample::sample_backward(&t(&[b, n, 3]), &t(&[b, 6, 8, 3]), &k, &t(&[b, n]))), "grad has shape"),
        (err(ops::normals::vertex_normals(&t(&[0, n, 3]), &topo)), "empty batch"),
        (err(ops::photo::photometric_l21(&t(&[b, 0, 3]), &t(&[b, 0, 3]), &t(&[b, 0]))), "without vertices"),
    ];
    for (i, (msg, want)) in cases.iter().enumerate() {
        assert!(msg.contains(want), "case {i}: expected an error containing {want:?}, got {msg:?}");
    }
    // The same calls with every shape right succeed (so the checks above are not blanket refusals).
    ops::normals::normals_backward(&t(&[b, n, 3]), &t(&[b, n, 3]), &topo).unwrap();
    ops::shade::shade_backward(&t(&[b, n, 3]), &t(&[b, n, 3]), &t(&[b, 27]), &t(&[b, n, 3])).unwrap();
    ops::photo::photo_backward(&t(&[b, n, 3]), &t(&[b, n, 3]), &t(&[b, n]), &t(&[b]), 1e-8).unwrap();
    ops::sample::sample_backward(&t(&[b, n, 3]), &t(&[b, 6, 8, 3]), &k, &t(&[b, n, 3])).unwrap();
}
