//! The semantic split of the encoder's output vector x (Sec. 5): base-model coefficients,
//! illumination, pose and corrective coefficients, with the offsets and scales that make a zero
//! output mean "mean face, frontal pose at the default distance, neutral light".

/// Output scales (a config section, hence defined in `config`).
pub use crate::config::ParamScales;
use crate::error::{Error, Result};
use crate::render::sh;
use candle_core::{Device, Tensor};

/// Sizes and offsets of the parameter vector.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub shape: usize,
    pub expr: usize,
    pub albedo: usize,
    /// C: corrective coefficients per kind (0 = base level only).
    pub correctives: usize,
    pub scales: ParamScales,
    /// Translation at zero output: the face centred `distance` mm in front of the camera.
    pub default_translation: [f32; 3],
}

/// The decoded parameters of a batch.
#[derive(Clone, Debug)]
pub struct Params {
    /// `[B, K_s]`, `[B, K_e]`, `[B, K_r]` z-scores of the base model.
    pub z_shape: Tensor,
    pub z_expr: Tensor,
    pub z_albedo: Tensor,
    /// `[B, 27]` SH coefficients (channel-major).
    pub gamma: Tensor,
    /// `[B, 3]` Euler angles (pitch, yaw, roll), radians.
    pub rotation: Tensor,
    /// `[B, 3]` translation, mm.
    pub translation: Tensor,
    /// `[B, C]` corrective coefficients (None when C = 0).
    pub corr_geometry: Option<Tensor>,
    pub corr_reflectance: Option<Tensor>,
}

/// Number of SH, rotation and translation outputs.
pub const FIXED: usize = sh::NUM_COEFFS + 3 + 3;

impl ParamLayout {
    /// Total number of encoder outputs: K_s + K_e + K_r + 27 + 3 + 3 + 2C
    /// (257 + 2C with the paper's 80/64/80 model).
    pub fn num_outputs(&self) -> usize {
        self.shape + self.expr + self.albedo + FIXED + 2 * self.correctives
    }

    /// Decode raw outputs.
    ///
    /// # Shapes
    /// - `x`: `[B, num_outputs]`
    /// - returns: [`Params`] of `[B, K_s]`, `[B, K_e]`, `[B, K_r]`, `[B, 27]` (gamma), `[B, 3]`
    ///   (rotation), `[B, 3]` (translation) and, when C > 0, `[B, C]` twice
    pub fn split(&self, x: &Tensor) -> Result<Params> {
        let (b, p) = x.dims2()?;
        if p != self.num_outputs() {
            return Err(Error::invalid(format!(
                "parameter vector has {p} values, the layout needs {}",
                self.num_outputs()
            )));
        }
        let dev = x.device();
        let mut off = 0;
        let mut take = |n: usize| -> Result<Tensor> {
            let t = x.narrow(1, off, n)?; // [B, n]
            off += n;
            Ok(t)
        };
        let z_shape = take(self.shape)?; // [B, K_s]
        let z_expr = take(self.expr)?; // [B, K_e]
        let z_albedo = take(self.albedo)?; // [B, K_r]
        let neutral = Tensor::from_slice(&sh::neutral(), (1, sh::NUM_COEFFS), dev)?; // [1, 27]
        let gamma = (take(sh::NUM_COEFFS)? * self.scales.light as f64)?.broadcast_add(&neutral)?; // [B, 27]
        let rotation = (take(3)? * self.scales.rotation as f64)?; // [B, 3]
        let ts = Tensor::from_slice(&self.scales.translation, (1, 3), dev)?; // [1, 3]
        let t0 = Tensor::from_slice(&self.default_translation, (1, 3), dev)?; // [1, 3]
        let translation = take(3)?.broadcast_mul(&ts)?.broadcast_add(&t0)?; // [B, 3]
        let (corr_geometry, corr_reflectance) = if self.correctives > 0 {
            (Some(take(self.correctives)?), Some(take(self.correctives)?)) // [B, C] each
        } else {
            (None, None)
        };
        debug_assert_eq!(off, p);
        let _ = b;
        Ok(Params { z_shape, z_expr, z_albedo, gamma, rotation, translation, corr_geometry, corr_reflectance })
    }

    /// Raw outputs that decode to the given parameters (the inverse of [`split`](Self::split));
    /// used by tests and by synthetic-data checks.
    ///
    /// # Shapes
    /// - `p`: as [`split`](Self::split) returns them (`[B, K_s]`, `[B, K_e]`, `[B, K_r]`,
    ///   `[B, 27]`, `[B, 3]`, `[B, 3]`, and `[B, C]` twice or none)
    /// - returns: `[B, num_outputs]` (the correctives' `2C` columns only when `p` has them)
    pub fn encode(&self, p: &Params, device: &Device) -> Result<Tensor> {
        let neutral = Tensor::from_slice(&sh::neutral(), (1, sh::NUM_COEFFS), device)?; // [1, 27]
        let ts = Tensor::from_slice(&self.scales.translation, (1, 3), device)?; // [1, 3]
        let t0 = Tensor::from_slice(&self.default_translation, (1, 3), device)?; // [1, 3]
        let mut parts = vec![
            p.z_shape.clone(),                                              // [B, K_s]
            p.z_expr.clone(),                                               // [B, K_e]
            p.z_albedo.clone(),                                             // [B, K_r]
            (p.gamma.broadcast_sub(&neutral)? / self.scales.light as f64)?, // [B, 27]
            (&p.rotation / self.scales.rotation as f64)?,                   // [B, 3]
            p.translation.broadcast_sub(&t0)?.broadcast_div(&ts)?,          // [B, 3]
        ];
        if let (Some(g), Some(r)) = (&p.corr_geometry, &p.corr_reflectance) {
            parts.push(g.clone()); // [B, C]
            parts.push(r.clone()); // [B, C]
        }
        Ok(Tensor::cat(&parts, 1)?) // [B, K_s + K_e + K_r + 27 + 3 + 3 (+ 2C)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn zero_output_is_mean_face_frontal_neutral_light() {
        let layout = ParamLayout {
            shape: 80,
            expr: 64,
            albedo: 80,
            correctives: 0,
            scales: ParamScales::default(),
            default_translation: [0.0, 0.0, -900.0],
        };
        assert_eq!(layout.num_outputs(), 257);
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 257), DType::F32, &dev).unwrap();
        let p = layout.split(&x).unwrap();
        assert_eq!(p.translation.to_vec2::<f32>().unwrap()[1], vec![0.0, 0.0, -900.0]);
        assert_eq!(p.gamma.to_vec2::<f32>().unwrap()[0][0], 1.0 / sh::C0);
        assert_eq!(p.rotation.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let with_c = ParamLayout { correctives: 500, ..layout };
        assert_eq!(with_c.num_outputs(), 257 + 1000);
    }

    #[test]
    fn encode_inverts_split() {
        let layout = ParamLayout {
            shape: 3,
            expr: 2,
            albedo: 4,
            correctives: 5,
            scales: ParamScales::default(),
            default_translation: [1.0, 2.0, -500.0],
        };
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (3, layout.num_outputs()), &dev).unwrap();
        let back = layout.encode(&layout.split(&x).unwrap(), &dev).unwrap();
        let err =
            (back - &x).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4, "{err}");
    }
}
