//! The parameter record of one reconstruction (`--params out.json`): every regressed parameter
//! with its units and conventions, the crop it came from, and both cameras.

use super::reconstruct::{CropMethod, Frame, Level};
use crate::render::camera::Intrinsics;
use crate::render::sh;
use serde::{Deserialize, Serialize};

/// Everything known about one reconstruction, serialised as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamRecord {
    /// [`ParamRecord::FORMAT`].
    pub format: String,
    /// The input image (path or name).
    pub input: String,
    /// The run or checkpoint the network was loaded from, its stage and step.
    pub checkpoint: String,
    pub checkpoint_stage: String,
    pub checkpoint_step: u64,
    pub model: ModelInfo,
    /// Level of the written mesh and of the overlay.
    pub level: Level,
    /// Frame of the written mesh's vertices.
    pub mesh_frame: Frame,
    /// "reflectance" or "shaded".
    pub mesh_colours: String,
    /// Source image `[width, height]`, pixels.
    pub image_size: [u32; 2],
    pub crop: CropRecord,
    /// Camera of the `size x size` crop the network saw (principal point at its centre).
    pub crop_camera: CameraRecord,
    /// The same camera expressed in source-image pixels (see [`super::overlay::SourceCamera`]).
    pub source_camera: CameraRecord,
    pub pose: PoseRecord,
    /// Identity (K_s), expression (K_e) and reflectance (K_r) coefficients of the base model.
    pub shape: Coefficients,
    pub expression: Coefficients,
    pub reflectance: Coefficients,
    pub illumination: Illumination,
    /// Corrective coefficients (eqs. 1-2); `null` for a base-only checkpoint.
    pub correctives: Option<CorrectiveRecord>,
    /// The 68 iBUG landmarks of the reconstruction (at the record's level) projected into the
    /// source image, continuous pixel coordinates; `null` for a point behind the near plane.
    pub landmarks: Vec<Option<[f32; 2]>>,
}

impl ParamRecord {
    /// Format tag written into every record.
    pub const FORMAT: &'static str = "fml-reconstruction/1";
}

/// The face model the network regresses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub vertices: usize,
    pub triangles: usize,
}

/// The square crop box in source pixels: columns `x0 .. x0 + side`, rows `y0 .. y0 + side`
/// (it may reach outside the image; those pixels were edge-padded), resized to `size x size`.
/// A source point `(u, v)` lies at `((u - x0) * scale, (v - y0) * scale)` in the crop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropRecord {
    pub method: CropMethod,
    pub x0: i64,
    pub y0: i64,
    pub side: i64,
    pub size: usize,
    /// `size / side`.
    pub scale: f64,
}

/// Pinhole camera: `u = cx + focal * x / (-z)`, `v = cy - focal * y / (-z)` for a camera-space
/// point (docs/conventions.md), pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraRecord {
    pub focal_px: f32,
    pub cx: f32,
    pub cy: f32,
    pub width: usize,
    pub height: usize,
    pub near_mm: f32,
}

impl CameraRecord {
    /// A camera with its principal point at the image centre.
    pub fn centred(k: &Intrinsics) -> Self {
        let [cx, cy] = k.centre();
        CameraRecord { focal_px: k.focal, cx, cy, width: k.width, height: k.height, near_mm: k.near }
    }
}

/// Rigid pose `v_cam = R v + t` (model frame to camera frame, mm).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoseRecord {
    /// How `rotation_matrix` is built from the angles.
    pub convention: String,
    /// (pitch, yaw, roll), radians and degrees.
    pub euler_rad: [f32; 3],
    pub euler_deg: [f32; 3],
    /// Row-major R.
    pub rotation_matrix: [[f32; 3]; 3],
    /// t, mm (a face in front of the camera has t_z < 0).
    pub translation_mm: [f32; 3],
}

impl PoseRecord {
    pub fn new(euler: [f32; 3], r: &[[f32; 3]; 3], t: [f32; 3]) -> Self {
        PoseRecord {
            convention: "R = Rz(roll) * Ry(yaw) * Rx(pitch), angles (pitch, yaw, roll); v_cam = R v + t".into(),
            euler_rad: euler,
            euler_deg: euler.map(f32::to_degrees),
            rotation_matrix: *r,
            translation_mm: t,
        }
    }
}

/// Base-model coefficients: the network's z-scores and the model-unit coefficients
/// `value = z * std` (the factors of the model's unnormalised basis).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coefficients {
    pub z: Vec<f32>,
    pub value: Vec<f32>,
}

/// Spherical-harmonics illumination (eq. 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Illumination {
    /// How `gamma` is laid out.
    pub layout: String,
    /// 27 coefficients, channel-major: `gamma[c * 9 + b]`.
    pub gamma: Vec<f32>,
}

impl Illumination {
    pub fn new(gamma: &[f32]) -> Self {
        debug_assert_eq!(gamma.len(), sh::NUM_COEFFS);
        Illumination {
            layout: "channel-major gamma[c*9+b], c = R, G, B; b = 0..8 over H0 = 0.282095, H1 = 0.488603 y, \
                     H2 = 0.488603 z, H3 = 0.488603 x, H4 = 1.092548 xy, H5 = 1.092548 yz, \
                     H6 = 0.315392 (3z^2 - 1), H7 = 1.092548 xz, H8 = 0.546274 (x^2 - y^2) of the camera-space \
                     unit normal; colour = reflectance * sum_b gamma_b H_b(n)"
                .into(),
            gamma: gamma.to_vec(),
        }
    }
}

/// Learned corrective coefficients (C each).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrectiveRecord {
    pub geometry: Vec<f32>,
    pub reflectance: Vec<f32>,
}
