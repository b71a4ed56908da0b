//! `fml synth`: renders labelled synthetic face data sets from a "world" face model (the demo
//! model or any native model file). It sits outside the training pipeline and produces images,
//! iBUG-68 `.pts` landmarks, ground-truth meshes and full parameter records.
//!
//! Determinism: image `i` draws its scene (expression, pose, camera, light, background, noise)
//! from `Rng::for_item(seed, i)` and its identity (shape, reflectance, extras) from
//! `Rng::for_item(seed ^ IDENTITY_SALT, tester)`, so parallel generation writes the same bytes
//! as sequential generation, and in the FaceWarehouse layout all poses of a tester share one
//! identity. The order of draws is part of the format: changing it changes every data set.

pub mod appearance;
pub mod holes;
pub mod pts;
pub mod scene;

use crate::error::{Error, Result};
use crate::face_model::FaceModel;
use crate::face_model::regions::SoftRegions;
use crate::face_model::topology::vertex_normals;
use crate::io::mesh::Mesh;
use crate::render::camera::{Intrinsics, euler_to_matrix, rotate, transform};
use crate::render::raster::{self, RasterInput};
use crate::rng::Rng;
use appearance::{Extras, ExtrasConfig};
use rayon::prelude::*;
use scene::{Background, LightConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Mixed into the seed of the identity streams so they differ from the per-image streams.
const IDENTITY_SALT: u64 = 0x1D3E_7A11_5EED_0001;

/// Focal lengths in `SynthConfig::focal_range` are for this image width and scale with `size`.
pub const REFERENCE_SIZE: f32 = 240.0;

/// Landmarks deeper than the rendered surface at their pixel by more than this are occluded
/// (mm): larger than the depth change across a pixel on the face, smaller than a nose.
const OCCLUSION_TOLERANCE_MM: f32 = 5.0;

/// Where the files go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `DIR/{i:06}.{png,pts,obj,json}`; every image is a new identity.
    Flat,
    /// `DIR/Tester_{k}/TrainingPose/pose_{j}.{png,pts,obj,json}` (k from 1, j from 0); the
    /// poses of a tester share identity and reflectance, pose 0 has the neutral expression.
    FaceWarehouse,
}

/// How expression coefficients are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExprSampling {
    /// `Blendshape` when the model names its expressions (`expression_names` metadata, as the
    /// ICT-FaceKit blendshapes do), `Gaussian` otherwise.
    Auto,
    /// `N(0, (scale * std_k)^2)`, the PCA prior (the paper's expression model).
    Gaussian,
    /// Blendshape weights: each active with probability 0.3, weight `|N(0, (scale * std_k)^2)|`
    /// clamped to [0, 1]. Negative or dense blendshape weights give implausible faces.
    Blendshape,
}

/// Settings of the generator (all recorded in `synth.json`). A settings file may give any subset;
/// the rest take their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Number of images.
    pub count: usize,
    pub seed: u64,
    /// Image width and height, pixels.
    pub size: usize,
    pub layout: Layout,
    /// Poses per tester in the FaceWarehouse layout (testers = ceil(count / poses)).
    pub poses_per_tester: usize,
    /// The world model; None = the built-in demo model.
    pub model: Option<PathBuf>,
    /// Scale of the identity, expression and reflectance priors' standard deviations.
    pub shape_scale: f32,
    pub expr_scale: f32,
    pub albedo_scale: f32,
    pub expr_sampling: ExprSampling,
    /// Head rotation limits (degrees): yaw, pitch, roll are uniform in [-limit, limit].
    pub yaw_deg: f32,
    pub pitch_deg: f32,
    pub roll_deg: f32,
    /// Focal length range, pixels for a 240-pixel image (scaled with `size`). The default is
    /// chosen so that after `fml prepare`'s crop (1.3 x the landmark extent, `fill_range` of the
    /// image) the crop's effective focal length has its median near 1000 px at 240 px, the
    /// training configs' `camera.focal`: f / (1.3 * fill) = 850 / (1.3 * 0.65).
    pub focal_range: [f32; 2],
    /// Fraction of the image the landmarks' larger extent spans.
    pub fill_range: [f32; 2],
    /// Largest offset of the face centre from the image centre, fraction of the image size.
    pub centre_jitter: f32,
    /// Near plane of the camera, mm.
    pub near: f32,
    pub light: LightConfig,
    pub extras: ExtrasConfig,
    /// Largest standard deviation of the Gaussian pixel noise (drawn uniformly in [0, max]).
    pub noise_max: f32,
    /// Samples per pixel along each axis (2 = 2x2 anti-aliasing).
    pub supersample: usize,
    /// Show a progress bar on stderr (not recorded).
    #[serde(skip)]
    pub progress: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            count: 100,
            seed: 0,
            size: 240,
            layout: Layout::Flat,
            poses_per_tester: 20,
            model: None,
            shape_scale: 1.0,
            expr_scale: 0.6,
            albedo_scale: 1.0,
            expr_sampling: ExprSampling::Auto,
            yaw_deg: 40.0,
            pitch_deg: 15.0,
            roll_deg: 10.0,
            focal_range: [600.0, 1100.0],
            fill_range: [0.5, 0.8],
            centre_jitter: 0.05,
            near: 10.0,
            light: LightConfig::default(),
            extras: ExtrasConfig::default(),
            noise_max: 0.02,
            supersample: 2,
            progress: false,
        }
    }
}

impl SynthConfig {
    /// Check every setting; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(format!("synth: {what}")));
        if self.count == 0 {
            return bad("count must be at least 1".into());
        }
        if !(16..=4096).contains(&self.size) {
            return bad(format!("size {} is outside 16..=4096", self.size));
        }
        if self.poses_per_tester == 0 {
            return bad("poses_per_tester must be at least 1".into());
        }
        if !(1..=raster::MAX_SUPERSAMPLE).contains(&self.supersample) {
            return bad(format!("supersample {} is outside 1..={}", self.supersample, raster::MAX_SUPERSAMPLE));
        }
        let ranges = [
            ("focal_range", self.focal_range, 1.0, 1e6),
            ("fill_range", self.fill_range, 0.05, 2.0),
            ("light.ambient", self.light.ambient, 0.0, 10.0),
        ];
        for (name, [lo, hi], min, max) in ranges {
            if !(lo.is_finite() && hi.is_finite() && min <= lo && lo <= hi && hi <= max) {
                return bad(format!("{name} [{lo}, {hi}] must satisfy {min} <= lo <= hi <= {max}"));
            }
        }
        let non_negative = [
            ("shape_scale", self.shape_scale),
            ("expr_scale", self.expr_scale),
            ("albedo_scale", self.albedo_scale),
            ("yaw_deg", self.yaw_deg),
            ("pitch_deg", self.pitch_deg),
            ("roll_deg", self.roll_deg),
            ("centre_jitter", self.centre_jitter),
            ("near", self.near),
            ("light.directional", self.light.directional),
            ("light.band2", self.light.band2),
            ("light.tint", self.light.tint),
            ("light.min_relative", self.light.min_relative),
            ("noise_max", self.noise_max),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} = {v} must be finite and non-negative"));
            }
        }
        if self.yaw_deg >= 89.0 || self.pitch_deg >= 89.0 || self.roll_deg > 180.0 {
            return bad("rotation limits must stay below 89 degrees (yaw, pitch) and 180 (roll)".into());
        }
        let e = &self.extras;
        for (name, p) in [
            ("p_beard", e.p_beard),
            ("p_lipstick", e.p_lipstick),
            ("p_eye_shadow", e.p_eye_shadow),
            ("p_blush", e.p_blush),
            ("p_freckles", e.p_freckles),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("extras.{name} = {p} is not a probability"));
            }
        }
        Ok(())
    }

    /// Number of testers (identities) in the FaceWarehouse layout; the count in the flat one.
    pub fn testers(&self) -> usize {
        match self.layout {
            Layout::Flat => self.count,
            Layout::FaceWarehouse => self.count.div_ceil(self.poses_per_tester),
        }
    }

    /// (tester, pose) of image `i`.
    pub fn tester_pose(&self, i: usize) -> (usize, usize) {
        match self.layout {
            Layout::Flat => (i, 0),
            Layout::FaceWarehouse => (i / self.poses_per_tester, i % self.poses_per_tester),
        }
    }

    /// Directory and file stem (no extension) of image `i` under `out_dir`.
    pub fn item_path(&self, out_dir: &Path, i: usize) -> (PathBuf, String) {
        match self.layout {
            Layout::Flat => (out_dir.to_path_buf(), format!("{i:06}")),
            Layout::FaceWarehouse => {
                let (k, j) = self.tester_pose(i);
                (out_dir.join(format!("Tester_{}", k + 1)).join("TrainingPose"), format!("pose_{j}"))
            }
        }
    }
}

/// What [`generate`] did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SynthSummary {
    pub out_dir: PathBuf,
    pub images: usize,
    pub testers: usize,
    pub model: String,
    pub expr_sampling: ExprSampling,
    /// Mean number of visible landmarks per image (of 68).
    pub mean_visible_landmarks: f32,
}

/// Head pose: `v_cam = R v + t`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// (pitch, yaw, roll), radians (docs/conventions.md).
    pub euler: [f32; 3],
    /// The same in degrees, for reading.
    pub euler_deg: [f32; 3],
    /// Row-major `R = Rz(roll) Ry(yaw) Rx(pitch)`.
    pub rotation: [[f32; 3]; 3],
    /// mm.
    pub translation: [f32; 3],
}

/// Model coefficients, in model units: geometry = mean + sum shape[k] basis_k + sum
/// expression[k] expr_basis_k; z-scores are coefficient / std.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coefficients {
    pub shape: Vec<f32>,
    pub expression: Vec<f32>,
    pub albedo: Vec<f32>,
}

/// Everything about one image (its `.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub index: usize,
    pub tester: usize,
    pub pose_index: usize,
    pub image: String,
    pub width: usize,
    pub height: usize,
    pub model: String,
    pub expr_sampling: ExprSampling,
    pub coefficients: Coefficients,
    pub pose: Pose,
    pub intrinsics: Intrinsics,
    /// `[27]` SH coefficients, `gamma[c * 9 + b]`.
    pub gamma: Vec<f32>,
    pub appearance: Extras,
    pub background: Background,
    pub noise_sigma: f32,
    /// iBUG-68 projections (pixels, our convention), as in the `.pts`. The sliding contour
    /// points 0..7 and 9..16 are the projections of the model's landmark vertices themselves
    /// (not the silhouette), which keeps the label exactly consistent with the mesh.
    pub landmarks_2d: Vec<[f32; 2]>,
    /// Facing the camera, samplable (2x2 neighbourhood in the image) and not occluded.
    pub landmarks_visible: Vec<bool>,
    /// iBUG-68 positions in the model frame (mm), i.e. vertices `landmark_vertices` of the `.obj`.
    pub landmarks_3d: Vec<[f32; 3]>,
    pub landmark_vertices: Vec<u32>,
}

/// One rendered image and its labels, before anything is written.
pub struct Item {
    pub record: ImageRecord,
    pub png: Vec<u8>,
    pub mesh: Mesh,
}

/// The identity of a tester: coefficients and reflectance with extras.
struct Identity {
    shape: Vec<f32>,
    albedo: Vec<f32>,
    extras: Extras,
    reflectance: Vec<[f32; 3]>,
}

/// The world model with what every image needs from it.
pub struct World<'a> {
    model: &'a FaceModel,
    name: String,
    regions: SoftRegions,
    expr_sampling: ExprSampling,
    holes: Vec<holes::Hole>,
    /// Normalised y of the chin (landmark 8) on the mean face.
    chin_y: f32,
}

impl<'a> World<'a> {
    /// Prepare `model` for generation with `cfg`'s expression sampling.
    pub fn new(model: &'a FaceModel, cfg: &SynthConfig) -> World<'a> {
        let expr_sampling = match cfg.expr_sampling {
            ExprSampling::Auto if !model.meta("expression_names").trim().is_empty() => ExprSampling::Blendshape,
            ExprSampling::Auto => ExprSampling::Gaussian,
            other => other,
        };
        let name = if model.meta("name").is_empty() { "unnamed".to_string() } else { model.meta("name").to_string() };
        let regions = SoftRegions::of_model(model);
        let chin_y = regions.coords[model.landmarks[8] as usize][1];
        World { model, name, regions, expr_sampling, holes: holes::find_holes(model), chin_y }
    }

    fn identity(&self, cfg: &SynthConfig, tester: usize) -> Identity {
        let m = self.model;
        let mut rng = Rng::for_item(cfg.seed ^ IDENTITY_SALT, tester as u64);
        let shape: Vec<f32> = m.shape_std.iter().map(|&s| rng.normal() as f32 * s * cfg.shape_scale).collect();
        let albedo: Vec<f32> = m.albedo_std.iter().map(|&s| rng.normal() as f32 * s * cfg.albedo_scale).collect();
        let extras = appearance::sample(&mut rng, &cfg.extras);
        let mut reflectance = m.albedo(&albedo);
        appearance::apply(&extras, &self.regions, self.chin_y, &mut reflectance);
        Identity { shape, albedo, extras, reflectance }
    }

    fn expression(&self, cfg: &SynthConfig, rng: &mut Rng, neutral: bool) -> Vec<f32> {
        let std = &self.model.expr_std;
        // Draw the same numbers in every case so a neutral pose does not shift later draws.
        let draws: Vec<(f64, f64)> = std.iter().map(|_| (rng.normal(), rng.uniform())).collect();
        if neutral {
            return vec![0.0; std.len()];
        }
        std.iter()
            .zip(draws)
            .map(|(&s, (z, u))| match self.expr_sampling {
                ExprSampling::Blendshape => {
                    if u < 0.3 {
                        (z.abs() as f32 * s * cfg.expr_scale).clamp(0.0, 1.0)
                    } else {
                        0.0
                    }
                }
                _ => z as f32 * s * cfg.expr_scale,
            })
            .collect()
    }

    /// Render image `i` of the data set described by `cfg` (no I/O).
    pub fn render(&self, cfg: &SynthConfig, i: usize) -> Result<Item> {
        let m = self.model;
        let (tester, pose_index) = cfg.tester_pose(i);
        let id = self.identity(cfg, tester);
        let mut rng = Rng::for_item(cfg.seed, i as u64);
        let neutral = cfg.layout == Layout::FaceWarehouse && pose_index == 0;
        let expression = self.expression(cfg, &mut rng, neutral);
        let geometry = m.geometry(&id.shape, &expression); // [N, 3] model frame
        let normals = vertex_normals(&geometry, &m.triangles); // [N, 3]
        let lm3: Vec<[f32; 3]> = m.landmarks.iter().map(|&v| geometry[v as usize]).collect(); // [68, 3]

        // Pose and camera.
        let deg = |lim: f32, rng: &mut Rng| rng.range(-lim as f64, lim as f64) as f32;
        let euler_deg = [deg(cfg.pitch_deg, &mut rng), deg(cfg.yaw_deg, &mut rng), deg(cfg.roll_deg, &mut rng)];
        let euler = euler_deg.map(f32::to_radians);
        let r = euler_to_matrix(euler);
        let size = cfg.size as f32;
        let focal = rng.range(cfg.focal_range[0] as f64, cfg.focal_range[1] as f64) as f32 * size / REFERENCE_SIZE;
        let fill = rng.range(cfg.fill_range[0] as f64, cfg.fill_range[1] as f64) as f32;
        let offset = [deg(cfg.centre_jitter, &mut rng) * size, deg(cfg.centre_jitter, &mut rng) * size];
        let intrinsics = Intrinsics { focal, width: cfg.size, height: cfg.size, near: cfg.near };
        let (lo, hi) = crate::face_model::bounds(&lm3);
        let extent = (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1e-3);
        let distance = intrinsics.distance_for(extent, fill);
        let centre = [(lo[0] + hi[0]) * 0.5, (lo[1] + hi[1]) * 0.5, lm3.iter().map(|p| p[2]).sum::<f32>() / 68.0];
        // The face centre goes to camera point (ox, oy, -distance), which projects `offset` px
        // away from the image centre.
        let target = [offset[0] * distance / focal, -offset[1] * distance / focal, -distance];
        let rc = rotate(&r, centre);
        let t = [target[0] - rc[0], target[1] - rc[1], target[2] - rc[2]];

        let gamma = scene::sample_gamma(&mut rng, &cfg.light);
        let (background_px, background) = scene::sample_background(&mut rng, cfg.size, cfg.size);
        let noise_sigma = rng.range(0.0, cfg.noise_max as f64) as f32;

        // The image shows the face with its eye and mouth openings capped (render only).
        let (cap_v, cap_n, cap_c, cap_t) = holes::caps(&self.holes, &geometry);
        let all_v: Vec<[f32; 3]> = geometry.iter().chain(&cap_v).copied().collect(); // [N + H, 3]
        let all_n: Vec<[f32; 3]> = normals.iter().chain(&cap_n).copied().collect(); // [N + H, 3]
        let all_c: Vec<[f32; 3]> = id.reflectance.iter().chain(&cap_c).copied().collect(); // [N + H, 3]
        let all_t: Vec<[u32; 3]> = m.triangles.iter().chain(&cap_t).copied().collect(); // [F + E, 3]
        let (vc, nc) = raster::pose_mesh(&all_v, &all_n, &r, t);
        let out = raster::rasterize(&RasterInput {
            vertices_cam: &vc,
            normals_cam: &nc,
            reflectance: &all_c,
            triangles: &all_t,
            gamma: &gamma,
            intrinsics,
            cull_backfaces: true,
            supersample: cfg.supersample,
        })?;
        let mut pixels = out.composite_over(&background_px)?;
        scene::add_noise(&mut rng, &mut pixels, noise_sigma);
        let img = raster::to_rgb_image(cfg.size, cfg.size, &pixels)?;
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::invalid(format!("synth: PNG encoding of image {i} failed: {e}")))?;

        // Landmarks.
        let mut landmarks_2d = Vec::with_capacity(68);
        let mut landmarks_visible = Vec::with_capacity(68);
        for (l, &v) in m.landmarks.iter().enumerate() {
            let p = transform(&r, t, lm3[l]);
            let n = rotate(&r, normals[v as usize]);
            // The camera distance keeps every landmark far beyond the near plane.
            let uv = intrinsics.project(p).ok_or_else(|| {
                Error::invalid(format!("synth: landmark {l} of image {i} is behind the near plane or not finite"))
            })?;
            let facing = n[0] * -p[0] + n[1] * -p[1] + n[2] * -p[2] > 0.0;
            let samplable = uv[0] >= 0.5 && uv[1] >= 0.5 && uv[0] < size - 0.5 && uv[1] < size - 0.5;
            let unoccluded = samplable && {
                let px = uv[1] as usize * cfg.size + uv[0] as usize;
                -p[2] <= out.depth[px] + OCCLUSION_TOLERANCE_MM
            };
            landmarks_2d.push(uv);
            landmarks_visible.push(facing && samplable && unoccluded);
        }

        let (dir, stem) = cfg.item_path(Path::new(""), i);
        let image_name = dir.join(format!("{stem}.png")).to_string_lossy().replace('\\', "/");
        let record = ImageRecord {
            index: i,
            tester,
            pose_index,
            image: image_name,
            width: cfg.size,
            height: cfg.size,
            model: self.name.clone(),
            expr_sampling: self.expr_sampling,
            coefficients: Coefficients { shape: id.shape, expression, albedo: id.albedo },
            pose: Pose { euler, euler_deg, rotation: r, translation: t },
            intrinsics,
            gamma: gamma.to_vec(),
            appearance: id.extras,
            background,
            noise_sigma,
            landmarks_2d,
            landmarks_visible,
            landmarks_3d: lm3,
            landmark_vertices: m.landmarks.clone(),
        };
        let mesh = Mesh { vertices: geometry, triangles: m.triangles.clone(), colors: Some(id.reflectance) };
        Ok(Item { record, png, mesh })
    }
}

/// Write one item's four files under `out_dir`, all or none (an interrupted run leaves no image
/// without its landmarks and mesh for `prepare` or `eval` to pick up).
fn write_item(cfg: &SynthConfig, out_dir: &Path, item: &Item) -> Result<()> {
    let (dir, stem) = cfg.item_path(out_dir, item.record.index);
    let json = serde_json::to_string_pretty(&item.record).map_err(|e| {
        Error::invalid(format!("synth: cannot serialise the record of image {}: {e}", item.record.index))
    })?;
    let mut group = crate::io::WriteGroup::new();
    group.stage_bytes(dir.join(format!("{stem}.png")), &item.png)?;
    group.stage_bytes(dir.join(format!("{stem}.pts")), pts::format_pts(&item.record.landmarks_2d).as_bytes())?;
    item.mesh.stage(&mut group, dir.join(format!("{stem}.obj")))?;
    group.stage_bytes(dir.join(format!("{stem}.json")), json.as_bytes())?;
    group.commit()
}

impl SynthConfig {
    /// Read settings from a TOML file (any subset of the fields; unknown keys are errors).
    pub fn load_toml(path: impl AsRef<Path>) -> Result<SynthConfig> {
        let path = path.as_ref();
        let text = crate::io::read_text(path)?;
        toml::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
    }
}

/// The world model named by `cfg.model`, or the demo model.
pub fn load_world_model(cfg: &SynthConfig) -> Result<FaceModel> {
    match &cfg.model {
        Some(path) => FaceModel::load(path),
        None => Ok(crate::face_model::demo::demo_model()),
    }
}

/// Generate the data set described by `cfg` into `out_dir` (created if missing).
pub fn generate(cfg: &SynthConfig, out_dir: impl AsRef<Path>) -> Result<SynthSummary> {
    cfg.validate()?;
    let model = load_world_model(cfg)?;
    generate_with_model(&model, cfg, out_dir)
}

/// [`generate`] with an already loaded world model (`cfg.model` is only recorded).
pub fn generate_with_model(model: &FaceModel, cfg: &SynthConfig, out_dir: impl AsRef<Path>) -> Result<SynthSummary> {
    cfg.validate()?;
    let out_dir = out_dir.as_ref();
    // A set is written whole into a folder of its own: files of an earlier set (or anything
    // else) left beside it would be packed with it by `fml prepare`.
    if let Ok(mut entries) = std::fs::read_dir(out_dir)
        && entries.next().is_some()
    {
        return Err(Error::invalid(format!(
            "{}: not empty; synth writes a complete set into a new or empty folder",
            out_dir.display()
        )));
    }
    crate::io::create_dir(out_dir)?;
    let world = World::new(model, cfg);

    // A struct, not json!: json! widens f32 settings to f64 and writes 0.05 as 0.05000000074505806.
    #[derive(serde::Serialize)]
    struct Settings<'a> {
        generator: &'static str,
        version: &'static str,
        config: &'a SynthConfig,
        model: serde_json::Value,
        expr_sampling: ExprSampling,
        images: usize,
        testers: usize,
        files: &'static str,
        conventions: &'static str,
    }
    let settings = Settings {
        generator: "fml synth",
        version: env!("CARGO_PKG_VERSION"),
        config: cfg,
        model: serde_json::json!({
            "name": world.name,
            "vertices": model.num_vertices(),
            "triangles": model.triangles.len(),
            "shape_modes": model.num_shape(),
            "expression_modes": model.num_expr(),
            "albedo_modes": model.num_albedo(),
            "capped_holes": world.holes.len(),
        }),
        expr_sampling: world.expr_sampling,
        images: cfg.count,
        testers: cfg.testers(),
        files: match cfg.layout {
            Layout::Flat => "{i:06}.{png,pts,obj,json}",
            Layout::FaceWarehouse => "Tester_{k}/TrainingPose/pose_{j}.{png,pts,obj,json}",
        },
        conventions: "docs/conventions.md: pixel centres at i + 0.5, v_cam = R v + t, camera looks down -z",
    };
    let text = serde_json::to_string_pretty(&settings)
        .map_err(|e| Error::format(out_dir.join("synth.json"), format!("cannot serialise the settings: {e}")))?;

    let bar = crate::progress::Progress::new("synth", "images", cfg.count, cfg.progress);
    let visible: Vec<usize> = (0..cfg.count)
        .into_par_iter()
        .map(|i| -> Result<usize> {
            let item = world.render(cfg, i)?;
            write_item(cfg, out_dir, &item)?;
            bar.inc(1);
            Ok(item.record.landmarks_visible.iter().filter(|&&v| v).count())
        })
        .collect::<Result<_>>()?;
    bar.finish();
    // Last: synth.json marks a complete set (a failed run leaves none).
    crate::io::write_atomic_bytes(out_dir.join("synth.json"), text.as_bytes())?;
    Ok(SynthSummary {
        out_dir: out_dir.to_path_buf(),
        images: cfg.count,
        testers: cfg.testers(),
        model: world.name.clone(),
        expr_sampling: world.expr_sampling,
        mean_visible_landmarks: visible.iter().sum::<usize>() as f32 / cfg.count as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(count: usize, seed: u64) -> SynthConfig {
        SynthConfig { count, seed, size: 64, ..SynthConfig::default() }
    }

    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    fn parse_pts(text: &str) -> Vec<[f32; 2]> {
        let body = text.split('{').nth(1).unwrap().split('}').next().unwrap();
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Vec<f32> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
                [v[0], v[1]]
            })
            .collect()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_images() {
        let model = crate::face_model::demo::demo_model();
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = generate_with_model(&model, &tiny(3, 7), a.path()).unwrap();
        assert_eq!((s.images, s.testers), (3, 3));
        assert_eq!(s.expr_sampling, ExprSampling::Gaussian);
        generate_with_model(&model, &tiny(3, 7), b.path()).unwrap();
        generate_with_model(&model, &tiny(3, 8), c.path()).unwrap();
        let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
        assert_eq!(fa.len(), 3 * 4 + 1);
        assert_eq!(fa, fb);
        for name in ["000000.png", "000001.png", "000002.png", "000002.json"] {
            let get = |f: &[(PathBuf, Vec<u8>)]| f.iter().find(|(p, _)| p == Path::new(name)).unwrap().1.clone();
            assert_ne!(get(&fa), get(&fc), "{name} did not change with the seed");
        }
        // One image rendered alone equals the one written by the parallel run.
        let world = World::new(&model, &tiny(3, 7));
        let item = world.render(&tiny(3, 7), 1).unwrap();
        assert_eq!(item.png, std::fs::read(a.path().join("000001.png")).unwrap());
        // The face covers a plausible part of the image and most landmarks are visible.
        assert!(s.mean_visible_landmarks > 40.0, "{}", s.mean_visible_landmarks);
    }

    #[test]
    fn landmarks_reproject_from_the_mesh_and_json() {
        let model = crate::face_model::demo::demo_model();
        let dir = tempfile::tempdir().unwrap();
        generate_with_model(&model, &tiny(3, 21), dir.path()).unwrap();
        for i in 0..3 {
            let stem = dir.path().join(format!("{i:06}"));
            let mesh = Mesh::load_obj(stem.with_extension("obj")).unwrap();
            let rec: ImageRecord =
                serde_json::from_slice(&std::fs::read(stem.with_extension("json")).unwrap()).unwrap();
            let pts = parse_pts(&std::fs::read_to_string(stem.with_extension("pts")).unwrap());
            assert_eq!(pts.len(), 68);
            let r = euler_to_matrix(rec.pose.euler);
            assert_eq!(r, rec.pose.rotation);
            for l in 0..68 {
                let v = mesh.vertices[model.landmarks[l] as usize];
                assert_eq!(v, rec.landmarks_3d[l]);
                let uv = rec.intrinsics.project(transform(&r, rec.pose.translation, v)).unwrap();
                let err = ((uv[0] - pts[l][0]).powi(2) + (uv[1] - pts[l][1]).powi(2)).sqrt();
                assert!(err < 0.01, "image {i} landmark {l}: {uv:?} vs {:?}", pts[l]);
            }
            // The face is roughly centred and inside the image.
            let n = rec.landmarks_2d.len() as f32;
            let cu = rec.landmarks_2d.iter().map(|p| p[0]).sum::<f32>() / n;
            assert!((cu - 32.0).abs() < 16.0, "centre u {cu}");
            assert_eq!(rec.gamma.len(), 27);
            assert_eq!(mesh.colors.as_ref().unwrap().len(), model.num_vertices());
        }
    }

    #[test]
    fn facewarehouse_layout_shares_identity_within_a_tester() {
        let model = crate::face_model::demo::demo_model();
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig { layout: Layout::FaceWarehouse, poses_per_tester: 2, ..tiny(3, 5) };
        let s = generate_with_model(&model, &cfg, dir.path()).unwrap();
        assert_eq!(s.testers, 2);
        let mut names: Vec<String> =
            files(dir.path()).into_iter().map(|(p, _)| p.to_string_lossy().replace('\\', "/")).collect();
        names.sort();
        let mut want = vec!["synth.json".to_string()];
        for (k, j) in [(1, 0), (1, 1), (2, 0)] {
            for ext in ["json", "obj", "png", "pts"] {
                want.push(format!("Tester_{k}/TrainingPose/pose_{j}.{ext}"));
            }
        }
        want.sort();
        assert_eq!(names, want);
        let rec = |k: usize, j: usize| -> ImageRecord {
            let p = dir.path().join(format!("Tester_{k}/TrainingPose/pose_{j}.json"));
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let (a0, a1, b0) = (rec(1, 0), rec(1, 1), rec(2, 0));
        assert_eq!(a0.coefficients.shape, a1.coefficients.shape);
        assert_eq!(a0.coefficients.albedo, a1.coefficients.albedo);
        assert_eq!(a0.appearance, a1.appearance);
        assert_ne!(a0.coefficients.shape, b0.coefficients.shape);
        assert!(a0.coefficients.expression.iter().all(|&x| x == 0.0), "pose 0 is neutral");
        assert!(a1.coefficients.expression.iter().any(|&x| x != 0.0));
        assert_ne!(a0.pose, a1.pose);
        assert_eq!(a1.image, "Tester_1/TrainingPose/pose_1.png");
    }

    #[test]
    fn invalid_settings_are_named() {
        let bad = [
            SynthConfig { count: 0, ..SynthConfig::default() },
            SynthConfig { size: 4, ..SynthConfig::default() },
            SynthConfig { fill_range: [0.8, 0.5], ..SynthConfig::default() },
            SynthConfig { yaw_deg: 95.0, ..SynthConfig::default() },
            SynthConfig { supersample: 9, ..SynthConfig::default() },
            SynthConfig { noise_max: f32::NAN, ..SynthConfig::default() },
        ];
        let names = ["count", "size", "fill_range", "rotation", "supersample", "noise_max"];
        for (cfg, name) in bad.iter().zip(names) {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        let mut e = SynthConfig::default();
        e.extras.p_beard = 1.5;
        assert!(e.validate().unwrap_err().to_string().contains("p_beard"));
        assert!(SynthConfig::default().validate().is_ok());
        // A missing model file is an I/O error naming it.
        let cfg = SynthConfig { model: Some("/nonexistent/m.safetensors".into()), ..tiny(1, 0) };
        let dir = tempfile::tempdir().unwrap();
        let e = generate(&cfg, dir.path()).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/m.safetensors"), "{e}");
    }

    #[test]
    fn ict_model_renders_with_blendshape_expressions() {
        let candidates = [
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/ict_face.safetensors"),
            PathBuf::from("/work/shared/models/ict_face.safetensors"),
        ];
        let Some(path) = candidates.iter().find(|p| p.exists()) else {
            eprintln!("skipping: ict_face.safetensors not found");
            return;
        };
        let cfg = SynthConfig { model: Some(path.clone()), ..tiny(2, 3) };
        let dir = tempfile::tempdir().unwrap();
        let s = generate(&cfg, dir.path()).unwrap();
        assert_eq!(s.expr_sampling, ExprSampling::Blendshape);
        for i in 0..2 {
            let rec: ImageRecord =
                serde_json::from_slice(&std::fs::read(dir.path().join(format!("{i:06}.json"))).unwrap()).unwrap();
            assert!(rec.coefficients.expression.iter().all(|&w| (0.0..=1.0).contains(&w)));
            let inside = rec.landmarks_2d.iter().filter(|p| p.iter().all(|&c| (0.0..64.0).contains(&c))).count();
            assert!(inside >= 60, "only {inside} landmarks inside the image");
        }
        assert!(s.mean_visible_landmarks > 30.0, "{}", s.mean_visible_landmarks);
    }
}
