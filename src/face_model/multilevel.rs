//! The multi-level face model of Sec. 4 as candle tensors: the affine base level (eqs. 3-4) and
//! the learned linear correctives F_g, F_r (eqs. 1-2), evaluated in batches so that gradients
//! flow to the coefficients and to the corrective bases.
//!
//! Base coefficients are taken in units of their prior std (z-scores): the bases are stored
//! pre-multiplied by std, so `E_std` (eq. 11) is a plain sum of squares and the encoder's outputs
//! are well scaled for every model.

use super::FaceModel;
use crate::error::Result;
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

/// Weight names of the corrective bases in a run's `VarMap` (and checkpoints).
pub const GEOMETRY_CORRECTIVES: &str = "correctives.geometry";
pub const REFLECTANCE_CORRECTIVES: &str = "correctives.reflectance";

/// The static base level as tensors on a device.
#[derive(Clone, Debug)]
pub struct BaseLevel {
    /// `[1, 3N]`
    pub mean_shape: Tensor,
    /// `[K_s, 3N]`, multiplied by `shape_std`.
    pub shape_basis: Tensor,
    /// `[K_e, 3N]`, multiplied by `expr_std`.
    pub expr_basis: Tensor,
    /// `[1, 3N]`
    pub mean_albedo: Tensor,
    /// `[K_r, 3N]`, multiplied by `albedo_std`.
    pub albedo_basis: Tensor,
    pub num_vertices: usize,
}

fn scaled_basis(basis: &[f32], std: &[f32], n3: usize, device: &Device) -> candle_core::Result<Tensor> {
    let k = std.len();
    let mut v = basis.to_vec();
    for (m, s) in std.iter().enumerate() {
        for x in &mut v[m * n3..(m + 1) * n3] {
            *x *= s;
        }
    }
    // A model may have no modes of a kind (BFM 2009: no expressions); keep a [0, 3N] tensor.
    Tensor::from_vec(v, (k, n3), device)
}

impl BaseLevel {
    /// Upload `model`'s base level to `device`.
    pub fn new(model: &FaceModel, device: &Device) -> Result<Self> {
        let n = model.num_vertices();
        let n3 = n * 3;
        Ok(BaseLevel {
            mean_shape: Tensor::from_vec(model.mean_shape.clone(), (1, n3), device)?,
            shape_basis: scaled_basis(&model.shape_basis, &model.shape_std, n3, device)?,
            expr_basis: scaled_basis(&model.expr_basis, &model.expr_std, n3, device)?,
            mean_albedo: Tensor::from_vec(model.mean_albedo.clone(), (1, n3), device)?,
            albedo_basis: scaled_basis(&model.albedo_basis, &model.albedo_std, n3, device)?,
            num_vertices: n,
        })
    }

    /// Base geometry v^b (eq. 3).
    ///
    /// # Shapes
    /// `z_shape`: `[B, K_s]`, `z_expr`: `[B, K_e]` (z-scores) -> `[B, N, 3]`.
    pub fn geometry(&self, z_shape: &Tensor, z_expr: &Tensor) -> Result<Tensor> {
        let b = z_shape.dim(0)?;
        let mut g = self.mean_shape.broadcast_as((b, self.num_vertices * 3))?.contiguous()?; // [B, 3N]
        if self.shape_basis.dim(0)? > 0 {
            g = (g + z_shape.matmul(&self.shape_basis)?)?; // [B, K_s] x [K_s, 3N] -> [B, 3N]
        }
        if self.expr_basis.dim(0)? > 0 {
            g = (g + z_expr.matmul(&self.expr_basis)?)?; // [B, K_e] x [K_e, 3N] -> [B, 3N]
        }
        Ok(g.reshape((b, self.num_vertices, 3))?) // [B, N, 3]
    }

    /// Base reflectance r^b (eq. 4).
    ///
    /// # Shapes
    /// `z_albedo`: `[B, K_r]` -> `[B, N, 3]`.
    pub fn reflectance(&self, z_albedo: &Tensor) -> Result<Tensor> {
        let b = z_albedo.dim(0)?;
        let mut r = self.mean_albedo.broadcast_as((b, self.num_vertices * 3))?.contiguous()?; // [B, 3N]
        if self.albedo_basis.dim(0)? > 0 {
            r = (r + z_albedo.matmul(&self.albedo_basis)?)?; // [B, K_r] x [K_r, 3N] -> [B, 3N]
        }
        Ok(r.reshape((b, self.num_vertices, 3))?) // [B, N, 3]
    }
}

/// The learned linear corrective bases (Sec. 4.2): `F(delta | Theta) = delta Theta`.
#[derive(Clone, Debug)]
pub struct Correctives {
    /// `[C, 3N]` geometry corrective basis Theta_g, in units of `scale.0` mm per unit coefficient.
    pub geometry: Var,
    /// `[C, 3N]` reflectance corrective basis Theta_r.
    pub reflectance: Var,
    pub num_vertices: usize,
    /// Units of the stored bases: `F_g = scale.0 * delta Theta_g`, `F_r = scale.1 * delta Theta_r`.
    /// A reparametrisation only (the model is the same linear map); it sets how far one optimiser
    /// step moves the correction (see `CorrectiveConfig::scale`).
    pub scale: (f32, f32),
    /// Evaluate with detached bases (inference): no autograd graph is recorded.
    detached: bool,
}

impl Correctives {
    /// Create (or fetch, when already present, e.g. loaded from a checkpoint) the corrective bases
    /// in `varmap`. New bases are N(0, init_std^2) (seeded); the default `init_std` is [0, 0]
    /// (`CorrectiveConfig`), so they start at zero and the correction is exactly zero at the start
    /// of finetuning. The encoder's corrective-coefficient outputs start small and random instead
    /// (`CorrectiveConfig::head_std`, default 0.01), so both the coefficients and the bases
    /// receive gradients (a zero basis and zero coefficients would never move).
    ///
    /// # Shapes
    /// Creates or checks `geometry` and `reflectance`: `[C, 3N]` each (`C = c`, `N = num_vertices`).
    pub fn in_varmap(
        varmap: &VarMap,
        c: usize,
        num_vertices: usize,
        init_std: (f32, f32),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let n3 = num_vertices * 3;
        let mut rng = Rng::new(seed ^ 0xC0_88EC_71FE);
        let mut get = |name: &str, std: f32| -> Result<Var> {
            let mut data = varmap.data().lock().expect("varmap lock");
            if let Some(v) = data.get(name) {
                if v.dims() != [c, n3] {
                    return Err(crate::error::Error::invalid(format!(
                        "{name} has shape {:?}, expected [{c}, {n3}] (corrective count or vertex count differ)",
                        v.dims()
                    )));
                }
                return Ok(v.clone());
            }
            let init: Vec<f32> = (0..c * n3).map(|_| rng.normal() as f32 * std).collect();
            let var = Var::from_tensor(&Tensor::from_vec(init, (c, n3), device)?)?; // [C, 3N]
            data.insert(name.to_string(), var.clone());
            Ok(var)
        };
        let geometry = get(GEOMETRY_CORRECTIVES, init_std.0)?;
        let reflectance = get(REFLECTANCE_CORRECTIVES, init_std.1)?;
        Ok(Correctives { geometry, reflectance, num_vertices, scale: (1.0, 1.0), detached: false })
    }

    /// The same correctives evaluated through detached views of the bases (shared storage, no
    /// copy): for inference, where no gradient is wanted and the graph would only keep every
    /// intermediate of the forward pass alive.
    pub fn detached(&self) -> Self {
        Correctives { detached: true, ..self.clone() }
    }

    /// Whether evaluations record an autograd graph through the bases.
    pub fn tracks_gradients(&self) -> bool {
        !self.detached
    }

    /// `[C, 3N]` bases as evaluated (detached views for inference): (geometry, reflectance).
    fn bases(&self) -> (Tensor, Tensor) {
        let (g, r) = (self.geometry.as_tensor(), self.reflectance.as_tensor());
        if self.detached { (g.detach(), r.detach()) } else { (g.clone(), r.clone()) }
    }

    /// Geometry correction F_g (eq. 1).
    ///
    /// # Shapes
    /// `coeffs`: `[B, C]` -> `[B, N, 3]`.
    pub fn geometry_offset(&self, coeffs: &Tensor) -> Result<Tensor> {
        let b = coeffs.dim(0)?;
        let f = coeffs.matmul(&self.bases().0)?; // [B, C] x [C, 3N] -> [B, 3N]
        let f = if self.scale.0 == 1.0 { f } else { (f * self.scale.0 as f64)? };
        Ok(f.reshape((b, self.num_vertices, 3))?) // [B, N, 3]
    }

    /// Reflectance correction F_r (eq. 2).
    ///
    /// # Shapes
    /// `coeffs`: `[B, C]` -> `[B, N, 3]`.
    pub fn reflectance_offset(&self, coeffs: &Tensor) -> Result<Tensor> {
        let b = coeffs.dim(0)?;
        let f = coeffs.matmul(&self.bases().1)?; // [B, C] x [C, 3N] -> [B, 3N]
        let f = if self.scale.1 == 1.0 { f } else { (f * self.scale.1 as f64)? };
        Ok(f.reshape((b, self.num_vertices, 3))?) // [B, N, 3]
    }
}

/// Both levels of one batch.
#[derive(Clone, Debug)]
pub struct Levels {
    /// `[B, N, 3]` base geometry v^b and reflectance r^b.
    pub base_geometry: Tensor,
    pub base_reflectance: Tensor,
    /// `[B, N, 3]` correctives F_g, F_r (None without correctives: final = base).
    pub geometry_offset: Option<Tensor>,
    pub reflectance_offset: Option<Tensor>,
}

impl Levels {
    /// Final geometry v^f = v^b + F_g (eq. 1).
    ///
    /// # Shapes
    /// - `base_geometry`, `geometry_offset`: `[B, N, 3]`
    /// - returns: `[B, N, 3]` (the base geometry itself without correctives)
    pub fn final_geometry(&self) -> Result<Tensor> {
        Ok(match &self.geometry_offset {
            Some(o) => (&self.base_geometry + o)?,
            None => self.base_geometry.clone(),
        })
    }
    /// Final reflectance r^f = r^b + F_r (eq. 2).
    ///
    /// # Shapes
    /// - `base_reflectance`, `reflectance_offset`: `[B, N, 3]`
    /// - returns: `[B, N, 3]` (the base reflectance itself without correctives)
    pub fn final_reflectance(&self) -> Result<Tensor> {
        Ok(match &self.reflectance_offset {
            Some(o) => (&self.base_reflectance + o)?,
            None => self.base_reflectance.clone(),
        })
    }
}

/// Base level plus optional correctives: the paper's multi-level model.
#[derive(Clone, Debug)]
pub struct MultiLevelModel {
    pub base: BaseLevel,
    pub correctives: Option<Correctives>,
}

impl MultiLevelModel {
    /// Evaluate both levels.
    ///
    /// # Shapes
    /// `z_shape [B, K_s]`, `z_expr [B, K_e]`, `z_albedo [B, K_r]`, `corr [B, C]` each ->
    /// [`Levels`] of `[B, N, 3]` tensors.
    pub fn evaluate(
        &self,
        z_shape: &Tensor,
        z_expr: &Tensor,
        z_albedo: &Tensor,
        corr_geo: Option<&Tensor>,
        corr_refl: Option<&Tensor>,
    ) -> Result<Levels> {
        let base_geometry = self.base.geometry(z_shape, z_expr)?;
        let base_reflectance = self.base.reflectance(z_albedo)?;
        let (geometry_offset, reflectance_offset) = match (&self.correctives, corr_geo, corr_refl) {
            (Some(c), Some(g), Some(r)) => (Some(c.geometry_offset(g)?), Some(c.reflectance_offset(r)?)),
            _ => (None, None),
        };
        Ok(Levels { base_geometry, base_reflectance, geometry_offset, reflectance_offset })
    }
}

/// Convenience: a `[B, K]` zero tensor.
///
/// # Shapes
/// - returns: `[b, k]` f32 zeros (e.g. coefficients of the mean face)
pub fn zeros(b: usize, k: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::zeros((b, k), DType::F32, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face_model::FaceModel;
    use std::collections::BTreeMap;

    /// Two vertices, one identity mode, one expression mode, one albedo mode.
    fn tiny() -> FaceModel {
        FaceModel {
            mean_shape: vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            shape_basis: vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0],
            shape_std: vec![2.0],
            expr_basis: vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            expr_std: vec![1.0],
            mean_albedo: vec![0.5; 9],
            albedo_basis: vec![0.1, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.1],
            albedo_std: vec![1.0],
            triangles: vec![[0, 1, 2]],
            landmarks: vec![0; 68],
            contour_right: vec![0],
            contour_left: vec![1],
            skin_mask: vec![0, 1],
            face_region: vec![0, 1, 2],
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn corrective_evaluation_matches_hand_computation() {
        let dev = Device::Cpu;
        let m = tiny();
        let base = BaseLevel::new(&m, &dev).unwrap();
        let varmap = VarMap::new();
        let corr = Correctives::in_varmap(&varmap, 2, 3, (0.0, 0.0), 1, &dev).unwrap();
        // Theta_g rows: e_x on vertex 0, e_z on vertex 2.
        let mut g = vec![0.0f32; 2 * 9];
        g[0] = 1.0;
        g[9 + 8] = 1.0;
        corr.geometry.set(&Tensor::from_vec(g, (2, 9), &dev).unwrap()).unwrap();
        let model = MultiLevelModel { base, correctives: Some(corr) };
        let zs = Tensor::new(&[[0.5f32]], &dev).unwrap(); // alpha = std * z = 1
        let ze = Tensor::new(&[[3.0f32]], &dev).unwrap();
        let za = Tensor::new(&[[1.0f32]], &dev).unwrap();
        let cg = Tensor::new(&[[2.0f32, -1.0]], &dev).unwrap();
        let cr = Tensor::new(&[[0.0f32, 0.0]], &dev).unwrap();
        let lv = model.evaluate(&zs, &ze, &za, Some(&cg), Some(&cr)).unwrap();
        let v = lv.final_geometry().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // vertex 0: mean 0 + alpha*1 (x) + delta*1 (y) + 2 (x) = (3, 3, 0)
        // vertex 2: (0,1,0) + alpha*2 (z) - 1 (z) = (0, 1, 1)
        assert_eq!(v, vec![3.0, 3.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        let r = lv.final_reflectance().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(r, vec![0.6, 0.5, 0.5, 0.5, 0.6, 0.5, 0.5, 0.5, 0.6]);
        // CPU evaluation agrees with the tensor path on the base level.
        let cpu = m.geometry(&[1.0], &[3.0]);
        assert_eq!(cpu[0], [1.0, 3.0, 0.0]);
    }

    #[test]
    fn gradients_reach_coefficients_and_bases() {
        let dev = Device::Cpu;
        let m = tiny();
        let base = BaseLevel::new(&m, &dev).unwrap();
        let varmap = VarMap::new();
        let corr = Correctives::in_varmap(&varmap, 4, 3, (0.01, 0.01), 7, &dev).unwrap();
        let model = MultiLevelModel { base, correctives: Some(corr.clone()) };
        let cg = Var::from_tensor(&Tensor::zeros((1, 4), DType::F32, &dev).unwrap()).unwrap();
        let z = Tensor::zeros((1, 1), DType::F32, &dev).unwrap();
        let lv = model
            .evaluate(&z, &z, &z, Some(cg.as_tensor()), Some(&Tensor::zeros((1, 4), DType::F32, &dev).unwrap()))
            .unwrap();
        let loss = lv.final_geometry().unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gc = grads.get(cg.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(gc > 0.0, "coefficient gradient is zero");
        assert!(grads.get(corr.geometry.as_tensor()).is_some());
    }
}
