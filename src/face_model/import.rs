//! Shared machinery of the face-model importers (`fml model import`): options, landmark tables
//! (files and borrowed from native models), unit scaling with a sanity check, orientation fixes
//! into the frame of `docs/conventions.md`, recentring, derived sliding-contour candidates and
//! the final assembly into a validated [`FaceModel`].
//!
//! The format readers ([`super::ict`], [`super::bfm`]) only turn their files into a raw model
//! in the source's units; [`finish`] does everything that is common to them, in this order:
//! landmarks -> scale -> orientation -> origin -> contour candidates -> face region ->
//! reflectance prior (if the source has none) -> skin mask -> metadata -> validation.

use super::FaceModel;
use super::topology::vertex_normals;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The source formats `fml model import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    /// ICT-FaceKit (Light) `FaceXModel/` folder of OBJ files, centimetres.
    Ict,
    /// Deep3DFaceRecon's `BFM_model_front.mat` (BFM 2009 + Guo et al. expressions), decimetres.
    BfmFront,
    /// Basel Face Model 2009 `01_MorphableModel.mat`, micrometres.
    Bfm2009,
    /// A native model (re-saved, e.g. truncated or with new landmarks).
    Native,
}

impl ImportFormat {
    /// The name used on the command line and in metadata.
    pub fn name(self) -> &'static str {
        match self {
            ImportFormat::Ict => "ict",
            ImportFormat::BfmFront => "bfm-front",
            ImportFormat::Bfm2009 => "bfm2009",
            ImportFormat::Native => "native",
        }
    }
}

/// Where the imported model's origin goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Keep the source's origin (ICT's default: the ICT frame's origin lies inside the head, and
    /// keeping it makes an import identical to the shared development file).
    Keep,
    /// Subtract the mean of all mean-shape vertices (BFM's default, as Deep3DFaceRecon's
    /// `recenter=True` does, so BFM imports sit where that code base expects them).
    Centroid,
    /// Put the origin at the midpoint of the two eye centres (landmarks 36..41 and 42..47).
    Eyes,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Keep => "keep",
            Origin::Centroid => "centroid",
            Origin::Eyes => "eyes",
        }
    }
}

/// How sliding-contour candidates are derived when the source has none (see [`derive_contours`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContourOptions {
    /// Half-width (mm) of the band around the jaw polyline, measured in the frontal (x, y)
    /// projection. 5 mm: a 1 cm wide strip holds the jaw-line vertices of a BFM-density mesh
    /// (~1-2 mm spacing) several rows deep, enough for the silhouette to slide onto the cheek.
    pub band_mm: f32,
    /// How far (mm) behind the jaw line (in z) a candidate may lie. 20 mm keeps the visible jaw
    /// surface and drops the neck, ears and back of the head that project onto the same band.
    pub depth_mm: f32,
}

impl Default for ContourOptions {
    fn default() -> Self {
        ContourOptions { band_mm: 5.0, depth_mm: 20.0 }
    }
}

/// Everything `fml model import` can be told besides the format and the input.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// A file of 68 landmark vertex indices (whitespace/comma separated or a JSON list).
    pub landmarks: Option<PathBuf>,
    /// The `landmarks` file counts vertices from 1 (MATLAB style) instead of 0.
    pub landmarks_one_based: bool,
    /// Copy landmarks and contour candidates from this native model (same vertex numbering).
    pub landmarks_from: Option<PathBuf>,
    /// ICT: keep only vertices 0..K (the face region: K = 9409 in the shared file).
    pub vertices: Option<usize>,
    /// ICT: read only the first K identity OBJs.
    pub identities: Option<usize>,
    /// Factor from the source's units to millimetres (None: the format's documented default).
    pub scale: Option<f64>,
    /// Origin placement (None: the format's default).
    pub origin: Option<Origin>,
    pub contour: ContourOptions,
    /// Restrict the face region (photometric term, evaluation) to vertices 0..K.
    pub face_vertices: Option<usize>,
    /// Override the model's name / license metadata.
    pub name: Option<String>,
    pub license: Option<String>,
}

/// Import `input` in `format` as a validated native model.
pub fn import_model(format: ImportFormat, input: &Path, opts: &ImportOptions) -> Result<FaceModel> {
    match format {
        ImportFormat::Ict => super::ict::import_ict(input, opts),
        ImportFormat::BfmFront => super::bfm::import_bfm_front(input, opts),
        ImportFormat::Bfm2009 => super::bfm::import_bfm2009(input, opts),
        ImportFormat::Native => import_native(input, opts),
    }
}

/// Re-save a native model: new landmarks, origin, face region or names are applied if asked;
/// the geometry is otherwise untouched (it is already in the documented frame).
fn import_native(input: &Path, opts: &ImportOptions) -> Result<FaceModel> {
    if opts.vertices.is_some() || opts.identities.is_some() || opts.scale.is_some() {
        return Err(Error::invalid("--vertices, --identities and --scale apply to source formats, not to native"));
    }
    let mut model = FaceModel::load(input)?;
    let new_landmarks = opts.landmarks.is_some() || opts.landmarks_from.is_some();
    if new_landmarks {
        let table = resolve_landmarks(&model, None, opts, input)?;
        model.landmarks = table.landmarks;
        match table.contours {
            Some((r, l)) => {
                model.contour_right = r;
                model.contour_left = l;
            }
            None => {
                let (r, l) = derive_contours(&super::to_vec3(&model.mean_shape), &model.landmarks, &opts.contour);
                model.contour_right = r;
                model.contour_left = l;
                model.metadata.insert("contour_candidates".into(), contour_note(&opts.contour));
            }
        }
        model.metadata.insert("landmarks_source".into(), table.source);
    }
    if let Some(o) = opts.origin {
        let shift = recentre(&mut model, o);
        model.metadata.insert("import_origin".into(), origin_note(o, shift));
    }
    if let Some(k) = opts.face_vertices {
        set_face_region(&mut model, k)?;
    }
    if new_landmarks || opts.face_vertices.is_some() {
        model.skin_mask = super::regions::derive_skin_mask(&model);
    }
    apply_names(&mut model, opts);
    model.validate(input)?;
    Ok(model)
}

/// Per-format choices that [`finish`] needs.
pub(crate) struct FormatDefaults {
    pub format: ImportFormat,
    /// Factor to millimetres when `--scale` is not given, and what it converts.
    pub scale: f64,
    pub scale_note: &'static str,
    pub origin: Origin,
}

/// A landmark table and where it came from.
struct LandmarkTable {
    landmarks: Vec<u32>,
    contours: Option<(Vec<u32>, Vec<u32>)>,
    source: String,
}

/// Pick the landmarks: `--landmarks FILE`, then `--landmarks-from MODEL`, then the source's own.
fn resolve_landmarks(
    model: &FaceModel,
    from_source: Option<(Vec<u32>, String)>,
    opts: &ImportOptions,
    input: &Path,
) -> Result<LandmarkTable> {
    let n = model.num_vertices();
    if let Some(file) = &opts.landmarks {
        let landmarks = read_landmark_file(file, opts.landmarks_one_based)?;
        check_range(&landmarks, n, file, "landmark")?;
        let from_copy = match &opts.landmarks_from {
            Some(m) => Some(borrowed_table(m, n)?.contours),
            None => None,
        };
        return Ok(LandmarkTable {
            landmarks,
            contours: from_copy.flatten(),
            source: format!("file {}", file.display()),
        });
    }
    if let Some(m) = &opts.landmarks_from {
        return borrowed_table(m, n);
    }
    if let Some((landmarks, source)) = from_source {
        return Ok(LandmarkTable { landmarks, contours: None, source });
    }
    Err(Error::format(
        input,
        "the source has no landmark table: give --landmarks FILE (68 iBUG vertex indices) or \
         --landmarks-from MODEL.safetensors (a native model with the same vertex numbering)",
    ))
}

fn borrowed_table(model_path: &Path, n: usize) -> Result<LandmarkTable> {
    let other = FaceModel::load(model_path)?;
    if other.num_vertices() != n {
        return Err(Error::format(
            model_path,
            format!(
                "has {} vertices but the imported model has {n}: --landmarks-from needs the same vertex numbering \
                 (for ICT, match --vertices)",
                other.num_vertices()
            ),
        ));
    }
    Ok(LandmarkTable {
        landmarks: other.landmarks,
        contours: Some((other.contour_right, other.contour_left)),
        source: format!("copied from {}", model_path.display()),
    })
}

fn check_range(indices: &[u32], n: usize, origin: &Path, what: &str) -> Result<()> {
    if let Some(i) = indices.iter().position(|&v| v as usize >= n) {
        return Err(Error::format(
            origin,
            format!("{what} {i} is vertex {} but the model has only {n} vertices (0..{})", indices[i], n),
        ));
    }
    Ok(())
}

/// Read 68 landmark vertex indices: a JSON list (`[12, 40, ...]`) or integers separated by
/// whitespace or commas, with `#` comments. 0-based unless `one_based`.
pub fn read_landmark_file(path: &Path, one_based: bool) -> Result<Vec<u32>> {
    let text = crate::io::read_text(path)?;
    parse_landmarks(&text, path, one_based)
}

/// Parse the text of a landmark file (see [`read_landmark_file`]); `origin` names it in errors.
pub fn parse_landmarks(text: &str, origin: &Path, one_based: bool) -> Result<Vec<u32>> {
    let bad = |what: String| Error::format(origin, what);
    let raw: Vec<(i64, String)> = if text.trim_start().starts_with('[') {
        let v: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| bad(format!("not a JSON list of integers: {e}")))?;
        v.iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_i64()
                    .map(|k| (k, format!("entry {i}")))
                    .ok_or_else(|| bad(format!("entry {i} ({x}) is not an integer")))
            })
            .collect::<Result<_>>()?
    } else {
        let mut out = Vec::new();
        for (lineno, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for tok in line.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()) {
                let k: i64 = tok
                    .parse()
                    .map_err(|_| bad(format!("line {}: {tok:?} is not an integer vertex index", lineno + 1)))?;
                out.push((k, format!("line {}", lineno + 1)));
            }
        }
        out
    };
    if raw.len() != 68 {
        return Err(bad(format!("{} landmark indices, expected 68 (iBUG-68 order)", raw.len())));
    }
    let base = if one_based { 1 } else { 0 };
    raw.into_iter()
        .enumerate()
        .map(|(i, (k, at))| {
            let v = k - base;
            if v < 0 || v > u32::MAX as i64 {
                let hint = if one_based { " (the file was read as 1-based)" } else { "" };
                return Err(bad(format!("{at}: landmark {i} = {k} is not a valid vertex index{hint}")));
            }
            Ok(v as u32)
        })
        .collect()
}

/// Multiply every geometric array (mean and bases) by `s`.
pub(crate) fn scale_geometry(model: &mut FaceModel, s: f32) {
    for v in [&mut model.mean_shape, &mut model.shape_basis, &mut model.expr_basis] {
        for x in v.iter_mut() {
            *x *= s;
        }
    }
}

/// Multiply coordinate `c` (0 = x, 1 = y, 2 = z) of the mean and of every basis by -1.
fn negate_axis(model: &mut FaceModel, c: usize) {
    for v in [&mut model.mean_shape, &mut model.shape_basis, &mut model.expr_basis] {
        for x in v.iter_mut().skip(c).step_by(3) {
            *x = -*x;
        }
    }
}

fn reverse_winding(model: &mut FaceModel) {
    for t in &mut model.triangles {
        t.swap(1, 2);
    }
}

fn vertex(model: &FaceModel, i: u32) -> [f32; 3] {
    let i = i as usize * 3;
    [model.mean_shape[i], model.mean_shape[i + 1], model.mean_shape[i + 2]]
}

fn mean_of(model: &FaceModel, ids: impl Iterator<Item = u32>) -> [f32; 3] {
    let mut s = [0.0f64; 3];
    let mut n = 0usize;
    for i in ids {
        let p = vertex(model, i);
        for k in 0..3 {
            s[k] += p[k] as f64;
        }
        n += 1;
    }
    let n = n.max(1) as f64;
    [(s[0] / n) as f32, (s[1] / n) as f32, (s[2] / n) as f32]
}

fn eyes_centre(model: &FaceModel) -> [f32; 3] {
    mean_of(model, model.landmarks[36..48].iter().copied())
}

/// Distance between the outer eye corners (landmarks 36 and 45), the scale check's yardstick:
/// about 90-100 mm on adult faces.
fn outer_eye_distance(model: &FaceModel) -> f32 {
    let (a, b) = (vertex(model, model.landmarks[36]), vertex(model, model.landmarks[45]));
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Plausible range (mm) of the outer-eye-corner distance. Wide, because it only has to catch a
/// wrong unit (a factor of 10 or more), not judge faces.
const EYE_DISTANCE_MM: (f32, f32) = (40.0, 250.0);

/// Bring the model into the documented frame (+y up, +z toward the viewer, +x toward the
/// subject's left, triangles counter-clockwise from outside). Proper rotations fix an upside-down
/// or backward-facing source; a mirror image (landmark 36 right of 45) is mirrored in x, which
/// also reverses the winding. Returns what was changed, for the metadata.
pub(crate) fn orient(model: &mut FaceModel) -> Vec<String> {
    let mut notes = Vec::new();
    let eyes = eyes_centre(model);
    let chin = vertex(model, model.landmarks[8]);
    if chin[1] > eyes[1] {
        // Rotation by 180 deg about z: (x, y, z) -> (-x, -y, z).
        negate_axis(model, 0);
        negate_axis(model, 1);
        notes.push("rotated 180 deg about z (the chin was above the eyes: +y pointed down)".to_string());
    }
    let eyes = eyes_centre(model);
    let nose = vertex(model, model.landmarks[30]);
    if nose[2] < eyes[2] {
        // Rotation by 180 deg about y: (x, y, z) -> (-x, y, -z).
        negate_axis(model, 0);
        negate_axis(model, 2);
        notes.push("rotated 180 deg about y (the nose tip was behind the eyes: +z pointed backward)".to_string());
    }
    if vertex(model, model.landmarks[36])[0] > vertex(model, model.landmarks[45])[0] {
        negate_axis(model, 0);
        reverse_winding(model);
        notes.push("mirrored x (landmark 36 lay at larger x than 45) and reversed the triangle winding".to_string());
    }
    // Normals must point out of the face: at the nose (landmarks 27..30, bridge to tip) the
    // outward normal is toward the viewer (+z).
    let normals = vertex_normals(&super::to_vec3(&model.mean_shape), &model.triangles);
    let nz: f32 = model.landmarks[27..31].iter().map(|&i| normals[i as usize][2]).sum();
    if nz < 0.0 {
        reverse_winding(model);
        notes.push("reversed the triangle winding (normals pointed into the face)".to_string());
    }
    notes
}

/// Move the origin; returns the vector subtracted from every vertex.
pub(crate) fn recentre(model: &mut FaceModel, origin: Origin) -> [f32; 3] {
    let c = match origin {
        Origin::Keep => return [0.0; 3],
        Origin::Centroid => mean_of(model, 0..model.num_vertices() as u32),
        Origin::Eyes => eyes_centre(model),
    };
    for p in model.mean_shape.chunks_exact_mut(3) {
        for k in 0..3 {
            p[k] -= c[k];
        }
    }
    c
}

fn origin_note(o: Origin, shift: [f32; 3]) -> String {
    format!("{} (subtracted [{:.3}, {:.3}, {:.3}] mm)", o.name(), shift[0], shift[1], shift[2])
}

fn contour_note(c: &ContourOptions) -> String {
    format!(
        "derived: jaw landmarks plus vertices within {} mm (frontal x-y) of the jaw polyline and at most {} mm behind it",
        c.band_mm, c.depth_mm
    )
}

/// Sliding-contour candidates for a model without them: for the subject's right side the jaw
/// landmarks 0..7 plus every vertex whose frontal (x, y) projection lies within
/// `band_mm` of the polyline through landmarks 0..8 (chin), that is at most `depth_mm` behind
/// the polyline point nearest to it (so the neck, ears and back of the head, which project onto
/// the same band, stay out) and that lies on the right of the chin (x <= chin x); the left side
/// likewise with landmarks 8..16. Vertices in front of the jaw line (cheek) are kept: they are
/// where the silhouette moves when the head turns.
///
/// # Shapes
/// `vertices` `[N][3]` in mm in the documented frame, `landmarks` `[68]`; returns sorted,
/// de-duplicated vertex lists (right, left).
pub fn derive_contours(vertices: &[[f32; 3]], landmarks: &[u32], opts: &ContourOptions) -> (Vec<u32>, Vec<u32>) {
    let lm = |i: usize| vertices[landmarks[i] as usize];
    let chin_x = lm(8)[0];
    let side = |ids: &[usize], keypoints: &[usize], right: bool| -> Vec<u32> {
        let poly: Vec<[f32; 3]> = ids.iter().map(|&i| lm(i)).collect();
        let mut out: Vec<u32> = keypoints.iter().map(|&i| landmarks[i]).collect();
        for (vi, p) in vertices.iter().enumerate() {
            if (right && p[0] > chin_x) || (!right && p[0] < chin_x) {
                continue;
            }
            let (d, z) = nearest_on_polyline([p[0], p[1]], &poly);
            if d <= opts.band_mm && p[2] >= z - opts.depth_mm {
                out.push(vi as u32);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    };
    let right = side(&(0..=8).collect::<Vec<_>>(), &(0..=7).collect::<Vec<_>>(), true);
    let left = side(&(8..=16).collect::<Vec<_>>(), &(9..=16).collect::<Vec<_>>(), false);
    (right, left)
}

/// Distance from `p` to the (x, y) projection of a 3-D polyline, and the polyline's z at the
/// nearest point.
fn nearest_on_polyline(p: [f32; 2], poly: &[[f32; 3]]) -> (f32, f32) {
    let mut best = (f32::INFINITY, 0.0);
    for w in poly.windows(2) {
        let (a, b) = (w[0], w[1]);
        let ab = [b[0] - a[0], b[1] - a[1]];
        let l2 = ab[0] * ab[0] + ab[1] * ab[1];
        let t = if l2 > 0.0 { (((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1]) / l2).clamp(0.0, 1.0) } else { 0.0 };
        let q = [a[0] + t * ab[0], a[1] + t * ab[1]];
        let d = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
        if d < best.0 {
            best = (d, a[2] + t * (b[2] - a[2]));
        }
    }
    best
}

fn set_face_region(model: &mut FaceModel, k: usize) -> Result<()> {
    let n = model.num_vertices();
    if k == 0 || k > n {
        return Err(Error::invalid(format!("--face-vertices {k}: the model has {n} vertices (need 1..={n})")));
    }
    model.face_region = (0..k as u32).collect();
    model.metadata.insert("narrow_face_vertices".into(), k.to_string());
    Ok(())
}

fn apply_names(model: &mut FaceModel, opts: &ImportOptions) {
    if let Some(n) = &opts.name {
        model.metadata.insert("name".into(), n.clone());
    }
    if let Some(l) = &opts.license {
        model.metadata.insert("license".into(), l.clone());
    }
}

/// Complete a raw import (geometry in source units; bases and std set; triangles 0-based;
/// reflectance empty when the source has none; landmarks from the source, if any, in
/// `source_landmarks` with a description) into a validated model. `input` names the source.
pub(crate) fn finish(
    mut model: FaceModel,
    source_landmarks: Option<(Vec<u32>, String)>,
    defaults: FormatDefaults,
    opts: &ImportOptions,
    input: &Path,
) -> Result<FaceModel> {
    let n = model.num_vertices();
    if n == 0 {
        return Err(Error::format(input, "the model has no vertices"));
    }
    let table = resolve_landmarks(&model, source_landmarks, opts, input)?;
    check_range(&table.landmarks, n, input, "landmark")?;
    model.landmarks = table.landmarks;

    let scale = opts.scale.unwrap_or(defaults.scale);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::invalid(format!("--scale {scale}: must be a positive number")));
    }
    scale_geometry(&mut model, scale as f32);
    let eye = outer_eye_distance(&model);
    if !(EYE_DISTANCE_MM.0..=EYE_DISTANCE_MM.1).contains(&eye) {
        return Err(Error::format(
            input,
            format!(
                "after scaling by {scale} ({}) the outer eye corners (landmarks 36, 45) are {eye:.2} mm apart, \
                 expected {}..{} mm: the source is in other units (pass --scale FACTOR-TO-MM) or the landmarks \
                 are wrong",
                defaults.scale_note, EYE_DISTANCE_MM.0, EYE_DISTANCE_MM.1
            ),
        ));
    }
    let notes = orient(&mut model);
    let origin = opts.origin.unwrap_or(defaults.origin);
    let shift = recentre(&mut model, origin);

    match table.contours {
        Some((r, l)) => {
            model.contour_right = r;
            model.contour_left = l;
        }
        None => {
            let (r, l) = derive_contours(&super::to_vec3(&model.mean_shape), &model.landmarks, &opts.contour);
            model.contour_right = r;
            model.contour_left = l;
            model.metadata.insert("contour_candidates".into(), contour_note(&opts.contour));
        }
    }
    match opts.face_vertices {
        Some(k) => set_face_region(&mut model, k)?,
        None => model.face_region = (0..n as u32).collect(),
    }
    if model.mean_albedo.is_empty() {
        super::albedo::apply_procedural_prior(&mut model);
    }
    model.skin_mask = super::regions::derive_skin_mask(&model);

    let m = &mut model.metadata;
    m.insert("units".into(), "mm".into());
    m.insert("landmark_scheme".into(), "ibug68".into());
    m.insert("landmarks_source".into(), table.source);
    m.insert("import_format".into(), defaults.format.name().into());
    m.insert(
        "import_scale".into(),
        format!("{scale} ({})", if opts.scale.is_some() { "--scale" } else { defaults.scale_note }),
    );
    m.insert("import_origin".into(), origin_note(origin, shift));
    m.insert(
        "import_orientation".into(),
        if notes.is_empty() {
            "unchanged (already +y up, +z toward the viewer, +x subject's left)".into()
        } else {
            notes.join("; ")
        },
    );
    apply_names(&mut model, opts);
    model.validate(input)?;
    Ok(model)
}

/// First non-finite value of `data` as (index, value).
pub(crate) fn first_non_finite(data: &[f64]) -> Option<(usize, f64)> {
    data.iter().position(|x| !x.is_finite()).map(|i| (i, data[i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tiny face (cm) in the documented frame: nose tip, eyes, brow, jaw sides, chin, mouth,
    /// plus a top-of-head and a neck vertex. Landmarks map iBUG regions onto these vertices.
    fn tiny_face_cm() -> (Vec<[f32; 3]>, Vec<[u32; 3]>, Vec<u32>) {
        let v = vec![
            [0.0, 0.0, 3.0],    // 0 nose tip
            [3.0, 2.0, 1.0],    // 1 left eye (subject's left = +x)
            [0.0, 5.0, 0.0],    // 2 brow / forehead
            [-3.0, 2.0, 1.0],   // 3 right eye
            [-7.0, 0.0, -1.0],  // 4 right jaw
            [0.0, -9.0, 0.0],   // 5 chin
            [7.0, 0.0, -1.0],   // 6 left jaw
            [0.0, -5.0, 1.5],   // 7 mouth
            [0.0, 10.0, -5.0],  // 8 top of head
            [0.0, -12.0, -5.0], // 9 neck
        ];
        // Counter-clockwise seen from +z.
        let t = vec![
            [0, 6, 1],
            [0, 1, 2],
            [0, 2, 3],
            [0, 3, 4],
            [0, 4, 7],
            [0, 7, 6],
            [4, 5, 7],
            [7, 5, 6],
            [2, 8, 3],
            [5, 9, 6],
        ];
        let lm = (0..68u32)
            .map(|i| match i {
                0..=7 => 4,
                8 => 5,
                9..=16 => 6,
                17..=26 => 2,
                27..=35 => 0,
                36..=41 => 3,
                42..=47 => 1,
                _ => 7,
            })
            .collect();
        (v, t, lm)
    }

    fn raw_model(v: &[[f32; 3]], t: &[[u32; 3]]) -> FaceModel {
        FaceModel {
            mean_shape: v.iter().flatten().copied().collect(),
            shape_basis: Vec::new(),
            shape_std: Vec::new(),
            expr_basis: Vec::new(),
            expr_std: Vec::new(),
            mean_albedo: Vec::new(),
            albedo_basis: Vec::new(),
            albedo_std: Vec::new(),
            triangles: t.to_vec(),
            landmarks: Vec::new(),
            contour_right: Vec::new(),
            contour_left: Vec::new(),
            skin_mask: Vec::new(),
            face_region: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    fn defaults() -> FormatDefaults {
        FormatDefaults { format: ImportFormat::Ict, scale: 10.0, scale_note: "cm to mm", origin: Origin::Keep }
    }

    #[test]
    fn landmark_files() {
        let p = Path::new("lm.txt");
        let text: String = (0..68).map(|i| format!("{i}{}", if i % 10 == 9 { "\n" } else { " " })).collect();
        let lm = parse_landmarks(&format!("# header\n{text}"), p, false).unwrap();
        assert_eq!(lm[67], 67);
        let lm1 = parse_landmarks(&text.replace(' ', ", "), p, false).unwrap();
        assert_eq!(lm, lm1);
        let json = format!("[{}]", (1..=68).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        assert_eq!(parse_landmarks(&json, p, true).unwrap(), lm);
        let err = parse_landmarks("1 2 3", p, false).unwrap_err().to_string();
        assert!(err.contains("lm.txt") && err.contains("3 landmark indices, expected 68"), "{err}");
        let err = parse_landmarks(&text.replacen("5", "x5", 1), p, false).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("x5"), "{err}");
        let err = parse_landmarks(&text, p, true).unwrap_err().to_string();
        assert!(err.contains("landmark 0 = 0") && err.contains("1-based"), "{err}");
        let err = parse_landmarks("[1, \"a\"]", p, false).unwrap_err().to_string();
        assert!(err.contains("entry 1"), "{err}");
    }

    #[test]
    fn finish_scales_orients_and_derives() {
        let (v, t, lm) = tiny_face_cm();
        let model = raw_model(&v, &t);
        let opts = ImportOptions::default();
        let m = finish(model, Some((lm.clone(), "test".into())), defaults(), &opts, Path::new("in")).unwrap();
        assert_eq!(m.mean_shape[2], 30.0, "cm -> mm");
        assert_eq!(m.triangles, t, "already counter-clockwise: unchanged");
        assert!(m.meta("import_orientation").starts_with("unchanged"));
        assert!(m.contour_right.contains(&4) && !m.contour_right.contains(&6));
        assert!(m.contour_left.contains(&6) && !m.contour_left.contains(&4));
        assert_eq!(m.num_albedo(), super::super::albedo::NUM_MODES, "procedural prior");
        assert_eq!(m.face_region.len(), v.len());
        assert!(m.skin_mask.len() >= 2);
    }

    #[test]
    fn finish_fixes_mirrored_and_inverted_sources() {
        let (v, t, lm) = tiny_face_cm();
        // Mirror image in x with clockwise triangles: mirroring back restores the winding.
        let mirrored: Vec<[f32; 3]> = v.iter().map(|p| [-p[0], p[1], p[2]]).collect();
        let cw: Vec<[u32; 3]> = t.iter().map(|t| [t[0], t[2], t[1]]).collect();
        let m = finish(
            raw_model(&mirrored, &cw),
            Some((lm.clone(), "t".into())),
            defaults(),
            &Default::default(),
            Path::new("in"),
        )
        .unwrap();
        assert_eq!(m.mean_shape[3], 30.0, "left eye back at +x");
        assert_eq!(m.triangles, t);
        // Clockwise triangles alone: only the winding is reversed.
        let m = finish(
            raw_model(&v, &cw),
            Some((lm.clone(), "t".into())),
            defaults(),
            &Default::default(),
            Path::new("in"),
        )
        .unwrap();
        assert_eq!(m.triangles, t);
        assert!(m.meta("import_orientation").contains("reversed"));
        // Upside down and facing backward (rotation by 180 deg about x): two proper rotations.
        let rotated: Vec<[f32; 3]> = v.iter().map(|p| [p[0], -p[1], -p[2]]).collect();
        let m = finish(
            raw_model(&rotated, &t),
            Some((lm.clone(), "t".into())),
            defaults(),
            &Default::default(),
            Path::new("in"),
        )
        .unwrap();
        for (a, b) in m.mean_shape.iter().zip(v.iter().flatten()) {
            assert!((a - b * 10.0).abs() < 1e-4, "{a} vs {b}");
        }
        assert_eq!(m.triangles, t);
    }

    #[test]
    fn finish_checks_scale_and_landmarks() {
        let (v, t, lm) = tiny_face_cm();
        let opts = ImportOptions { scale: Some(1.0), ..Default::default() };
        let err = finish(raw_model(&v, &t), Some((lm.clone(), "t".into())), defaults(), &opts, Path::new("in.obj"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("in.obj") && err.contains("--scale") && err.contains("6.00 mm"), "{err}");
        let err = finish(raw_model(&v, &t), None, defaults(), &Default::default(), Path::new("in.obj"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--landmarks"), "{err}");
        let mut bad = lm.clone();
        bad[50] = 99;
        let err =
            finish(raw_model(&v, &t), Some((bad, "t".into())), defaults(), &Default::default(), Path::new("in.obj"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("landmark 50 is vertex 99"), "{err}");
    }

    #[test]
    fn origins() {
        let (v, t, lm) = tiny_face_cm();
        for (o, expect) in [(Origin::Centroid, None), (Origin::Eyes, Some([0.0, 20.0, 10.0]))] {
            let opts = ImportOptions { origin: Some(o), ..Default::default() };
            let m =
                finish(raw_model(&v, &t), Some((lm.clone(), "t".into())), defaults(), &opts, Path::new("in")).unwrap();
            let c = mean_of(&m, 0..m.num_vertices() as u32);
            match expect {
                None => assert!(c.iter().all(|x| x.abs() < 1e-4), "{c:?}"),
                Some(e) => {
                    // The nose tip (0, 0, 30) mm moves by minus the eye centre.
                    assert_eq!(&m.mean_shape[0..3], &[-e[0], -e[1], 30.0 - e[2]]);
                }
            }
        }
    }

    #[test]
    fn contour_band_and_depth() {
        // A jaw polyline along y = 0 from x = -60 to the chin at x = 0 (z = 0), and test points.
        let mut v = vec![[0.0f32; 3]; 68];
        let mut lm = vec![0u32; 68];
        for i in 0..=16 {
            v[i] = [-60.0 + 7.5 * i as f32, 0.0, 0.0];
            lm[i] = i as u32;
        }
        v[20] = [-30.0, 3.0, 5.0]; // inside the band, in front: kept (right)
        v[21] = [-30.0, -8.0, 0.0]; // outside the band
        v[22] = [-30.0, 1.0, -30.0]; // in the band but far behind (neck): dropped
        v[23] = [30.0, -4.0, -10.0]; // left side, in the band, 10 mm behind: kept (left)
        let (r, l) = derive_contours(&v, &lm, &ContourOptions::default());
        assert!(r.contains(&20) && !r.contains(&21) && !r.contains(&22) && !r.contains(&23));
        assert!(l.contains(&23) && !l.contains(&20));
        assert!(r.contains(&0) && r.contains(&7));
    }
}
