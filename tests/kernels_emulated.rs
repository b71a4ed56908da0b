//! The CUDA kernels of `kernels/*.cu`, run on the CPU and compared with their CPU twins, on
//! machines without a GPU (CI included).
//!
//! `tests/emu/harness.cpp` compiles the kernel source unchanged as host C++ (`tests/emu/cuda_emu.h`
//! supplies `threadIdx`, `__shared__`, `__syncthreads` ...: one OS thread per CUDA thread, blocks in
//! turn). Every op is launched as the CUDA path launches it (src/render/ops/cuda.rs,
//! src/encoder/cuda.rs): the same kernels in the same order, the grids of `fml::kernel::launch`,
//! the bytes of the Rust `#[repr(C)]` parameter structs (the harness checks each against the
//! kernel's `sizeof`), intermediate buffers passed from one launch to the next. This checks the
//! kernels' indexing, their block reductions and their formulas, and the Rust/C agreement on the
//! parameter layouts. It does not replace `tests/cuda.rs` on a GPU: nvcc's code generation (FMA
//! contraction, fast-math intrinsics), warp scheduling and the cudarc plumbing are not exercised.
//!
//! Skips (passes with a message) where no C++20 compiler is found (`$CXX`, `c++`, `g++`,
//! `clang++`); set `FML_REQUIRE_EMU` to make that a failure.

use fml::encoder::im2col::{ConvParams, fold_cpu, unfold_cpu};
use fml::kernel::launch::{self, Launch};
use fml::render::camera::Intrinsics;
use fml::render::ops::normals::{NormalsParams, NormalsTopology, normals_bwd_cpu, normals_fwd_cpu};
use fml::render::ops::photo::{PHOTO_EPS, PhotoParams, photo_bwd_cpu, photo_fwd_cpu};
use fml::render::ops::sample::{SampleParams, sample_bwd_cpu, sample_fwd_cpu};
use fml::render::ops::shade::{ShadeParams, shade_bwd_cpu, shade_fwd_cpu};
use fml::rng::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

// ------------------------------------------------------------------------------ harness

/// The compiled harness, or None (with the reason printed) when no compiler is available.
fn harness() -> Option<&'static Path> {
    static HARNESS: OnceLock<Option<PathBuf>> = OnceLock::new();
    HARNESS
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emu/harness.cpp");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fml-kernel-harness");
            let candidates: Vec<String> =
                std::env::var("CXX").into_iter().chain(["c++", "g++", "clang++"].map(String::from)).collect();
            let mut tried = Vec::new();
            for cxx in candidates {
                // -ffp-contract=off: no fused multiply-adds, so that the emulation rounds as the CPU twins.
                let res = Command::new(&cxx)
                    .args(["-std=c++20", "-O1", "-pthread", "-ffp-contract=off", "-o"])
                    .arg(&out)
                    .arg(&src)
                    .output();
                match res {
                    Ok(o) if o.status.success() => return Some(out),
                    Ok(o) => tried.push(format!("{cxx}: {}", String::from_utf8_lossy(&o.stderr).trim())),
                    Err(e) => tried.push(format!("{cxx}: {e}")),
                }
            }
            let msg = format!("no C++20 compiler built {}:\n  {}", src.display(), tried.join("\n  "));
            if std::env::var_os("FML_REQUIRE_EMU").is_some() {
                panic!("{msg}");
            }
            eprintln!("skipping the emulated-kernel checks: {msg}");
            None
        })
        .as_deref()
}

/// One kernel argument, as the harness protocol (tests/emu/harness.cpp) tags it.
enum Arg<'a> {
    Params(&'a [u8]),
    U32(u32),
    F32(&'a [f32]),
    U32s(&'a [u32]),
    /// An output buffer of this many f32, filled with NaN before the launch: the CUDA path
    /// allocates outputs uninitialised (`CudaDevice::alloc`), so every kernel must write every
    /// element, and `assert_close` fails on any NaN left over.
    Out(usize),
}

/// The bytes of a `#[repr(C)]` parameter struct, as cudarc pushes them.
fn bytes_of<T: Copy>(p: &T) -> &[u8] {
    // SAFETY: the parameter structs are #[repr(C)] plain data (u32 and f32 fields, no padding).
    unsafe { std::slice::from_raw_parts(p as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Run one launch; returns the output buffers in argument order, or the harness's error.
fn try_launch(exe: &Path, kernel: &str, l: Launch, args: &[Arg]) -> Result<Vec<Vec<f32>>, String> {
    let mut msg = Vec::new();
    let u32s = |m: &mut Vec<u8>, v: &[u32]| v.iter().for_each(|x| m.extend_from_slice(&x.to_le_bytes()));
    u32s(&mut msg, &[kernel.len() as u32]);
    msg.extend_from_slice(kernel.as_bytes());
    u32s(&mut msg, &[l.grid.0, l.grid.1, l.grid.2, l.block.0, l.block.1, l.block.2, args.len() as u32]);
    let mut outs = Vec::new();
    for a in args {
        match a {
            Arg::Params(b) => {
                msg.push(0);
                u32s(&mut msg, &[b.len() as u32]);
                msg.extend_from_slice(b);
            }
            Arg::U32(v) => {
                msg.push(1);
                u32s(&mut msg, &[*v]);
            }
            Arg::F32(v) => {
                msg.push(2);
                u32s(&mut msg, &[v.len() as u32]);
                v.iter().for_each(|x| msg.extend_from_slice(&x.to_le_bytes()));
            }
            Arg::U32s(v) => {
                msg.push(3);
                u32s(&mut msg, &[v.len() as u32]);
                u32s(&mut msg, v);
            }
            Arg::Out(n) => {
                msg.push(4);
                u32s(&mut msg, &[*n as u32]);
                outs.push(*n);
            }
        }
    }
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    // The harness reads all of its input before it writes anything.
    child.stdin.take().unwrap().write_all(&msg).map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("{kernel}: {}", String::from_utf8_lossy(&o.stderr).trim()));
    }
    let floats: Vec<f32> = o.stdout.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(floats.len(), outs.iter().sum::<usize>(), "{kernel}: output size");
    let mut at = 0;
    Ok(outs
        .into_iter()
        .map(|n| {
            at += n;
            floats[at - n..at].to_vec()
        })
        .collect())
}

fn run(exe: &Path, kernel: &str, l: Launch, args: &[Arg]) -> Vec<Vec<f32>> {
    try_launch(exe, kernel, l, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Largest |a - b| over max(1, largest |b|): the emulation against a CPU twin.
fn assert_close(what: &str, emulated: &[f32], twin: &[f32], tol: f32) {
    assert_eq!(emulated.len(), twin.len(), "{what}: length");
    let scale = twin.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let err = emulated.iter().zip(twin).fold(0.0f32, |m, (a, b)| if (a - b).abs() > m { (a - b).abs() } else { m });
    eprintln!("{what}: max error {err:.3e} (scale {scale:.3e})");
    assert!(
        err.is_finite() && err <= tol * scale,
        "{what}: emulated kernel differs from the CPU twin by {err} (scale {scale})"
    );
    assert!(emulated.iter().all(|x| x.is_finite()), "{what}: non-finite output");
}

fn randn(rng: &mut Rng, n: usize, sd: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * sd) as f32).collect()
}

// ------------------------------------------------------------------------------ scenes

/// A bumpy `w` x `h` grid mesh (two triangles per quad, one degenerate triangle and one
/// isolated vertex at the end), `batch` copies with different bumps: `[B, N, 3]` flat.
fn grid_mesh(rng: &mut Rng, w: usize, h: usize, batch: usize) -> (Vec<f32>, Vec<[u32; 3]>, usize) {
    let n = w * h + 1;
    let mut tris = Vec::new();
    for y in 0..h - 1 {
        for x in 0..w - 1 {
            let i = (y * w + x) as u32;
            tris.push([i, i + 1, i + w as u32]);
            tris.push([i + 1, i + w as u32 + 1, i + w as u32]);
        }
    }
    tris.push([0, 0, 1]);
    let mut v = Vec::with_capacity(batch * n * 3);
    for _ in 0..batch {
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&[x as f32 * 2.0, y as f32 * 2.0, (rng.normal() * 0.7) as f32]);
            }
        }
        v.extend_from_slice(&[1.0, 1.0, 1.0]);
    }
    (v, tris, n)
}

fn u32s_of(t: &candle_core::Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

// ------------------------------------------------------------------------------ checks

#[test]
fn normals_forward_and_backward_match_the_cpu_twin() {
    let Some(exe) = harness() else { return };
    let mut rng = Rng::new(1);
    // 600 vertices: 3 blocks per image, the last one partly idle.
    let (v, tris, n) = grid_mesh(&mut rng, 23, 26, 2);
    let batch = 2;
    let topo = NormalsTopology::new(n, &tris, &candle_core::Device::Cpu).unwrap();
    let (t, o, vt) = (u32s_of(&topo.triangles), u32s_of(&topo.offsets), u32s_of(&topo.vertex_triangles));
    let p = NormalsParams { batch: batch as u32, num_vertices: n as u32, num_triangles: tris.len() as u32 };
    let total = batch * n;
    let fwd = run(
        exe,
        "fml_normals_fwd",
        launch::linear(total).unwrap(),
        &[Arg::Params(bytes_of(&p)), Arg::F32(&v), Arg::U32s(&t), Arg::U32s(&o), Arg::U32s(&vt), Arg::Out(total * 3)],
    );
    assert_close("normals forward", &fwd[0], &normals_fwd_cpu(&p, &v, &t, &o, &vt), 1e-6);

    let g = randn(&mut rng, total * 3, 1.0);
    let l = launch::linear(total).unwrap();
    let gacc = run(
        exe,
        "fml_normals_bwd_acc",
        l,
        &[
            Arg::Params(bytes_of(&p)),
            Arg::F32(&v),
            Arg::F32(&g),
            Arg::U32s(&t),
            Arg::U32s(&o),
            Arg::U32s(&vt),
            Arg::Out(total * 3),
        ],
    );
    let bwd = run(
        exe,
        "fml_normals_bwd_gather",
        l,
        &[
            Arg::Params(bytes_of(&p)),
            Arg::F32(&v),
            Arg::F32(&gacc[0]),
            Arg::U32s(&t),
            Arg::U32s(&o),
            Arg::U32s(&vt),
            Arg::Out(total * 3),
        ],
    );
    assert_close("normals backward", &bwd[0], &normals_bwd_cpu(&p, &v, &g, &t, &o, &vt), 1e-5);
}

#[test]
fn shading_forward_and_backward_match_the_cpu_twin() {
    let Some(exe) = harness() else { return };
    let mut rng = Rng::new(2);
    let (batch, n) = (3, 700);
    let total = batch * n;
    let mut nrm = randn(&mut rng, total * 3, 1.0);
    for q in nrm.chunks_mut(3) {
        let l = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt().max(1e-6);
        q.iter_mut().for_each(|x| *x /= l);
    }
    let r: Vec<f32> = (0..total * 3).map(|_| rng.range(0.2, 0.9) as f32).collect();
    let gamma = randn(&mut rng, batch * 27, 0.3);
    let p = ShadeParams { batch: batch as u32, num_vertices: n as u32 };
    let fwd = run(
        exe,
        "fml_shade_fwd",
        launch::linear(total).unwrap(),
        &[Arg::Params(bytes_of(&p)), Arg::F32(&nrm), Arg::F32(&r), Arg::F32(&gamma), Arg::Out(total * 3)],
    );
    assert_close("shade forward", &fwd[0], &shade_fwd_cpu(&p, &nrm, &r, &gamma), 1e-6);

    let g = randn(&mut rng, total * 3, 1.0);
    let (l, blocks) = launch::per_image(p.batch, p.num_vertices).unwrap();
    let out = run(
        exe,
        "fml_shade_bwd",
        l,
        &[
            Arg::Params(bytes_of(&p)),
            Arg::F32(&nrm),
            Arg::F32(&r),
            Arg::F32(&gamma),
            Arg::F32(&g),
            Arg::Out(total * 3),
            Arg::Out(total * 3),
            Arg::Out(batch * blocks as usize * 27),
        ],
    );
    let gg = run(
        exe,
        "fml_shade_bwd_reduce",
        launch::linear(batch * 27).unwrap(),
        &[Arg::Params(bytes_of(&p)), Arg::U32(blocks), Arg::F32(&out[2]), Arg::Out(batch * 27)],
    );
    let (tn, tr, tg) = shade_bwd_cpu(&p, &nrm, &r, &gamma, &g);
    assert_close("shade backward (normals)", &out[0], &tn, 1e-6);
    assert_close("shade backward (reflectance)", &out[1], &tr, 1e-6);
    // Tree-ordered block sums against the twin's sequential ones: float rounding only.
    assert_close("shade backward (SH)", &gg[0], &tg, 1e-5);
}

#[test]
fn projection_and_bilinear_sampling_match_the_cpu_twin() {
    let Some(exe) = harness() else { return };
    let mut rng = Rng::new(3);
    // A non-square image, so that swapped width/height fields could not go unnoticed.
    let k = Intrinsics { focal: 40.0, width: 37, height: 29, near: 10.0 };
    let (batch, n) = (2, 500);
    let total = batch * n;
    let mut v = Vec::with_capacity(total * 3);
    for i in 0..total {
        // Mostly inside the view; every 17th point behind the near plane, some off the image.
        let z = if i % 17 == 0 { -5.0 } else { -rng.range(60.0, 120.0) };
        let (x, y) = (rng.range(-1.3, 1.3) * 0.5 * -z * 37.0 / 40.0, rng.range(-1.3, 1.3) * 0.5 * -z * 29.0 / 40.0);
        v.extend_from_slice(&[x as f32, y as f32, z as f32]);
    }
    let img: Vec<f32> = (0..batch * 29 * 37 * 3).map(|_| rng.uniform() as f32).collect();
    let p = SampleParams::new(batch, n, &k);
    let l = launch::linear(total).unwrap();
    let fwd =
        run(exe, "fml_sample_fwd", l, &[Arg::Params(bytes_of(&p)), Arg::F32(&v), Arg::F32(&img), Arg::Out(total * 3)]);
    let twin = sample_fwd_cpu(&p, &v, &img);
    assert_close("sample forward", &fwd[0], &twin, 1e-6);
    let inside = twin.chunks(3).filter(|c| c.iter().any(|x| *x != 0.0)).count();
    assert!(inside > total / 2 && inside < total, "the scene should sample inside and outside: {inside} of {total}");

    let g = randn(&mut rng, total * 3, 1.0);
    let bwd = run(
        exe,
        "fml_sample_bwd",
        l,
        &[Arg::Params(bytes_of(&p)), Arg::F32(&v), Arg::F32(&img), Arg::F32(&g), Arg::Out(total * 3)],
    );
    assert_close("sample backward", &bwd[0], &sample_bwd_cpu(&p, &v, &img, &g), 1e-5);
}

#[test]
fn photometric_l21_forward_and_backward_match_the_cpu_twin() {
    let Some(exe) = harness() else { return };
    let mut rng = Rng::new(4);
    let (batch, n) = (3, 1100);
    let total = batch * n;
    let a: Vec<f32> = (0..total * 3).map(|_| rng.uniform() as f32).collect();
    let c: Vec<f32> = (0..total * 3).map(|_| rng.uniform() as f32).collect();
    // Image 2 has nothing visible: loss 0, gradient 0.
    let m: Vec<f32> = (0..total).map(|i| if i / n == 2 || rng.uniform() < 0.3 { 0.0 } else { 1.0 }).collect();
    let p = PhotoParams { batch: batch as u32, num_vertices: n as u32, eps: PHOTO_EPS };
    let (l, blocks) = launch::per_image(p.batch, p.num_vertices).unwrap();
    let sums = |exe: &Path| {
        let partial = run(
            exe,
            "fml_photo_partial",
            l,
            &[
                Arg::Params(bytes_of(&p)),
                Arg::F32(&a),
                Arg::F32(&c),
                Arg::F32(&m),
                Arg::Out(batch * blocks as usize * 2),
            ],
        );
        run(
            exe,
            "fml_photo_finish",
            launch::linear(batch).unwrap(),
            &[Arg::Params(bytes_of(&p)), Arg::U32(blocks), Arg::F32(&partial[0]), Arg::Out(batch), Arg::Out(batch)],
        )
    };
    let lc = sums(exe);
    let twin = photo_fwd_cpu(&p, &a, &c, &m);
    assert_close("photo forward", &lc[0], &twin, 1e-5);
    assert_eq!(lc[0][2], 0.0, "an image with nothing visible has zero loss");
    let counts: Vec<f32> = (0..batch).map(|b| m[b * n..(b + 1) * n].iter().sum()).collect();
    assert_eq!(lc[1], counts, "visible counts");

    let g = randn(&mut rng, batch, 1.0);
    let bwd = run(
        exe,
        "fml_photo_bwd",
        launch::linear(total).unwrap(),
        &[
            Arg::Params(bytes_of(&p)),
            Arg::F32(&a),
            Arg::F32(&c),
            Arg::F32(&m),
            Arg::F32(&g),
            Arg::F32(&lc[1]),
            Arg::Out(total * 3),
        ],
    );
    assert_close("photo backward", &bwd[0], &photo_bwd_cpu(&p, &a, &c, &m, &g), 1e-5);
}

#[test]
fn im2col_unfold_and_fold_match_the_cpu_twins() {
    let Some(exe) = harness() else { return };
    let mut rng = Rng::new(5);
    // Strided, padded and non-square, as AlexNet's first layers.
    for (dims, k, s, pad) in [((3, 2, 13, 11), 5, 2, 2), ((4, 3, 9, 10), 3, 1, 1), ((2, 1, 12, 12), 4, 4, 0)] {
        let p = ConvParams::new(dims, k, s, pad).unwrap();
        let x = randn(&mut rng, dims.0 * dims.1 * dims.2 * dims.3, 1.0);
        let (rows, cols) = p.cols_shape();
        let u = run(
            exe,
            "fml_unfold",
            launch::linear(rows * cols).unwrap(),
            &[Arg::Params(bytes_of(&p)), Arg::F32(&x), Arg::Out(rows * cols)],
        );
        assert_close(&format!("unfold {dims:?} k{k} s{s} p{pad}"), &u[0], &unfold_cpu(&p, &x), 0.0);
        let g = randn(&mut rng, rows * cols, 1.0);
        let f = run(
            exe,
            "fml_fold",
            launch::linear(x.len()).unwrap(),
            &[Arg::Params(bytes_of(&p)), Arg::F32(&g), Arg::Out(x.len())],
        );
        assert_close(&format!("fold {dims:?} k{k} s{s} p{pad}"), &f[0], &fold_cpu(&p, &g), 1e-6);
    }
}

/// The checks have teeth: a parameter struct of the wrong size is refused, and a grid one block
/// short leaves outputs unwritten (NaN, as the harness fills them) that the comparison catches.
#[test]
fn the_emulation_notices_layout_and_launch_mistakes() {
    let Some(exe) = harness() else { return };
    let p = ShadeParams { batch: 1, num_vertices: 300 };
    let wrong = [bytes_of(&p), &[0u8; 4][..]].concat();
    let (nrm, r, gamma) = (vec![0.0f32; 900], vec![0.5f32; 900], vec![0.1f32; 27]);
    let err = try_launch(
        exe,
        "fml_shade_fwd",
        launch::linear(300).unwrap(),
        &[Arg::Params(&wrong), Arg::F32(&nrm), Arg::F32(&r), Arg::F32(&gamma), Arg::Out(900)],
    )
    .unwrap_err();
    assert!(err.contains("12 bytes, the kernel's has 8"), "{err}");

    let short = Launch { grid: (1, 1, 1), ..launch::linear(300).unwrap() };
    let out = run(
        exe,
        "fml_shade_fwd",
        short,
        &[Arg::Params(bytes_of(&p)), Arg::F32(&nrm), Arg::F32(&r), Arg::F32(&gamma), Arg::Out(900)],
    );
    let twin = shade_fwd_cpu(&p, &nrm, &r, &gamma);
    assert!(out[0][..768] == twin[..768] && out[0][768..].iter().all(|x| x.is_nan()));
    let caught = std::panic::catch_unwind(|| assert_close("short grid", &out[0], &twin, 1e-6));
    assert!(caught.is_err(), "assert_close let unwritten (NaN) outputs through");
}

/// `kernels/render.cu` sizes its shared reduction buffers with its own `BLOCK`: a larger launch
/// block would overrun them (on a GPU silently).
#[test]
fn the_launch_block_size_is_the_kernels_block_size() {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/render.cu")).unwrap();
    let define = src.lines().find_map(|l| l.strip_prefix("#define BLOCK ")).expect("render.cu defines BLOCK");
    assert_eq!(define.trim().parse::<u32>().unwrap(), launch::BLOCK);
    assert!(launch::BLOCK.is_power_of_two(), "the tree reductions halve the block");
}
