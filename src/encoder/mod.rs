//! The CNN encoder (Sec. 7): a modified AlexNet [38] — five convolutions, two hidden fully
//! connected layers and a linear output layer — that regresses the parameter vector x of Sec. 5
//! from a face crop. Width and input size come from the config so a small variant trains on a
//! CPU. Weights live in a `VarMap` under `encoder.*`; they are initialised from our own seeded RNG
//! (He-normal for hidden layers, zeros for the output layer except its corrective-coefficient rows,
//! `correctives.head_std`) so a run is reproducible, and the zero output rows make training start
//! from the mean face, frontal pose and neutral light (the correction starts at zero through its
//! zero bases).

use crate::error::{Error, Result};
use crate::rng::Rng;
use candle_core::{D, DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};

#[cfg(feature = "cuda")]
mod cuda;
pub mod im2col;
pub mod pool;
/// The architecture (a config section, hence defined in `config`).
pub use crate::config::{ConvSpec, EncoderConfig};

/// One convolution layer: weights `[O, C, k, k]`, bias `[O]`, stride, padding, pool after.
#[derive(Clone, Debug)]
struct ConvLayer {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: usize,
    pool: bool,
}

/// The encoder network.
#[derive(Clone, Debug)]
pub struct Encoder {
    convs: Vec<ConvLayer>,
    fcs: Vec<Linear>,
    head: Linear,
    pub config: EncoderConfig,
    pub num_outputs: usize,
}

/// Prefix of all encoder weights in the run's `VarMap`.
pub const PREFIX: &str = "encoder";

/// Largest batch a CPU inference forward pass runs at once (see [`Encoder::features`]). The best
/// throughput of `fml bench infer` (tiny encoder, 2-core development VM) was at batch 32 on
/// 2026-12-07 and at 8 or 32 in the runs of BENCHMARKS.md; past 32 it fell.
pub const CPU_INFER_CHUNK: usize = 32;

fn insert(varmap: &VarMap, name: &str, shape: &[usize], std: f64, rng: &mut Rng, device: &Device) -> Result<()> {
    let mut data = varmap.data().lock().expect("varmap lock");
    if let Some(v) = data.get(name) {
        if v.dims() != shape {
            return Err(Error::invalid(format!("{name} has shape {:?}, the config wants {shape:?}", v.dims())));
        }
        return Ok(());
    }
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| if std == 0.0 { 0.0 } else { (rng.normal() * std) as f32 }).collect();
    data.insert(name.to_string(), Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?);
    Ok(())
}

/// Output-layer weights `[rows, cols]` (flat): zero for rows `< from`, N(0, std^2) after.
pub fn head_rows(rows: usize, cols: usize, from: usize, std: f32, rng: &mut Rng) -> Vec<f32> {
    let mut w = vec![0f32; rows * cols];
    for x in &mut w[from * cols..] {
        *x = (rng.normal() as f32) * std;
    }
    w
}

impl Encoder {
    /// Build the encoder in `varmap` (weights already present, e.g. from a checkpoint, are used
    /// as they are) with `num_outputs` outputs. The output layer starts at zero except for rows
    /// `random_rows.0..`, which get N(0, random_rows.1^2) weights (the corrective coefficients,
    /// see `CorrectiveConfig::head_std`).
    pub fn new(
        config: &EncoderConfig,
        num_outputs: usize,
        random_rows: (usize, f32),
        varmap: &VarMap,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (c_last, s_last) = config.feature_size()?;
        let mut rng = Rng::new(seed ^ 0xE4C0_DE11);
        let mut in_c = 3;
        for (i, &[out, k, ..]) in config.conv.iter().enumerate() {
            let fan_in = in_c * k * k;
            insert(
                varmap,
                &format!("{PREFIX}.conv{}.weight", i + 1),
                &[out, in_c, k, k],
                (2.0 / fan_in as f64).sqrt(),
                &mut rng,
                device,
            )?;
            insert(varmap, &format!("{PREFIX}.conv{}.bias", i + 1), &[out], 0.0, &mut rng, device)?;
            in_c = out;
        }
        let mut in_f = c_last * s_last * s_last;
        for (i, &w) in config.fc.iter().enumerate() {
            insert(
                varmap,
                &format!("{PREFIX}.fc{}.weight", i + 1),
                &[w, in_f],
                (2.0 / in_f as f64).sqrt(),
                &mut rng,
                device,
            )?;
            insert(varmap, &format!("{PREFIX}.fc{}.bias", i + 1), &[w], 0.0, &mut rng, device)?;
            in_f = w;
        }
        let head = format!("{PREFIX}.head.weight");
        if !varmap.data().lock().expect("varmap lock").contains_key(&head) {
            let (from, std) = random_rows;
            let w = head_rows(num_outputs, in_f, from.min(num_outputs), std, &mut rng);
            varmap
                .data()
                .lock()
                .expect("varmap lock")
                .insert(head.clone(), Var::from_tensor(&Tensor::from_vec(w, (num_outputs, in_f), device)?)?);
        }
        insert(varmap, &head, &[num_outputs, in_f], 0.0, &mut rng, device)?;
        insert(varmap, &format!("{PREFIX}.head.bias"), &[num_outputs], 0.0, &mut rng, device)?;

        let vb = VarBuilder::from_varmap(varmap, DType::F32, device).pp(PREFIX);
        let mut convs = Vec::new();
        let mut in_c = 3;
        for (i, &[out, k, stride, pad, pool]) in config.conv.iter().enumerate() {
            let vb = vb.pp(format!("conv{}", i + 1));
            let weight = vb.get((out, in_c, k, k), "weight")?;
            let bias = vb.get(out, "bias")?;
            convs.push(ConvLayer { weight, bias, stride, pad, pool: pool == 1 });
            in_c = out;
        }
        let mut fcs = Vec::new();
        let mut in_f = c_last * s_last * s_last;
        for (i, &w) in config.fc.iter().enumerate() {
            fcs.push(candle_nn::linear(in_f, w, vb.pp(format!("fc{}", i + 1)))?);
            in_f = w;
        }
        let head = candle_nn::linear(in_f, num_outputs, vb.pp("head"))?;
        Ok(Encoder { convs, fcs, head, config: config.clone(), num_outputs })
    }

    /// The same encoder over detached copies of its weights (they share storage with the
    /// `VarMap`, nothing is copied): forward passes then build no autograd graph, so every
    /// activation (im2col matrices included) is freed as soon as the next layer has consumed it.
    /// For inference only; gradients do not reach the weights through it.
    pub fn detached(&self) -> Encoder {
        let linear = |l: &Linear| Linear::new(l.weight().detach(), l.bias().map(Tensor::detach));
        Encoder {
            convs: self
                .convs
                .iter()
                .map(|c| ConvLayer { weight: c.weight.detach(), bias: c.bias.detach(), ..c.clone() })
                .collect(),
            fcs: self.fcs.iter().map(linear).collect(),
            head: linear(&self.head),
            config: self.config.clone(),
            num_outputs: self.num_outputs,
        }
    }

    /// Whether a forward pass records an autograd graph (false for [`detached`](Self::detached)).
    pub fn tracks_gradients(&self) -> bool {
        self.convs.iter().any(|c| c.weight.track_op() || c.bias.track_op())
            || self.fcs.iter().chain(std::iter::once(&self.head)).any(|l| l.weight().track_op())
    }

    /// Regress the parameter vector.
    ///
    /// # Shapes
    /// `images`: `[B, 3, S, S]` in [0, 1] (S = `input_size`) -> `[B, num_outputs]`.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(&self.features(images)?)?)
    }

    /// The last hidden layer's activations, the input of the output layer.
    ///
    /// # Shapes
    /// `images`: `[B, 3, S, S]` in [0, 1] -> `[B, F]` (F = the last `fc` width).
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let s = self.config.input_size;
        let b = match images.dims() {
            &[b, 3, h, w] if h == s && w == s => b,
            d => return Err(Error::invalid(format!("encoder input has shape {d:?}, expected [B, 3, {s}, {s}]"))),
        };
        // Inference on a CPU: run large batches in chunks. The im2col matrices grow with the
        // batch (the first one is C k^2 x B Ho Wo: 2.5 GB at B = 8192 for the tiny encoder) and
        // fall out of the caches; chunks keep the rate of the best batch size and bound the memory.
        // Not while training (one graph over the batch) and not on a GPU (it wants large batches).
        if b > CPU_INFER_CHUNK && images.device().is_cpu() && !self.tracks_gradients() {
            let parts = (0..b)
                .step_by(CPU_INFER_CHUNK)
                .map(|i| self.features_batch(&images.narrow(0, i, CPU_INFER_CHUNK.min(b - i))?))
                .collect::<Result<Vec<_>>>()?; // each [chunk, F]
            return Ok(Tensor::cat(&parts, 0)?); // [B, F]
        }
        self.features_batch(images)
    }

    /// [`features`](Self::features) of one batch, whatever its size.
    ///
    /// # Shapes
    /// `images`: `[B, 3, S, S]` -> `[B, F]`.
    fn features_batch(&self, images: &Tensor) -> Result<Tensor> {
        // Centre the input around 0 (the crops are in [0, 1]); convolutions run channel-major
        // ([C, B, H, W], see im2col.rs).
        let mut x = images.affine(2.0, -1.0)?.permute((1, 0, 2, 3))?.contiguous()?; // [3, B, S, S]
        for l in &self.convs {
            x = im2col::conv2d_cbhw(&x, &l.weight, &l.bias, l.stride, l.pad)?.relu()?; // [O, B, Ho, Wo]
            if l.pool {
                x = max_pool_3x3_s2(&x)?; // [O, B, (Ho - 1) / 2, (Wo - 1) / 2]
            }
        }
        // [C, B, H, W] -> [B, C, H, W] -> [B, C*H*W] (C, H = W the last conv's channels and size:
        // `EncoderConfig::feature_size`), in candle-nn's NCHW flattening order.
        let mut x = x.permute((1, 0, 2, 3))?.contiguous()?.flatten_from(1)?;
        for fc in &self.fcs {
            x = fc.forward(&x)?.relu()?; // [B, width of this fc]
        }
        Ok(x)
    }
}

/// AlexNet's overlapping 3x3 max-pooling with stride 2 (candle's `max_pool2d` has no backward
/// when kernel and stride differ): one custom op on a CPU ([`pool`]), the tensor formulation
/// ([`max_pool_3x3_s2_tensor_ops`]) elsewhere; both give the same values and gradients.
///
/// # Shapes
/// `[.., H, W]` -> `[.., (H - 1) / 2, (W - 1) / 2]`.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        if x.rank() < 2 || x.dim(D::Minus1)? < 3 || x.dim(D::Minus2)? < 3 {
            return Err(Error::invalid(format!(
                "3x3/2 max-pooling needs at least 3 samples along an axis, got {:?}",
                x.dims()
            )));
        }
        return Ok(pool::max_pool_3x3_s2_cpu(x)?);
    }
    max_pool_3x3_s2_tensor_ops(x)
}

/// [`max_pool_3x3_s2`] built from differentiable tensor ops. Max is separable, so the 3x3
/// window is a 3-wide pool along W, then along H; along one axis
/// `y[i] = max(x[2i], x[2i+1], x[2i+2])` = max(pairwise max of (x[2i], x[2i+1]), x[2i+2]).
///
/// # Shapes
/// `[.., H, W]` -> `[.., (H - 1) / 2, (W - 1) / 2]`.
pub fn max_pool_3x3_s2_tensor_ops(x: &Tensor) -> Result<Tensor> {
    let x = pool_axis(x, 3)?; // [.., H, (W - 1) / 2]
    pool_axis(&x, 2) // [.., (H - 1) / 2, (W - 1) / 2]
}

/// One 3-wide, stride-2 max-pooling along axis `d`.
///
/// # Shapes
/// `[.., n, ..]` (n at axis `d`) -> `[.., (n - 1) / 2, ..]`.
fn pool_axis(x: &Tensor, d: usize) -> Result<Tensor> {
    let n = x.dim(d)?;
    if n < 3 {
        return Err(Error::invalid(format!("3x3/2 max-pooling needs at least 3 samples along an axis, got {n}")));
    }
    let m = (n - 1) / 2;
    // Shapes below for axis d of length n (others unchanged, written `..`), e.g. d = 3 of
    // [C, B, H, W]. Pairs (x[2i], x[2i+1]) and the following even samples x[2i+2]; padding by
    // one replicated sample keeps the second slice in range for odd n (it is never selected past
    // the end).
    let xp = x.pad_with_same(d, 0, 1)?; // [.., n + 1, ..]
    let mut pair_shape = x.dims().to_vec();
    pair_shape[d] = m;
    pair_shape.insert(d + 1, 2); // [.., m, 2, ..]
    let pairs = xp.narrow(d, 0, 2 * m)?.reshape(pair_shape.clone())?; // [.., 2m, ..] -> [.., m, 2, ..]
    let next = xp.narrow(d, 2, 2 * m)?.reshape(pair_shape)?.narrow(d + 1, 0, 1)?; // [.., m, 1, ..]
    let best = pairs.narrow(d + 1, 0, 1)?.maximum(&pairs.narrow(d + 1, 1, 1)?)?.maximum(&next)?; // [.., m, 1, ..]
    Ok(best.squeeze(d + 1)?) // [.., m, ..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_pool_matches_candle_forward_and_has_gradients() {
        let dev = Device::Cpu;
        for (h, w) in [(7, 7), (8, 9), (13, 13), (58, 58)] {
            let x = Tensor::randn(0f32, 1f32, (2, 3, h, w), &dev).unwrap();
            let ours = max_pool_3x3_s2(&x).unwrap();
            let theirs = x.max_pool2d_with_stride(3, 2).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let d = (ours - theirs).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{h}x{w}");
        }
        let v = Var::from_tensor(&Tensor::randn(0f32, 1f32, (1, 1, 9, 9), &dev).unwrap()).unwrap();
        let g = max_pool_3x3_s2(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(v.as_tensor()).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((gx - 16.0).abs() < 1e-6, "one unit of gradient per output cell, got {gx}");
    }

    fn tiny() -> EncoderConfig {
        EncoderConfig {
            input_size: 32,
            conv: vec![[4, 5, 2, 2, 1], [8, 3, 1, 1, 0], [8, 3, 1, 1, 0], [8, 3, 1, 1, 0], [8, 3, 1, 1, 1]],
            fc: vec![16, 16],
        }
    }

    #[test]
    fn cpu_inference_in_chunks_equals_one_batch() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let enc = Encoder::new(&tiny(), 5, (0, 0.1), &vm, 3, &dev).unwrap();
        let inf = enc.detached();
        assert!(!inf.tracks_gradients(), "the chunked path is the one without gradients");
        let b = 2 * CPU_INFER_CHUNK + 3;
        let x = Tensor::rand(0f32, 1f32, (b, 3, 32, 32), &dev).unwrap();
        let chunked = inf.forward(&x).unwrap(); // [B, 5], three chunks
        assert_eq!(chunked.dims(), &[b, 5]);
        let whole = enc.forward(&x).unwrap(); // tracks gradients: one batch
        let d = (chunked - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let m = whole.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(m > 0.0 && d <= 1e-5 * m, "chunked inference differs by {d} (max |y| {m})");
    }

    #[test]
    fn alexnet_default_geometry() {
        // 240 -> conv 11/4 -> 58 -> pool 28 -> conv5 28 -> pool 13 -> 13 -> 13 -> 13 -> pool 6.
        assert_eq!(EncoderConfig::default().feature_size().unwrap(), (256, 6));
        let bad = EncoderConfig { input_size: 16, ..EncoderConfig::default() };
        assert!(bad.feature_size().is_err());
    }

    #[test]
    fn zero_head_then_deterministic_init() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let enc = Encoder::new(&tiny(), 7, (7, 0.0), &vm, 1, &dev).unwrap();
        let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &dev).unwrap();
        let y = enc.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 7]);
        assert_eq!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let vm2 = VarMap::new();
        Encoder::new(&tiny(), 7, (7, 0.0), &vm2, 1, &dev).unwrap();
        let a = vm.data().lock().unwrap()["encoder.conv1.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = vm2.data().lock().unwrap()["encoder.conv1.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
        assert!(enc.forward(&Tensor::zeros((1, 3, 30, 30), DType::F32, &dev).unwrap()).is_err());
    }
}
