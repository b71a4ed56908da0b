//! AdaDelta (Zeiler 2012), the optimiser of Sec. 7, as a candle-nn `Optimizer` with
//! per-parameter-group learning rates (encoder, geometry correctives, reflectance correctives)
//! and a state that is checkpointed with the weights.
//!
//! Update, as in Caffe's AdaDeltaSolver (the paper's framework):
//! `E[g²] = ρ E[g²] + (1-ρ) g²`, `Δ = sqrt(E[Δ²] + ε) / sqrt(E[g²] + ε) · g`,
//! `E[Δ²] = ρ E[Δ²] + (1-ρ) Δ²`, `θ -= lr · Δ`.

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::Optimizer;
use std::collections::HashMap;

/// Hyper-parameters shared by all groups.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaDeltaConfig {
    pub lr: f64,
    pub rho: f64,
    pub eps: f64,
}

impl Default for AdaDeltaConfig {
    fn default() -> Self {
        AdaDeltaConfig { lr: 0.01, rho: 0.95, eps: 1e-6 }
    }
}

struct Slot {
    name: String,
    var: Var,
    lr: f64,
    sq_grad: Tensor,
    sq_delta: Tensor,
}

/// AdaDelta over named variables, each with its own learning rate.
pub struct AdaDelta {
    slots: Vec<Slot>,
    /// The slot whose rate `learning_rate` reports and `set_learning_rate` sets (the others
    /// follow by the same factor): the first encoder / base-level variable with a non-zero rate
    /// when built by `for_varmap`, else the first slot with a non-zero rate. Not simply the first
    /// slot: slots are sorted by name, so while finetuning that is `correctives.geometry`, and
    /// the log's `lr` would read 0.005 instead of the encoder's 0.001.
    reference: usize,
    cfg: AdaDeltaConfig,
}

/// Names of the two state tensors of a variable in a checkpoint.
pub fn state_names(var: &str) -> (String, String) {
    (format!("adadelta.sq_grad.{var}"), format!("adadelta.sq_delta.{var}"))
}

impl AdaDelta {
    /// Every variable of a network's `VarMap`, sorted by name, in the learning-rate group of
    /// Sec. 7 its name puts it in: geometry correctives, reflectance correctives, or the encoder /
    /// base level (everything else). The corrective groups are the bases only
    /// (`correctives.geometry`, `correctives.reflectance`); the output rows of `encoder.head` that
    /// regress the corrective coefficients are part of the encoder and take `lr_encoder` (README,
    /// "Learning-rate groups").
    pub fn for_varmap(varmap: &candle_nn::VarMap, optim: &crate::config::OptimConfig) -> Result<Self> {
        use crate::face_model::multilevel::{GEOMETRY_CORRECTIVES, REFLECTANCE_CORRECTIVES};
        let data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let groups = names
            .into_iter()
            .map(|name| {
                let lr = match name.as_str() {
                    GEOMETRY_CORRECTIVES => optim.lr_geometry,
                    REFLECTANCE_CORRECTIVES => optim.lr_reflectance,
                    _ => optim.lr_encoder,
                };
                (name.clone(), data[name].clone(), lr)
            })
            .collect::<Vec<_>>();
        let encoder = groups.iter().position(|(name, _, lr)| {
            *lr > 0.0 && name.as_str() != GEOMETRY_CORRECTIVES && name.as_str() != REFLECTANCE_CORRECTIVES
        });
        let mut opt = AdaDelta::with_groups(groups, optim.rho, optim.eps)?;
        if let Some(i) = encoder {
            opt.reference = i;
        }
        Ok(opt)
    }

    /// Named variables with their learning rates.
    /// The first variable with a non-zero rate is the reference of
    /// [`learning_rate`](Optimizer::learning_rate).
    pub fn with_groups(vars: Vec<(String, Var, f64)>, rho: f64, eps: f64) -> Result<Self> {
        let reference = vars.iter().position(|v| v.2 > 0.0).unwrap_or(0);
        let lr = vars.get(reference).map(|v| v.2).unwrap_or(0.01);
        let slots = vars
            .into_iter()
            .map(|(name, var, lr)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot { name, var, lr, sq_grad: z.clone(), sq_delta: z })
            })
            .collect::<Result<_>>()?;
        Ok(AdaDelta { slots, reference, cfg: AdaDeltaConfig { lr, rho, eps } })
    }

    /// The first variable whose gradient holds a NaN or an infinity, if any. A finite loss can
    /// still have one (an overflow in the backward pass): AdaDelta would turn it into NaN
    /// weights, frozen groups (rate 0) included, and the next checkpoint would keep them. One
    /// sum per variable, read back together (one device sync).
    pub fn non_finite_gradient(&self, grads: &GradStore) -> Result<Option<String>> {
        let mut names = Vec::new();
        let mut sums = Vec::new();
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                // On a CPU, a parallel scan (candle's sum runs on one thread: a few % of a
                // pretraining step of the full AlexNet).
                if g.device().is_cpu() && g.dtype() == candle_core::DType::F32 && g.is_contiguous() {
                    let bad = crate::kernel::with_cpu::<f32, _>(g, "gradient check", |v| {
                        use rayon::prelude::*;
                        Ok(v.par_chunks(1 << 16).any(|c| c.iter().any(|x| !x.is_finite())))
                    })?;
                    if bad {
                        return Ok(Some(s.name.clone()));
                    }
                    continue;
                }
                // NaN and +-Inf survive a sum (Inf - Inf is NaN); a sum overflowing to Inf
                // means gradients near f32's limit, no better.
                sums.push(g.detach().to_dtype(candle_core::DType::F32)?.sum_all()?); // []
                names.push(&s.name);
            }
        }
        if sums.is_empty() {
            return Ok(None);
        }
        let sums = Tensor::stack(&sums, 0)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<f32>()?; // [V]
        Ok(sums.iter().position(|v| !v.is_finite()).map(|i| names[i].clone()))
    }

    /// The learning rate of the variable `name`.
    pub fn lr_of(&self, name: &str) -> Option<f64> {
        self.slots.iter().find(|s| s.name == name).map(|s| s.lr)
    }

    /// The optimiser state, named for a checkpoint.
    ///
    /// # Shapes
    /// - returns: two tensors per variable, E[g²] (`adadelta.sq_grad.NAME`) and E[Δ²]
    ///   (`adadelta.sq_delta.NAME`), each of the variable's own shape (e.g. `[C, 3N]` for a
    ///   corrective basis, `[O, C, k, k]` for a convolution's weights)
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            let (g, d) = state_names(&s.name);
            out.push((g, s.sq_grad.clone())); // same shape as s.var
            out.push((d, s.sq_delta.clone())); // same shape as s.var
        }
        out
    }

    /// Restore the state saved by [`state`](Self::state); every variable must be present.
    ///
    /// # Shapes
    /// - `tensors`: for each variable, both state tensors with exactly the variable's shape (an
    ///   error otherwise); they are moved to the variable's device
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for s in &mut self.slots {
            let (g, d) = state_names(&s.name);
            let get = |n: &str| -> Result<Tensor> {
                let t =
                    tensors.get(n).ok_or_else(|| Error::invalid(format!("checkpoint has no optimiser state {n}")))?;
                if t.dims() != s.var.dims() {
                    return Err(Error::invalid(format!(
                        "optimiser state {n} has shape {:?}, variable has {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                Ok(t.to_device(s.var.device())?) // same shape as s.var
            };
            s.sq_grad = get(&g)?;
            s.sq_delta = get(&d)?;
        }
        Ok(())
    }
}

impl Optimizer for AdaDelta {
    type Config = AdaDeltaConfig;

    fn new(vars: Vec<Var>, cfg: AdaDeltaConfig) -> candle_core::Result<Self> {
        let named = vars.into_iter().enumerate().map(|(i, v)| (format!("var{i}"), v, cfg.lr)).collect();
        AdaDelta::with_groups(named, cfg.rho, cfg.eps).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let (rho, eps) = (self.cfg.rho, self.cfg.eps);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            // A leaf's gradient can still carry a graph (e.g. `delta^T dL/dF` for the corrective
            // bases references the forward pass through delta); the optimiser state must not keep
            // it alive across steps.
            let g = g.detach();
            if let Some((sq_grad, sq_delta)) = fused_cpu_step(s, &g, rho, eps)? {
                s.sq_grad = sq_grad;
                s.sq_delta = sq_delta;
                continue;
            }
            s.sq_grad = ((&s.sq_grad * rho)? + (g.sqr()? * (1.0 - rho))?)?;
            let delta = (((&s.sq_delta + eps)?.sqrt()? / (&s.sq_grad + eps)?.sqrt()?)? * &g)?;
            s.sq_delta = ((&s.sq_delta * rho)? + (delta.sqr()? * (1.0 - rho))?)?;
            s.var.set(&(s.var.as_tensor() - (delta * s.lr)?)?)?;
        }
        Ok(())
    }

    /// The reference group's rate: the encoder / base level's (see `reference`); the
    /// configured rate when there are no variables.
    fn learning_rate(&self) -> f64 {
        self.slots.get(self.reference).map_or(self.cfg.lr, |s| s.lr)
    }

    /// Sets the reference group's rate and scales the others by the same factor (keeping the
    /// paper's ratios between encoder and correctives). When every rate is 0 there is no ratio
    /// to keep and every group gets `lr`.
    fn set_learning_rate(&mut self, lr: f64) {
        let current = self.slots.get(self.reference).map_or(0.0, |s| s.lr);
        for s in &mut self.slots {
            s.lr = if current > 0.0 { s.lr * (lr / current) } else { lr };
        }
        self.cfg.lr = lr;
    }
}

/// The update of one variable in a single pass over its data, on a CPU with f32 tensors (else
/// None: the tensor-op path runs). The tensor ops allocate a new tensor per operation (about ten
/// per variable and step, a visible share of a finetuning step with its large corrective bases);
/// this computes the same f32 operations in the same order (candle's `x * f64` is
/// `x * (f as f32) + 0`, `x + f64` is `x * 1 + (f as f32)`), so results are bit-identical.
/// Returns the new (E[g^2], E[delta^2]) and writes the new weights into the variable.
fn fused_cpu_step(s: &Slot, g: &Tensor, rho: f64, eps: f64) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    use candle_core::DType;
    let w = s.var.as_tensor();
    let all = [w, g, &s.sq_grad, &s.sq_delta];
    if !all.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.dims() == w.dims()) {
        return Ok(None);
    }
    let (g, sg, sd) = (g.contiguous()?, s.sq_grad.contiguous()?, s.sq_delta.contiguous()?);
    let (rho_, one_minus_rho, eps_, lr) = (rho as f32, (1.0 - rho) as f32, eps as f32, s.lr as f32);
    let n = w.elem_count();
    let (mut new_w, mut new_sg, mut new_sd) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    crate::kernel::with_cpu::<f32, _>(&w.contiguous()?, "adadelta", |w| {
        crate::kernel::with_cpu::<f32, _>(&g, "adadelta", |g| {
            crate::kernel::with_cpu::<f32, _>(&sg, "adadelta", |sg| {
                crate::kernel::with_cpu::<f32, _>(&sd, "adadelta", |sd| {
                    use rayon::prelude::*;
                    const CHUNK: usize = 1 << 14;
                    new_w
                        .par_chunks_mut(CHUNK)
                        .zip(new_sg.par_chunks_mut(CHUNK))
                        .zip(new_sd.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(c, ((ow, osg), osd))| {
                            let o = c * CHUNK;
                            for k in 0..ow.len() {
                                let (gi, i) = (g[o + k], o + k);
                                let sq_grad = (sg[i] * rho_ + 0.0) + ((gi * gi) * one_minus_rho + 0.0);
                                let delta = ((sd[i] * 1.0 + eps_).sqrt() / (sq_grad * 1.0 + eps_).sqrt()) * gi;
                                osg[k] = sq_grad;
                                osd[k] = (sd[i] * rho_ + 0.0) + ((delta * delta) * one_minus_rho + 0.0);
                                ow[k] = w[i] - (delta * lr + 0.0);
                            }
                        });
                    Ok(())
                })
            })
        })
    })?;
    let shape = w.shape().clone();
    s.var.set(&Tensor::from_vec(new_w, shape.clone(), w.device())?)?;
    Ok(Some((Tensor::from_vec(new_sg, shape.clone(), w.device())?, Tensor::from_vec(new_sd, shape, w.device())?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn first_step_matches_hand_computation_and_minimises() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[3.0f32, -2.0], &dev).unwrap()).unwrap();
        let mut opt = AdaDelta::with_groups(vec![("x".into(), x.clone(), 1.0)], 0.9, 1e-6).unwrap();
        // loss = sum x^2, g = 2x = (6, -4): E[g^2] = 0.1 g^2, delta = sqrt(1e-6)/sqrt(0.1 g^2 + 1e-6) g.
        let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        let expect = |x0: f64| {
            let g = 2.0 * x0;
            x0 - 1e-3 / (0.1 * g * g + 1e-6f64).sqrt() * g
        };
        assert!((v[0] as f64 - expect(3.0)).abs() < 1e-6, "{v:?}");
        assert!((v[1] as f64 - expect(-2.0)).abs() < 1e-6, "{v:?}");
        for _ in 0..3000 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.backward_step(&loss).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v[0].abs() < 0.1 && v[1].abs() < 0.1, "{v:?}");
    }

    #[test]
    fn state_does_not_keep_the_forward_graph() {
        // d(sum(a * (b * c)))/da = b * c: a gradient that references b and c, both variables.
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[3.0f32, 4.0], &dev).unwrap()).unwrap();
        let mut opt =
            AdaDelta::with_groups(vec![("a".into(), a.clone(), 1.0), ("b".into(), b.clone(), 1.0)], 0.9, 1e-6).unwrap();
        let loss = (a.as_tensor() * (b.as_tensor() * b.as_tensor()).unwrap()).unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
        for (name, t) in opt.state() {
            assert!(!t.track_op(), "{name} keeps a computation graph alive");
        }
    }

    /// The fused CPU update is bit-identical to the tensor-op formulation of the same step
    /// (written out here with tensor ops on the same f32 data).
    #[test]
    fn fused_update_is_bit_identical_to_the_tensor_ops() {
        let dev = Device::Cpu;
        let mut r = crate::rng::Rng::new(3);
        let mut data = |n: usize, s: f64| -> Tensor {
            Tensor::from_vec((0..n).map(|_| (r.normal() * s) as f32).collect::<Vec<_>>(), n, &dev).unwrap()
        };
        let n = 40_000; // several parallel chunks
        let (w0, g, sg0, sd0) =
            (data(n, 1.0), data(n, 0.1), data(n, 0.01).abs().unwrap(), data(n, 1e-4).abs().unwrap());
        let var = Var::from_tensor(&w0).unwrap();
        let (rho, eps, lr) = (0.95, 1e-6, 0.7);
        let slot = Slot { name: "w".into(), var: var.clone(), lr, sq_grad: sg0.clone(), sq_delta: sd0.clone() };
        let (sg, sd) = fused_cpu_step(&slot, &g, rho, eps).unwrap().expect("f32 CPU tensors take the fused path");
        // The tensor-op formulation of `step`.
        let sg_ref = ((&sg0 * rho).unwrap() + (g.sqr().unwrap() * (1.0 - rho)).unwrap()).unwrap();
        let delta =
            (((&sd0 + eps).unwrap().sqrt().unwrap() / (&sg_ref + eps).unwrap().sqrt().unwrap()).unwrap() * &g).unwrap();
        let sd_ref = ((&sd0 * rho).unwrap() + (delta.sqr().unwrap() * (1.0 - rho)).unwrap()).unwrap();
        let w_ref = (&w0 - (delta * lr).unwrap()).unwrap();
        let v = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        assert_eq!(v(&sg), v(&sg_ref));
        assert_eq!(v(&sd), v(&sd_ref));
        assert_eq!(v(var.as_tensor()), v(&w_ref));
        assert_ne!(v(var.as_tensor()), v(&w0));
        // Other dtypes take the tensor-op path.
        let slot64 = Slot {
            name: "w".into(),
            var: Var::from_tensor(&w0.to_dtype(candle_core::DType::F64).unwrap()).unwrap(),
            lr,
            sq_grad: sg0.to_dtype(candle_core::DType::F64).unwrap(),
            sq_delta: sd0.to_dtype(candle_core::DType::F64).unwrap(),
        };
        assert!(fused_cpu_step(&slot64, &g.to_dtype(candle_core::DType::F64).unwrap(), rho, eps).unwrap().is_none());
    }

    #[test]
    fn non_finite_gradients_are_named() {
        let dev = Device::Cpu;
        // f32 takes the parallel CPU scan, f64 the per-variable sums (the GPU's way).
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let var = |v: &[f32]| Var::from_tensor(&Tensor::new(v, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let (a, b) = (var(&[1.0, 2.0]), var(&[3.0]));
            let opt =
                AdaDelta::with_groups(vec![("a".into(), a.clone(), 1.0), ("b".into(), b.clone(), 0.0)], 0.9, 1e-6)
                    .unwrap();
            let grads_of = |k: f32| {
                // d/db (k * b) = k; d/da sum(a) = 1.
                let loss = (a.as_tensor().sum_all().unwrap() + (b.as_tensor() * k as f64).unwrap().sum_all().unwrap())
                    .unwrap();
                loss.backward().unwrap()
            };
            assert_eq!(opt.non_finite_gradient(&grads_of(2.0)).unwrap(), None, "{dtype:?}");
            assert_eq!(opt.non_finite_gradient(&grads_of(f32::INFINITY)).unwrap(), Some("b".to_string()), "{dtype:?}");
            assert_eq!(opt.non_finite_gradient(&grads_of(f32::NAN)).unwrap(), Some("b".to_string()), "{dtype:?}");
        }
    }

    #[test]
    fn the_reported_rate_is_the_encoders() {
        use crate::face_model::multilevel::{GEOMETRY_CORRECTIVES, REFLECTANCE_CORRECTIVES};
        let dev = Device::Cpu;
        let varmap = |names: &[&str]| {
            let vm = candle_nn::VarMap::new();
            for n in names {
                vm.get(1, n, candle_nn::Init::Const(1.0), candle_core::DType::F32, &dev).unwrap();
            }
            vm
        };
        // Finetuning (Sec. 7): the geometry correctives sort first, the log must still read the
        // encoder's rate, and scaling keeps the ratios.
        let vm = varmap(&[GEOMETRY_CORRECTIVES, "encoder.conv1.weight", REFLECTANCE_CORRECTIVES]);
        let cfg = crate::config::OptimConfig { lr_encoder: 0.001, ..Default::default() };
        let mut opt = AdaDelta::for_varmap(&vm, &cfg).unwrap();
        assert_eq!(opt.learning_rate(), 0.001);
        opt.set_learning_rate(0.002);
        assert_eq!(opt.learning_rate(), 0.002);
        assert!((opt.lr_of(GEOMETRY_CORRECTIVES).unwrap() - 0.01).abs() < 1e-12);
        assert!((opt.lr_of(REFLECTANCE_CORRECTIVES).unwrap() - 0.02).abs() < 1e-12);
        // A frozen encoder and geometry basis (configs/truncated-oracle.toml): the reflectance
        // basis is the reference, and the frozen groups stay frozen.
        let cfg = crate::config::OptimConfig { lr_encoder: 0.0, lr_geometry: 0.0, ..Default::default() };
        let mut opt = AdaDelta::for_varmap(&vm, &cfg).unwrap();
        assert_eq!(opt.learning_rate(), 0.01);
        opt.set_learning_rate(0.1);
        assert_eq!(opt.lr_of("encoder.conv1.weight"), Some(0.0));
        assert_eq!(opt.lr_of(GEOMETRY_CORRECTIVES), Some(0.0));
        assert!((opt.lr_of(REFLECTANCE_CORRECTIVES).unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn groups_keep_ratios_and_state_round_trips() {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
        let mut opt =
            AdaDelta::with_groups(vec![("a".into(), a.clone(), 0.001), ("b".into(), b.clone(), 0.005)], 0.95, 1e-6)
                .unwrap();
        opt.set_learning_rate(0.002);
        assert!((opt.lr_of("b").unwrap() - 0.01).abs() < 1e-12);
        let loss = (a.as_tensor() * b.as_tensor()).unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
        let state: HashMap<String, Tensor> = opt.state().into_iter().collect();
        let mut other =
            AdaDelta::with_groups(vec![("a".into(), a.clone(), 0.001), ("b".into(), b.clone(), 0.005)], 0.95, 1e-6)
                .unwrap();
        other.load_state(&state).unwrap();
        let back: HashMap<String, Tensor> = other.state().into_iter().collect();
        for (k, v) in &state {
            assert_eq!(v.to_vec1::<f32>().unwrap(), back[k].to_vec1::<f32>().unwrap());
        }
        assert!(other.load_state(&HashMap::new()).is_err());
    }
}
