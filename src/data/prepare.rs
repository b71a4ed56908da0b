//! `fml prepare`: find images with landmarks (folders and manifests), crop each face, and pack
//! the crops into one dataset file with a deterministic train/validation split.
//!
//! A bad file never stops the run: it is counted under a [`SkipReason`] and reported at the end.
//! The run fails only when no face at all is usable.

use super::crop::{CropConfig, crop_face};
use super::dataset::{Record, RecordMeta, Split, write_dataset_then};
use super::image::read_rgb8;
use super::landmarks::{Landmarks68, extension, read_landmark_file, read_manifest};
use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Image extensions picked up when scanning folders (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// Settings of a `prepare` run.
#[derive(Clone, Debug)]
pub struct PrepareConfig {
    pub crop: CropConfig,
    /// Fraction of faces assigned to validation (the paper, Sec. 7: 2k of 144k, about 0.014).
    pub val_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
    /// Faces whose landmark box is smaller than this (larger side, source pixels) are skipped.
    /// Default 40: below that the inner landmarks are 1-2 px apart and a 240 px crop is a
    /// 6x enlargement with little real detail.
    pub min_face: f32,
    /// Faces whose mean landmark confidence is below this are skipped (the paper removes "bad
    /// detections based on landmark confidence"; files without confidences count as 1, and a
    /// 66-point file's two missing points as 0, i.e. mean 66/68 = 0.97).
    pub min_confidence: f32,
    /// How far a confident landmark may lie outside the image before the face is skipped, as a
    /// fraction of the face size (larger side of the landmark box). Default 0.05: detectors put
    /// jaw points of faces touching the border slightly outside; further out the crop would be
    /// mostly padding.
    pub outside_tolerance: f32,
    /// `.land` files measure v from the bottom edge (v_file = H - v); see `read_land`.
    pub land_y_up: bool,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Faces processed per parallel chunk; bounds memory (each crop is S*S*3 bytes).
    pub chunk: usize,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        PrepareConfig {
            crop: CropConfig::default(),
            val_fraction: 0.02,
            seed: 0,
            min_face: 40.0,
            min_confidence: 0.0,
            outside_tolerance: 0.05,
            land_y_up: false,
            progress: true,
            chunk: 256,
        }
    }
}

/// Largest accepted crop margin: beyond it the face fills under a tenth of the crop's side, a
/// typo rather than a choice (and a box many times the face soon exceeds the image, which
/// `crop_face` refuses face by face).
pub const MAX_MARGIN: f32 = 10.0;

impl PrepareConfig {
    /// Check every number before any file is read, naming the `fml prepare` option. NaN needs
    /// its own refusal: every comparison with it is false, so a NaN threshold would silently
    /// switch its check off (`--outside-tolerance nan` let every landmark through).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(what));
        // `contains` is false for NaN, so each range test below refuses it too.
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!("--val-fraction {} must be a number in [0, 1)", self.val_fraction));
        }
        if self.crop.size == 0 || self.crop.size > super::dataset::MAX_SIZE {
            return bad(format!("--size {} must be in 1..={}", self.crop.size, super::dataset::MAX_SIZE));
        }
        if !(self.crop.margin > 0.0 && self.crop.margin <= MAX_MARGIN) {
            return bad(format!("--margin {} must be a number in (0, {MAX_MARGIN}] (default 1.3)", self.crop.margin));
        }
        if !(self.min_face.is_finite() && self.min_face >= 0.0) {
            return bad(format!("--min-face {} must be a finite number of pixels >= 0 (default 40)", self.min_face));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad(format!("--min-confidence {} must be a number in [0, 1]", self.min_confidence));
        }
        if !(self.outside_tolerance.is_finite() && self.outside_tolerance >= 0.0) {
            return bad(format!(
                "--outside-tolerance {} must be a finite fraction of the face size >= 0 (default 0.05; a large \
                 value such as 100 lets landmarks lie anywhere)",
                self.outside_tolerance
            ));
        }
        Ok(())
    }
}

/// Why a face (or an input) was not packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// An image without a sibling `.pts` / `.land` file.
    MissingLandmarks,
    /// A landmark file or manifest entry that does not parse (counts, numbers, NaN, ...).
    MalformedLandmarks,
    /// An image that cannot be read or decoded.
    UnreadableImage,
    /// Landmark box smaller than `min_face`.
    FaceTooSmall,
    /// A confident landmark outside the image (beyond the tolerance).
    LandmarksOutside,
    /// Mean confidence below `min_confidence`, or no confident landmark.
    LowConfidence,
    /// An input path that is missing, or a manifest that cannot be read as a whole.
    BadInput,
    /// An image given a second time (by two inputs, a folder and a manifest, or a link): packed
    /// once, so that one face cannot land in both splits.
    Duplicate,
}

impl SkipReason {
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::MissingLandmarks => "missing landmarks (no .pts/.land beside the image)",
            SkipReason::MalformedLandmarks => "malformed landmarks",
            SkipReason::UnreadableImage => "unreadable image",
            SkipReason::FaceTooSmall => "face too small",
            SkipReason::LandmarksOutside => "landmarks outside the image",
            SkipReason::LowConfidence => "low landmark confidence",
            SkipReason::BadInput => "bad input (missing path or unreadable manifest)",
            SkipReason::Duplicate => "duplicate image (given more than once; packed once)",
        }
    }
}

/// What a `prepare` run did.
#[derive(Clone, Debug, Default)]
pub struct PrepareReport {
    /// Faces found (images with a landmark source, manifest entries), before any check.
    pub found: usize,
    pub train: usize,
    pub val: usize,
    pub skipped: BTreeMap<SkipReason, usize>,
    /// Up to [`PrepareReport::EXAMPLES`] messages per reason, in the order they were found.
    pub examples: BTreeMap<SkipReason, Vec<String>>,
}

impl PrepareReport {
    pub const EXAMPLES: usize = 3;

    fn skip(&mut self, reason: SkipReason, message: String) {
        *self.skipped.entry(reason).or_default() += 1;
        let ex = self.examples.entry(reason).or_default();
        if ex.len() < Self::EXAMPLES {
            ex.push(message);
        }
    }

    /// Total number of skipped faces and inputs.
    pub fn total_skipped(&self) -> usize {
        self.skipped.values().sum()
    }
}

impl fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "faces found: {}", self.found)?;
        writeln!(f, "packed: {} ({} train, {} validation)", self.train + self.val, self.train, self.val)?;
        if self.skipped.is_empty() {
            return write!(f, "skipped: 0");
        }
        write!(f, "skipped: {}", self.total_skipped())?;
        for (reason, n) in &self.skipped {
            write!(f, "\n  {n:>7}  {}", reason.describe())?;
            let ex = &self.examples[reason];
            for m in ex {
                write!(f, "\n             e.g. {m}")?;
            }
            if *n > ex.len() {
                write!(f, "\n             ... and {} more", n - ex.len())?;
            }
        }
        Ok(())
    }
}

/// Where a candidate's landmarks come from.
#[derive(Clone, Debug)]
enum LandmarkSource {
    File(PathBuf),
    Given(Box<Landmarks68>),
}

#[derive(Clone, Debug)]
struct Candidate {
    image: PathBuf,
    landmarks: LandmarkSource,
}

/// Whether `path` names an image fml reads (by extension, case-insensitive: [`IMAGE_EXTENSIONS`]).
fn is_image(path: &Path) -> bool {
    IMAGE_EXTENSIONS.contains(&extension(path).as_str())
}

/// The sibling landmark file of an image: `x.pts`, else `x.land`.
fn sibling_landmarks(image: &Path) -> Option<PathBuf> {
    ["pts", "land", "PTS", "LAND"].iter().map(|e| image.with_extension(e)).find(|p| p.is_file())
}

/// All image files under `dir`, sorted by path for a deterministic order. Hidden entries are
/// skipped; symlinked folders are followed, each real folder listed once (a link back up, as
/// `ln -s . loop`, would otherwise list everything again at every depth), to a fixed depth. A
/// folder that cannot be listed is passed to `unreadable` and skipped; the scan goes on.
pub fn scan_images(dir: &Path, mut unreadable: impl FnMut(&Path, std::io::Error)) -> Vec<PathBuf> {
    const MAX_DEPTH: usize = 32;
    let mut out = Vec::new();
    let mut listed = std::collections::HashSet::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        if !listed.insert(d.canonicalize().unwrap_or_else(|_| d.clone())) {
            continue;
        }
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                unreadable(&d, e);
                continue;
            }
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((p, depth + 1));
                }
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Turn the inputs into candidates (in input order), recording what is unusable up front. An
/// image met twice (two inputs, a folder and a manifest, a link) is kept once, at its first
/// mention: one face, one record, never in both splits.
fn gather(inputs: &[PathBuf], report: &mut PrepareReport) -> Vec<(PathBuf, LandmarkSource)> {
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::new();
    for (image, l) in gather_all(inputs, report) {
        if seen.insert(crate::io::same_file_key(&image)) {
            unique.push((image, l));
        } else {
            report.skip(SkipReason::Duplicate, format!("{}", image.display()));
        }
    }
    unique
}

/// Every (image, landmarks) the inputs name, duplicates included.
fn gather_all(inputs: &[PathBuf], report: &mut PrepareReport) -> Vec<(PathBuf, LandmarkSource)> {
    let mut out = Vec::new();
    let add_image = |img: PathBuf, out: &mut Vec<_>, report: &mut PrepareReport| {
        report.found += 1;
        match sibling_landmarks(&img) {
            Some(l) => out.push((img, LandmarkSource::File(l))),
            None => report.skip(SkipReason::MissingLandmarks, format!("{}", img.display())),
        }
    };
    for input in inputs {
        if input.is_dir() {
            for img in scan_images(input, |d, e| report.skip(SkipReason::BadInput, format!("{}: {e}", d.display()))) {
                add_image(img, &mut out, report);
            }
        } else if input.is_file() && matches!(extension(input).as_str(), "json" | "csv") {
            match read_manifest(input) {
                Ok(entries) => {
                    for e in entries {
                        report.found += 1;
                        match e {
                            Ok(e) => out.push((e.image, LandmarkSource::Given(Box::new(e.landmarks)))),
                            Err(err) => report.skip(SkipReason::MalformedLandmarks, err.to_string()),
                        }
                    }
                }
                Err(err) => report.skip(SkipReason::BadInput, err.to_string()),
            }
        } else if input.is_file() && is_image(input) {
            add_image(input.clone(), &mut out, report);
        } else if input.exists() {
            report.skip(
                SkipReason::BadInput,
                format!("{}: not a folder, an image or a .json/.csv manifest", input.display()),
            );
        } else {
            report.skip(SkipReason::BadInput, format!("{}: no such file or folder", input.display()));
        }
    }
    out
}

/// Indices (into `n` packed faces) that go to validation: `round(fraction * n)` of them, at least
/// one when the fraction is positive, and never all of them (none when n < 2).
/// Chosen by a seeded shuffle so the split depends only on (seed, the faces' order).
fn validation_set(n: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let mut k = (fraction * n as f64).round() as usize;
    if n < 2 {
        k = 0; // a lone face is more useful for training
    } else if fraction > 0.0 {
        k = k.clamp(1, n - 1);
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut val = vec![false; n];
    for &i in &order[..k] {
        val[i] = true;
    }
    val
}

type Processed = std::result::Result<(Record, RecordMeta), (SkipReason, String)>;

fn process(c: &Candidate, cfg: &PrepareConfig) -> Processed {
    let (mut lm, is_land) = match &c.landmarks {
        LandmarkSource::File(p) => match read_landmark_file(p) {
            Ok(lm) => (lm, extension(p) == "land"),
            Err(e) => return Err((SkipReason::MalformedLandmarks, e.to_string())),
        },
        LandmarkSource::Given(lm) => ((**lm).clone(), false),
    };
    let name = c.image.display();
    let Some(bbox) = lm.bbox() else {
        return Err((SkipReason::LowConfidence, format!("{name}: no landmark has confidence > 0")));
    };
    let mean_conf = lm.mean_confidence();
    if mean_conf < cfg.min_confidence {
        return Err((
            SkipReason::LowConfidence,
            format!("{name}: mean confidence {mean_conf:.3} < {}", cfg.min_confidence),
        ));
    }
    let face = (bbox[2] - bbox[0]).max(bbox[3] - bbox[1]);
    if face < cfg.min_face {
        return Err((SkipReason::FaceTooSmall, format!("{name}: face {face:.1} px < {} px", cfg.min_face)));
    }
    let img = match read_rgb8(&c.image) {
        Ok(img) => img,
        Err(e) => return Err((SkipReason::UnreadableImage, e.to_string())),
    };
    let (w, h) = (img.width() as f32, img.height() as f32);
    if is_land && cfg.land_y_up {
        for p in lm.points.iter_mut() {
            p[1] = h - p[1];
        }
    }
    let tol = cfg.outside_tolerance * face;
    let outside = lm
        .points
        .iter()
        .zip(&lm.confidence)
        .position(|(p, &conf)| conf > 0.0 && (p[0] < -tol || p[1] < -tol || p[0] > w + tol || p[1] > h + tol));
    if let Some(i) = outside {
        let p = lm.points[i];
        return Err((
            SkipReason::LandmarksOutside,
            format!("{name}: landmark {i} at ({:.1}, {:.1}) is outside the {w}x{h} image", p[0], p[1]),
        ));
    }
    let crop = match crop_face(&img, &lm, &cfg.crop) {
        Ok(c) => c,
        // Only degenerate landmark layouts get here (the checks above bound the box).
        Err(e) => return Err((SkipReason::MalformedLandmarks, format!("{name}: {e}"))),
    };
    let b = crop.face_box;
    let record = Record {
        image: crop.image.into_raw(),
        landmarks: crop.landmarks.points,
        confidence: crop.landmarks.confidence,
    };
    // The split is drawn once every face is checked (`prepare`).
    let meta = RecordMeta {
        source: c.image.to_string_lossy().into_owned(),
        face_box: [b.x0, b.y0, b.side],
        split: Split::Train,
    };
    Ok((record, meta))
}

/// The inputs for messages: "a, b" or "a, b, ... (N inputs)".
fn names(inputs: &[PathBuf]) -> String {
    let shown: Vec<String> = inputs.iter().take(3).map(|p| p.display().to_string()).collect();
    if inputs.len() > 3 { format!("{}, ... ({} inputs)", shown.join(", "), inputs.len()) } else { shown.join(", ") }
}

/// Run `prepare`: read `inputs` (folders, images, `.json`/`.csv` manifests), write the dataset
/// to `output` atomically, and return the report. Fails (writing nothing) only when no face is
/// usable or the output cannot be written; the error then carries the skip summary.
pub fn prepare(inputs: &[PathBuf], output: &Path, cfg: &PrepareConfig) -> Result<PrepareReport> {
    cfg.validate()?;
    if output.is_dir() {
        return Err(Error::invalid(format!(
            "{}: output is a folder; give a file name such as faces.fmlds",
            output.display()
        )));
    }
    let mut report = PrepareReport::default();
    let gathered = gather(inputs, &mut report);
    // The dataset must not replace a manifest, an image or a landmark file it was made from.
    let sources = gathered.iter().flat_map(|(image, l)| {
        let file = match l {
            LandmarkSource::File(f) => Some(f.as_path()),
            LandmarkSource::Given(_) => None,
        };
        std::iter::once(image.as_path()).chain(file)
    });
    crate::io::refuse_overwrite("output", output, inputs.iter().map(PathBuf::as_path).chain(sources))?;
    let candidates: Vec<Candidate> =
        gathered.into_iter().map(|(image, landmarks)| Candidate { image, landmarks }).collect();
    if candidates.is_empty() {
        return Err(Error::invalid(format!("no usable faces in {}: nothing was written\n{report}", names(inputs))));
    }

    let info = serde_json::json!({
        "created_by": format!("fml {}", env!("CARGO_PKG_VERSION")),
        "inputs": inputs.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        "margin": cfg.crop.margin,
        "pad": cfg.crop.pad,
        "filter": format!("{:?}", cfg.crop.filter),
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "min_face": cfg.min_face,
        "min_confidence": cfg.min_confidence,
        "outside_tolerance": cfg.outside_tolerance,
        "land_y_up": cfg.land_y_up,
    });
    // The output's folder first: a path that cannot be written fails before any face is read.
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::io::create_dir(parent)?;
    }
    let n_candidates = candidates.len();
    let pb = crate::progress::Progress::new("prepare", "faces", candidates.len(), cfg.progress);
    let chunk = cfg.chunk.max(1);
    let mut skips: Vec<(SkipReason, String)> = Vec::new();
    let (mut n_train, mut n_val) = (0, 0);
    // Chunks are decoded in parallel and collected in order, so the file is identical for any
    // number of threads; only one chunk of crops is in memory at a time.
    let records = candidates.chunks(chunk).flat_map(|part| {
        let done: Vec<Processed> = part
            .par_iter()
            .map(|c| {
                let r = process(c, cfg);
                if r.is_err() {
                    pb.fail(1);
                }
                pb.inc(1);
                r
            })
            .collect();
        let mut kept = Vec::with_capacity(done.len());
        for r in done {
            match r {
                Ok(ok) => kept.push(ok),
                Err(skip) => skips.push(skip),
            }
        }
        kept
    });
    // The split is drawn over the faces that were packed, not over the candidates: faces
    // skipped afterwards would otherwise shift the fraction, and could leave no training face.
    let written = write_dataset_then(output, cfg.crop.size, info, records, |metas| {
        let val = validation_set(metas.len(), cfg.val_fraction, cfg.seed);
        for (meta, v) in metas.iter_mut().zip(val) {
            meta.split = if v { Split::Val } else { Split::Train };
        }
        n_val = metas.iter().filter(|m| m.split == Split::Val).count();
        n_train = metas.len() - n_val;
    });
    pb.finish();
    // Every face skipped (not a write that failed part-way, which keeps its own error).
    let all_skipped = skips.len() == n_candidates;
    for (reason, msg) in skips {
        report.skip(reason, msg);
    }
    report.train = n_train;
    report.val = n_val;
    match written {
        Ok(_) => Ok(report),
        Err(Error::Invalid(_)) if n_train + n_val == 0 && all_skipped => {
            Err(Error::invalid(format!("no usable faces in {}: nothing was written\n{report}", names(inputs))))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::Augment;
    use crate::data::dataset::Dataset;
    use crate::data::landmarks::write_pts;
    use crate::data::loader::{Loader, LoaderConfig, Position};
    use image::{ImageBuffer, Luma, Rgb, RgbImage, Rgba};

    /// 68 points on an ellipse around (cx, cy), each at a pixel centre.
    fn face_points(cx: f32, cy: f32, rx: f32, ry: f32) -> Landmarks68 {
        let mut lm = Landmarks68 { points: [[0.0; 2]; 68], confidence: [1.0; 68] };
        for (i, p) in lm.points.iter_mut().enumerate() {
            let a = i as f32 / 68.0 * std::f32::consts::TAU;
            *p = [(cx + rx * a.cos()).floor() + 0.5, (cy + ry * a.sin()).floor() + 0.5];
        }
        lm
    }

    const DOTS: [(usize, [u8; 3]); 3] = [(36, [255, 0, 0]), (45, [0, 255, 0]), (30, [0, 0, 255])];

    /// An image with 5x5 coloured dots centred on landmarks 36, 45 and 30.
    fn dotted(w: u32, h: u32, lm: &Landmarks68) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for (i, c) in DOTS {
            let [u, v] = lm.points[i];
            let (x, y) = (u as i64, v as i64);
            for yy in y - 2..=y + 2 {
                for xx in x - 2..=x + 2 {
                    img.put_pixel(xx as u32, yy as u32, Rgb(c));
                }
            }
        }
        img
    }

    fn save_face(dir: &Path, name: &str, img: &RgbImage, lm: &Landmarks68) {
        img.save(dir.join(name)).unwrap();
        write_pts(dir.join(name).with_extension("pts"), lm).unwrap();
    }

    fn quiet(size: u32) -> PrepareConfig {
        PrepareConfig { crop: CropConfig { size, ..Default::default() }, progress: false, ..Default::default() }
    }

    /// Centroid of channel `ch` where it dominates, in a `[3, S, S]` image.
    fn centroid(img: &[f32], s: usize, ch: usize) -> [f32; 2] {
        let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
        for y in 0..s {
            for x in 0..s {
                let v: Vec<f32> = (0..3).map(|c| img[c * s * s + y * s + x]).collect();
                let w = (v[ch] - v[(ch + 1) % 3].max(v[(ch + 2) % 3])).max(0.0);
                sx += w * (x as f32 + 0.5);
                sy += w * (y as f32 + 0.5);
                sw += w;
            }
        }
        assert!(sw > 0.0, "no dot of channel {ch}");
        [sx / sw, sy / sw]
    }

    #[test]
    fn dots_land_on_mapped_landmarks_after_prepare_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let faces =
            [(300, 200, face_points(150.0, 100.0, 60.0, 70.0)), (120, 160, face_points(40.0, 90.0, 35.0, 50.0))];
        for (k, (w, h, lm)) in faces.iter().enumerate() {
            save_face(dir.path(), &format!("f{k}.png"), &dotted(*w, *h, lm), lm);
        }
        let out = dir.path().join("out/d.fmlds");
        let cfg = PrepareConfig { val_fraction: 0.0, ..quiet(96) };
        let report = prepare(&[dir.path().to_path_buf()], &out, &cfg).unwrap();
        assert_eq!((report.train, report.val, report.total_skipped()), (2, 0, 0), "{report}");
        let ds = Dataset::open(&out).unwrap();
        assert_eq!(ds.header().records[1].source, dir.path().join("f1.png").to_string_lossy());

        let base = LoaderConfig { batch_size: 2, shuffle: false, split: None, ..LoaderConfig::default() };
        let plain = Loader::new(&out, base.clone()).unwrap().batch_at(Position::default()).unwrap();
        let flip = LoaderConfig { augment: Augment { flip_prob: 1.0, ..Augment::none() }, ..base };
        let flipped = Loader::new(&out, flip).unwrap().batch_at(Position::default()).unwrap();
        let s = 96;
        for b in 0..2 {
            let img = &plain.images[b * 3 * s * s..(b + 1) * 3 * s * s];
            let fimg = &flipped.images[b * 3 * s * s..(b + 1) * 3 * s * s];
            for (ch, (i, _)) in DOTS.iter().enumerate() {
                let c = centroid(img, s, ch);
                let l = &plain.landmarks[(b * 68 + i) * 2..][..2];
                assert!(
                    (c[0] - l[0]).abs() < 0.05 && (c[1] - l[1]).abs() < 0.05,
                    "face {b} point {i}: dot {c:?} landmark {l:?}"
                );
                // After a flip the dot drawn at landmark i sits at landmark FLIP[i] (36 <-> 45).
                let j = crate::data::scheme::IBUG68_FLIP[*i];
                let fc = centroid(fimg, s, ch);
                let fl = &flipped.landmarks[(b * 68 + j) * 2..][..2];
                assert!(
                    (fc[0] - fl[0]).abs() < 0.05 && (fc[1] - fl[1]).abs() < 0.05,
                    "flipped {b} {i}->{j}: {fc:?} vs {fl:?}"
                );
            }
        }
    }

    #[test]
    fn skip_summary_counts_every_reason_and_run_continues() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let lm = face_points(80.0, 80.0, 40.0, 50.0);
        let img = dotted(160, 160, &lm);
        save_face(d, "good1.png", &img, &lm);
        save_face(d, "good2.jpg", &img, &lm);
        std::fs::create_dir(d.join("sub")).unwrap();
        save_face(&d.join("sub"), "deep.bmp", &img, &lm);
        // Grayscale 16-bit and RGBA images are converted, not skipped.
        ImageBuffer::from_pixel(160, 160, Luma([40000u16])).save(d.join("gray16.png")).unwrap();
        write_pts(d.join("gray16.pts"), &lm).unwrap();
        ImageBuffer::from_pixel(160, 160, Rgba([10u8, 20, 30, 128])).save(d.join("rgba.png")).unwrap();
        write_pts(d.join("rgba.pts"), &lm).unwrap();
        // A .land file with a count line, 66 points.
        img.save(d.join("land66.png")).unwrap();
        let mut land = String::from("66\n");
        for (i, p) in lm.points.iter().enumerate() {
            if i != 60 && i != 64 {
                land += &format!("{} {}\n", p[0], p[1]);
            }
        }
        std::fs::write(d.join("land66.land"), land).unwrap();

        img.save(d.join("nolm.png")).unwrap();
        img.save(d.join("short.png")).unwrap();
        let pts = std::fs::read_to_string(d.join("good1.pts")).unwrap();
        std::fs::write(d.join("short.pts"), pts.replace("n_points: 68", "n_points: 67")).unwrap();
        img.save(d.join("nan.png")).unwrap();
        let first_point = pts.lines().nth(3).unwrap().to_string();
        std::fs::write(d.join("nan.pts"), pts.replacen(&first_point, "NaN 3", 1)).unwrap();
        let png = std::fs::read(d.join("good1.png")).unwrap();
        std::fs::write(d.join("trunc.png"), &png[..png.len() / 3]).unwrap();
        write_pts(d.join("trunc.pts"), &lm).unwrap();
        save_face(d, "small.png", &img, &face_points(80.0, 80.0, 10.0, 12.0));
        let mut out_lm = lm.clone();
        out_lm.points[0] = [-50.0, 80.0];
        save_face(d, "outside.png", &img, &out_lm);
        let mut low = lm.clone();
        low.confidence = [0.2; 68];
        save_face(d, "lowconf.png", &img, &low);
        // A CSV manifest with one good and one bad row, and a JSON manifest that does not parse.
        let row: String = lm.points.iter().map(|p| format!(",{},{}", p[0], p[1])).collect();
        std::fs::write(d.join("m.csv"), format!("image,x0\ngood1.png{row}\nnolm.png,1,2\n")).unwrap();
        std::fs::write(d.join("broken.json"), "[{").unwrap();
        std::fs::write(d.join("notes.txt"), "hello").unwrap();

        let inputs =
            [d.to_path_buf(), d.join("m.csv"), d.join("broken.json"), d.join("missing_dir"), d.join("notes.txt")];
        let cfg = PrepareConfig { min_confidence: 0.5, val_fraction: 0.3, ..quiet(48) };
        let out = d.join("d.fmlds");
        let r = prepare(&inputs, &out, &cfg).unwrap();
        let count = |k| r.skipped.get(&k).copied().unwrap_or(0);
        assert_eq!(count(SkipReason::MissingLandmarks), 1, "{r}");
        assert_eq!(count(SkipReason::MalformedLandmarks), 3, "{r}"); // short, nan, csv row
        assert_eq!(count(SkipReason::UnreadableImage), 1, "{r}");
        assert_eq!(count(SkipReason::FaceTooSmall), 1, "{r}");
        assert_eq!(count(SkipReason::LandmarksOutside), 1, "{r}");
        assert_eq!(count(SkipReason::LowConfidence), 1, "{r}");
        assert_eq!(count(SkipReason::BadInput), 3, "{r}"); // broken.json, missing_dir, notes.txt
        assert_eq!(count(SkipReason::Duplicate), 1, "{r}"); // good1.png again, from the CSV
        assert_eq!(r.train + r.val, 6, "{r}"); // good1, good2, deep, gray16, rgba, land66
        assert_eq!(r.val, 2, "{r}"); // round(0.3 * 6 packed faces)
        assert_eq!(r.found, 15, "{r}"); // 13 images in the folder + 2 CSV rows
        let text = r.to_string();
        assert!(text.contains("short.pts") && text.contains("67 landmarks"), "{text}");
        assert!(text.contains("trunc.png"), "{text}");
        let ds = Dataset::open(&out).unwrap();
        assert_eq!(ds.len(), 6);
        assert_eq!(ds.indices(Some(Split::Val)).len(), r.val);
        // The 16-bit gray face is gray (40000 / 257 = 155.6 -> 156) and the RGBA one composited.
        let gi = ds.header().records.iter().position(|m| m.source.ends_with("gray16.png")).unwrap();
        assert_eq!(&ds.read(gi).unwrap().image[..3], &[156, 156, 156]);
        let ri = ds.header().records.iter().position(|m| m.source.ends_with("rgba.png")).unwrap();
        assert_eq!(&ds.read(ri).unwrap().image[..3], &[5, 10, 15]);
        let li = ds.header().records.iter().position(|m| m.source.ends_with("land66.png")).unwrap();
        assert_eq!(ds.read(li).unwrap().confidence[60], 0.0);

        // Same inputs, same seed: byte-identical file; the split follows the seed.
        let again = d.join("again.fmlds");
        prepare(&inputs, &again, &cfg).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        let other: Vec<Vec<usize>> = (1..6)
            .map(|seed| {
                let p = d.join(format!("s{seed}.fmlds"));
                prepare(&inputs, &p, &PrepareConfig { seed, ..cfg.clone() }).unwrap();
                Dataset::open(&p).unwrap().indices(Some(Split::Val))
            })
            .collect();
        assert!(other.iter().any(|v| *v != ds.indices(Some(Split::Val))), "split ignores the seed");
    }

    /// The split is drawn over the faces that were packed: with one of two faces skipped, the
    /// other trains (drawn over the candidates it could have been the validation face, leaving
    /// no training record).
    #[test]
    fn the_split_is_drawn_after_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let img = RgbImage::from_pixel(160, 160, image::Rgb([90, 90, 90]));
        for seed in 0..8 {
            let sub = d.join(format!("s{seed}"));
            std::fs::create_dir(&sub).unwrap();
            save_face(&sub, "a.png", &img, &face_points(80.0, 80.0, 40.0, 50.0));
            save_face(&sub, "b.png", &img, &face_points(80.0, 80.0, 3.0, 3.0)); // too small
            let cfg = PrepareConfig { val_fraction: 0.5, seed, ..quiet(32) };
            let r = prepare(std::slice::from_ref(&sub), &d.join(format!("{seed}.fmlds")), &cfg).unwrap();
            assert_eq!((r.train, r.val), (1, 0), "seed {seed}: {r}");
        }
    }

    /// A folder reached twice (a link back up) is listed once; an image given twice is packed once.
    #[cfg(unix)]
    #[test]
    fn links_and_repeated_inputs_give_each_face_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let img = RgbImage::from_pixel(160, 160, image::Rgb([90, 90, 90]));
        save_face(d, "a.png", &img, &face_points(80.0, 80.0, 40.0, 50.0));
        std::fs::create_dir(d.join("sub")).unwrap();
        save_face(&d.join("sub"), "b.png", &img, &face_points(80.0, 80.0, 40.0, 50.0));
        std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
        std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
        let found = scan_images(d, |p, e| panic!("{}: {e}", p.display()));
        assert_eq!(found.len(), 2, "{found:?}");
        let r = prepare(&[d.to_path_buf(), d.join("sub"), d.join("a.png")], &d.join("o.fmlds"), &quiet(32)).unwrap();
        // Found 5: a, sub/b (from d); sub/b, sub/up/a (from sub); a.png; packed 2.
        assert_eq!((r.train + r.val, r.skipped.get(&SkipReason::Duplicate).copied()), (2, Some(3)), "{r}");
    }

    #[test]
    fn nothing_usable_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d.fmlds");
        let e = prepare(&[dir.path().to_path_buf()], &out, &quiet(32)).unwrap_err().to_string();
        assert!(e.contains("no usable faces"), "{e}");
        RgbImage::new(10, 10).save(dir.path().join("a.png")).unwrap();
        let e = prepare(&[dir.path().to_path_buf()], &out, &quiet(32)).unwrap_err().to_string();
        assert!(e.contains("no usable faces") && e.contains("missing landmarks"), "{e}");
        write_pts(dir.path().join("a.pts"), &face_points(5.0, 5.0, 2.0, 2.0)).unwrap();
        let e = prepare(&[dir.path().to_path_buf()], &out, &quiet(32)).unwrap_err().to_string();
        assert!(e.contains("face too small"), "{e}");
        assert!(!out.exists());
        assert!(prepare(&[dir.path().to_path_buf()], &out, &PrepareConfig { val_fraction: 1.0, ..quiet(32) }).is_err());
    }

    /// Every float option refuses NaN, infinities and values out of range, by its option name,
    /// before anything is read or written.
    #[test]
    fn float_options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d.fmlds");
        let ok = quiet(32);
        ok.validate().unwrap();
        let with = |f: &dyn Fn(&mut PrepareConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c
        };
        let cases: Vec<(PrepareConfig, &str)> = vec![
            (with(&|c| c.outside_tolerance = f32::NAN), "--outside-tolerance NaN"),
            (with(&|c| c.outside_tolerance = f32::INFINITY), "--outside-tolerance inf"),
            (with(&|c| c.outside_tolerance = -0.1), "--outside-tolerance -0.1"),
            (with(&|c| c.min_face = f32::NAN), "--min-face NaN"),
            (with(&|c| c.min_face = -1.0), "--min-face -1"),
            (with(&|c| c.min_face = f32::INFINITY), "--min-face inf"),
            (with(&|c| c.min_confidence = f32::NAN), "--min-confidence NaN"),
            (with(&|c| c.min_confidence = 1.5), "--min-confidence 1.5"),
            (with(&|c| c.crop.margin = f32::NAN), "--margin NaN"),
            (with(&|c| c.crop.margin = 0.0), "--margin 0"),
            (with(&|c| c.crop.margin = 1e6), "--margin 1000000"),
            (with(&|c| c.val_fraction = f64::NAN), "--val-fraction NaN"),
            (with(&|c| c.val_fraction = -0.5), "--val-fraction -0.5"),
            (with(&|c| c.crop.size = 0), "--size 0"),
        ];
        for (cfg, expect) in cases {
            let e = prepare(&[dir.path().join("missing")], &out, &cfg).unwrap_err().to_string();
            assert!(e.starts_with(expect), "{expect}: {e}");
        }
        assert!(!out.exists());
        // The limits themselves are accepted.
        for c in [
            with(&|c| c.outside_tolerance = 0.0),
            with(&|c| c.min_face = 0.0),
            with(&|c| c.min_confidence = 1.0),
            with(&|c| c.crop.margin = MAX_MARGIN),
            with(&|c| c.val_fraction = 0.0),
        ] {
            c.validate().unwrap();
        }
    }

    /// With a NaN tolerance every comparison was false and a landmark far outside passed.
    #[test]
    fn nan_outside_tolerance_does_not_let_outside_landmarks_through() {
        let dir = tempfile::tempdir().unwrap();
        let lm = face_points(80.0, 80.0, 40.0, 50.0);
        let mut far = lm.clone();
        far.points[0] = [-50.0, 80.0];
        save_face(dir.path(), "outside.png", &dotted(160, 160, &lm), &far);
        let out = dir.path().join("d.fmlds");
        let e = prepare(&[dir.path().to_path_buf()], &out, &quiet(32)).unwrap_err().to_string();
        assert!(e.contains("landmarks outside the image"), "{e}");
        let cfg = PrepareConfig { outside_tolerance: f32::NAN, ..quiet(32) };
        let e = prepare(&[dir.path().to_path_buf()], &out, &cfg).unwrap_err().to_string();
        assert!(e.contains("--outside-tolerance NaN"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn validation_set_sizes() {
        let count = |n, f| validation_set(n, f, 3).iter().filter(|&&v| v).count();
        assert_eq!(count(1000, 0.02), 20);
        assert_eq!(count(10, 0.02), 1);
        assert_eq!(count(1, 0.5), 0);
        assert_eq!(count(2, 0.9), 1);
        assert_eq!(count(50, 0.0), 0);
        assert_eq!(validation_set(100, 0.1, 7), validation_set(100, 0.1, 7));
        assert_ne!(validation_set(100, 0.1, 7), validation_set(100, 0.1, 8));
    }
}
