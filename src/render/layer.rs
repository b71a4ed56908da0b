//! The differentiable point-based image formation layer (Sec. 5): rigid transform and full
//! perspective camera, camera-space normals, SH shading, back-face visibility, bilinear image
//! sampling at the projected vertices, and the photometric term (eq. 9).

use super::camera::{Intrinsics, euler_to_matrix_tensor, rigid_transform};
use super::{ops, reference};
use crate::error::Result;
use crate::face_model::FaceModel;
use crate::face_model::topology::TopologyTensors;
use candle_core::{D, Device, Tensor};

/// Which implementation runs (a config choice, hence defined in `config`).
pub use crate::config::Backend;

/// The inputs of one rendering of a batch.
pub struct RenderInput<'a> {
    /// `[B, N, 3]` model-frame geometry (either level).
    pub vertices: &'a Tensor,
    /// `[B, N, 3]` reflectance.
    pub reflectance: &'a Tensor,
    /// `[B, 3]` Euler angles (pitch, yaw, roll).
    pub rotation: &'a Tensor,
    /// `[B, 3]` translation, mm.
    pub translation: &'a Tensor,
    /// `[B, 27]` SH coefficients.
    pub gamma: &'a Tensor,
    /// `[B, H, W, 3]` input images in [0, 1].
    pub image: &'a Tensor,
}

/// What the layer produces for a batch.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// `[B, N, 3]` camera-space positions v̂_i.
    pub camera_vertices: Tensor,
    /// `[B, N, 3]` camera-space unit normals n̂_i.
    pub normals: Tensor,
    /// `[B, N, 3]` shaded colours c_i.
    pub shaded: Tensor,
    /// `[B, N, 3]` the image sampled at u_i.
    pub sampled: Tensor,
    /// `[B, N]` visibility (0/1, outside the autograd graph).
    pub visible: Tensor,
}

/// The image formation layer for one face model and camera.
#[derive(Clone, Debug)]
pub struct ImageFormation {
    pub intrinsics: Intrinsics,
    pub backend: Backend,
    topo_ref: TopologyTensors,
    topo_fast: ops::normals::NormalsTopology,
    /// `[1, N]` 1 for vertices of the model's face region, which alone enter the photometric term.
    region: Tensor,
}

impl ImageFormation {
    pub fn new(model: &FaceModel, intrinsics: Intrinsics, backend: Backend, device: &Device) -> Result<Self> {
        let n = model.num_vertices();
        let mut region = vec![0f32; n];
        for &i in &model.face_region {
            region[i as usize] = 1.0;
        }
        Ok(ImageFormation {
            intrinsics,
            backend,
            topo_ref: TopologyTensors::new(n, &model.triangles, device)?,
            topo_fast: ops::normals::NormalsTopology::new(n, &model.triangles, device)?,
            region: Tensor::from_vec(region, (1, n), device)?,
        })
    }

    /// Camera-space positions `R v + t`.
    ///
    /// # Shapes
    /// `vertices [B, N, 3]`, `rotation [B, 3]` (Euler), `translation [B, 3]` -> `[B, N, 3]`.
    pub fn to_camera(&self, vertices: &Tensor, rotation: &Tensor, translation: &Tensor) -> Result<Tensor> {
        let r = euler_to_matrix_tensor(rotation)?; // [B, 3] -> [B, 3, 3]
        Ok(rigid_transform(vertices, &r, translation)?) // [B, N, 3]
    }

    /// Differentiable pixel positions of camera-space points.
    ///
    /// # Shapes
    /// `[B, K, 3]` -> `[B, K, 2]`.
    pub fn project(&self, camera_points: &Tensor) -> Result<Tensor> {
        Ok(reference::project(camera_points, &self.intrinsics)?)
    }

    /// Unit camera-space normals (area-weighted over the incident triangles).
    ///
    /// # Shapes
    /// - `camera_vertices`: `[B, N, 3]`
    /// - returns: `[B, N, 3]`
    pub fn normals(&self, camera_vertices: &Tensor) -> Result<Tensor> {
        Ok(match self.backend {
            Backend::Reference => reference::normals(camera_vertices, &self.topo_ref)?,
            Backend::Fast => ops::normals::vertex_normals(camera_vertices, &self.topo_fast)?,
        })
    }

    /// Visibility (Sec. 6.1): facing the camera (back-face culling), sampleable, in the face
    /// region. Not differentiated.
    ///
    /// # Shapes
    /// `camera_vertices`, `normals`: `[B, N, 3]` -> `[B, N]`.
    pub fn visibility(&self, camera_vertices: &Tensor, normals: &Tensor) -> Result<Tensor> {
        let v = camera_vertices.detach();
        // "Not back-facing" rather than "facing": NaN normals stay visible so that a NaN reaches
        // the loss (see `render`).
        let facing = (normals.detach() * v.neg()?)?.sum(D::Minus1)?.le(0.0)?.eq(0.0)?.to_dtype(v.dtype())?; // [B, N]
        let m = (facing * reference::sampleable(&v, &self.intrinsics)?)?; // [B, N]
        Ok(m.broadcast_mul(&self.region.to_dtype(v.dtype())?)?) // [B, N] * [1, N] -> [B, N]
    }

    /// Render a batch: the full layer of Sec. 5.
    ///
    /// # Shapes
    /// - `input`: see [`RenderInput`] (`[B, N, 3]` geometry and reflectance, `[B, 3]` pose,
    ///   `[B, 27]` light, `[B, H, W, 3]` images)
    /// - returns: [`Rendered`] (`[B, N, 3]` positions, normals, shaded and sampled colours;
    ///   `[B, N]` visibility)
    ///
    /// Non-finite inputs are never masked away: visibility treats NaN as visible, so a NaN or
    /// infinite parameter makes the photometric loss NaN (not a silent zero), which the trainer
    /// reports as an error naming the step. No device-to-host synchronisation happens here.
    pub fn render(&self, input: &RenderInput) -> Result<Rendered> {
        let camera_vertices = self.to_camera(input.vertices, input.rotation, input.translation)?;
        let normals = self.normals(&camera_vertices)?;
        let (shaded, sampled) = match self.backend {
            Backend::Reference => (
                reference::shade(&normals, input.reflectance, input.gamma)?,
                reference::sample(&camera_vertices, input.image, &self.intrinsics)?,
            ),
            Backend::Fast => (
                ops::shade::shade(&normals, input.reflectance, input.gamma)?,
                ops::sample::project_and_sample(&camera_vertices, input.image, &self.intrinsics)?,
            ),
        };
        let visible = self.visibility(&camera_vertices, &normals)?;
        Ok(Rendered { camera_vertices, normals, shaded, sampled, visible })
    }

    /// The photometric term of eq. 9 per image.
    ///
    /// An image with no visible vertex contributes 0 (documented behaviour for "everything
    /// culled"); callers can detect it from `visible`. A non-finite shaded colour anywhere in an
    /// image, visible or not, makes its loss NaN on both backends.
    ///
    /// # Shapes
    /// - `r`: a [`Rendered`] batch (`sampled`, `shaded` `[B, N, 3]`, `visible` `[B, N]`)
    /// - returns: `[B]`
    pub fn photometric(&self, r: &Rendered) -> Result<Tensor> {
        let loss = match self.backend {
            Backend::Reference => reference::photometric_l21(&r.sampled, &r.shaded, &r.visible)?,
            Backend::Fast => ops::photo::photometric_l21(&r.sampled, &r.shaded, &r.visible)?,
        }; // [B]
        // The fast op skips masked-out vertices (their colours never reach the sum), so a
        // non-finite parameter that also culls every vertex (a translation of +Inf: the face
        // lies beyond the near plane, with NaN normals and shading) would give a loss of 0
        // there, where the reference gives NaN (its norm * mask is 0 x NaN). Every shaded colour
        // depends on the pose, geometry, reflectance and light, so adding 0 x (its per-image
        // sum) carries any NaN or infinity into the loss and changes nothing else: the value
        // adds 0 and the gradient of this term is 0. No host synchronisation.
        let guard = (r.shaded.sum((1, 2))?.detach() * 0.0)?; // [B]
        Ok((loss + guard)?)
    }
}
