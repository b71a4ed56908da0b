//! `fml reconstruct` as a library call: turning the command line's inputs (images, folders,
//! `.txt` lists) into a plan of inputs and output paths, running it in batches with a progress
//! display, writing every output atomically, and collecting failures without stopping.
//!
//! Choices (the task leaves them open):
//! - Folders are searched recursively (hidden entries skipped, sorted by path); an image's
//!   output name is its path relative to the folder without the extension, so `a/x.png` and
//!   `b/x.png` do not collide and the output tree mirrors the input tree.
//! - A `.txt` list holds one image path per line, relative to the list's folder; blank lines and
//!   lines starting with `#` are skipped. Its outputs are named by file stem.
//! - Names that still collide (two `x.png` given by path or in a list) get `-2`, `-3`, ...
//! - Crops, unless `--bbox` / `--landmarks` / `--whole` decide: a sibling `x.pts` (else `x.land`)
//!   next to `x.png` gives the landmark crop; without one the image is taken as a ready crop.
//!   This applies to single images, folders and lists alike, so one image behaves the same
//!   alone or in a folder.
//! - Folder scans skip `*.overlay.png`, the overlays this command writes, so that a second run
//!   into the same folder does not take them for faces.
//! - No output may replace an input (an image or a landmark file) or another output: one image
//!   so aimed is refused; in a batch those items fail and the rest run.

use super::reconstruct::{CropSpec, InputImage, Reconstruction, Reconstructor, sibling_landmarks};
use crate::data::prepare::scan_images;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mesh file format of folder outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshFormat {
    Obj,
    Ply,
}

impl MeshFormat {
    fn extension(self) -> &'static str {
        match self {
            MeshFormat::Obj => "obj",
            MeshFormat::Ply => "ply",
        }
    }
}

/// How every input is cropped.
#[derive(Clone, Debug, PartialEq)]
pub enum CropChoice {
    /// Sibling landmark file if there is one, else the whole image (module docs).
    Auto,
    /// Every image is a ready face crop.
    Whole,
    /// The same `[x, y, w, h]` crop box for every image.
    BBox([f32; 4]),
    /// One landmark file (only with a single input image).
    Landmarks(PathBuf),
}

/// An optional output: off, on (path derived from the mesh path), or at a given path.
#[derive(Clone, Debug, PartialEq)]
pub enum Extra {
    Off,
    Beside,
    At(PathBuf),
}

/// What `fml reconstruct` was asked.
#[derive(Clone, Debug)]
pub struct Request {
    /// Images, folders and `.txt` lists.
    pub inputs: Vec<PathBuf>,
    /// A mesh path (.obj / .ply) for one image, else a directory.
    pub output: PathBuf,
    pub params: Extra,
    pub overlay: Extra,
    /// Format of meshes written into a directory.
    pub mesh_format: MeshFormat,
    pub crop: CropChoice,
}

/// One input and its output paths.
#[derive(Clone, Debug)]
pub struct PlanItem {
    /// Short name for messages (the output name).
    pub name: String,
    pub input: InputImage,
    pub mesh: PathBuf,
    pub params: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
}

impl PlanItem {
    /// Every file this item writes, named as the command line names it: (what, path).
    pub fn outputs(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [("the mesh", Some(&self.mesh)), ("--params", self.params.as_ref()), ("--overlay", self.overlay.as_ref())]
            .into_iter()
            .filter_map(|(what, p)| p.map(|p| (what, p.as_path())))
    }
}

/// An input that produced no output, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub input: String,
    pub error: String,
}

/// The work of a request plus the inputs that failed before any work (a missing path, an
/// unreadable list file).
#[derive(Clone, Debug)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    pub failures: Vec<Failure>,
    /// True when the output is one mesh file rather than a directory.
    pub single: bool,
}

/// Outcome of [`run`].
#[derive(Clone, Debug)]
pub struct Report {
    /// Inputs seen (planned plus failed while planning).
    pub total: usize,
    /// Inputs whose outputs were all written.
    pub written: usize,
    pub failures: Vec<Failure>,
    pub seconds: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reconstructed {} of {} inputs in {:.1} s", self.written, self.total, self.seconds)?;
        if !self.failures.is_empty() {
            write!(f, "; {} failed:", self.failures.len())?;
            for x in &self.failures {
                // Most errors already start with the file they are about.
                if x.error.starts_with(&x.input) {
                    write!(f, "\n  {}", x.error)?;
                } else {
                    write!(f, "\n  {}: {}", x.input, x.error)?;
                }
            }
        }
        Ok(())
    }
}

/// An overlay written by `fml reconstruct --overlay` into a folder of outputs (`x.overlay.png`).
fn is_overlay_output(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".overlay.png"))
}

fn is_list(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt"))
}

/// Image paths of a `.txt` list, resolved against the list's folder.
fn read_list(list: &Path) -> Result<Vec<PathBuf>> {
    let text = crate::io::read_text(list)?;
    let base = list.parent().unwrap_or(Path::new(""));
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| base.join(l)).collect())
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

/// `dir/x/y.png` under `dir` -> "x/y".
fn relative_name(dir: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(dir).unwrap_or(p).with_extension("");
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// Turn a request into a plan. Errors only for a request that cannot mean anything (a value
/// given to --params with several inputs, a mesh path with an unknown extension, ...); bad
/// inputs become failures.
pub fn plan(req: &Request) -> Result<Plan> {
    if req.inputs.is_empty() {
        return Err(Error::invalid("no input images"));
    }
    let one_image = req.inputs.len() == 1 && !req.inputs[0].is_dir() && !is_list(&req.inputs[0]);
    let out_is_dir = req.output.is_dir() || req.output.as_os_str().to_string_lossy().ends_with('/');
    let single = one_image && !out_is_dir;

    // Gather (name, image path) in input order.
    let mut failures = Vec::new();
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    for input in &req.inputs {
        if input.is_dir() {
            let found = scan_images(input, |d, e| {
                failures.push(Failure { input: d.display().to_string(), error: e.to_string() })
            });
            // fml's own overlays (x.overlay.png) are outputs, not faces: a second run into the
            // same folder would otherwise reconstruct them and aim x's overlay at an input.
            let found: Vec<PathBuf> = found.into_iter().filter(|p| !is_overlay_output(p)).collect();
            if found.is_empty() {
                failures.push(Failure { input: input.display().to_string(), error: "no images in this folder".into() });
            }
            images.extend(found.into_iter().map(|p| (relative_name(input, &p), p)));
        } else if is_list(input) {
            match read_list(input) {
                Ok(list) if list.is_empty() => failures
                    .push(Failure { input: input.display().to_string(), error: "no images in this list".into() }),
                Ok(list) => images.extend(list.into_iter().map(|p| (stem(&p), p))),
                Err(e) => failures.push(Failure { input: input.display().to_string(), error: e.to_string() }),
            }
        } else if !input.exists() {
            failures.push(Failure { input: input.display().to_string(), error: "no such file".into() });
        } else {
            // Unreadable files fail when they are read, with the decoder's message.
            images.push((stem(input), input.clone()));
        }
    }
    if let CropChoice::Landmarks(l) = &req.crop
        && images.len() != 1
    {
        return Err(Error::invalid(format!(
            "--landmarks {} names one landmark file but there are {} images; for several images put \
                 x.pts beside each x.png",
            l.display(),
            images.len()
        )));
    }
    let crop_for = |img: &Path| match &req.crop {
        CropChoice::Whole => CropSpec::Whole,
        CropChoice::BBox(b) => CropSpec::BBox(*b),
        CropChoice::Landmarks(l) => CropSpec::Landmarks(l.clone()),
        CropChoice::Auto => sibling_landmarks(img).map_or(CropSpec::Whole, CropSpec::Landmarks),
    };

    let mut items = Vec::new();
    if single {
        crate::io::mesh::check_save_path(&req.output)
            .map_err(|e| Error::invalid(format!("{e}; for a directory of outputs end the path with /")))?;
        let beside = |suffix: &str| req.output.with_file_name(format!("{}{suffix}", stem(&req.output)));
        let extra = |x: &Extra, suffix: &str| match x {
            Extra::Off => None,
            Extra::Beside => Some(beside(suffix)),
            Extra::At(p) => Some(p.clone()),
        };
        if let Some((name, img)) = images.pop() {
            items.push(PlanItem {
                name,
                input: InputImage::file(&img, crop_for(&img)),
                mesh: req.output.clone(),
                params: extra(&req.params, ".json"),
                overlay: extra(&req.overlay, ".overlay.png"),
            });
        }
    } else {
        let ext = req.output.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        let slash = req.output.as_os_str().to_string_lossy().ends_with('/');
        if !req.output.is_dir() && !slash && matches!(ext.as_deref(), Some("obj" | "ply")) {
            return Err(Error::invalid(format!(
                "{}: with a folder, a list or several images the output is a folder of meshes, and this \
                 names a mesh file (give a folder; --mesh-format picks .obj or .ply)",
                req.output.display()
            )));
        }
        for (flag, x) in [("--params", &req.params), ("--overlay", &req.overlay)] {
            if let Extra::At(p) = x {
                return Err(Error::invalid(format!(
                    "with several inputs or an output directory, {flag} is a flag (it writes one file beside each \
                     mesh); drop the value {}",
                    p.display()
                )));
            }
        }
        let mut taken = HashSet::new();
        for (name, img) in images {
            let mut unique = name.clone();
            let mut k = 1;
            while !taken.insert(unique.clone()) {
                k += 1;
                unique = format!("{name}-{k}");
            }
            let base = req.output.join(&unique);
            let with = |suffix: &str| {
                let mut s = base.clone().into_os_string();
                s.push(suffix);
                PathBuf::from(s)
            };
            items.push(PlanItem {
                input: InputImage::file(&img, crop_for(&img)),
                mesh: with(&format!(".{}", req.mesh_format.extension())),
                params: (req.params != Extra::Off).then(|| with(".json")),
                overlay: (req.overlay != Extra::Off).then(|| with(".overlay.png")),
                name: unique,
            });
        }
    }
    for it in &items {
        if let Some(o) = &it.overlay {
            image_format(o)?;
        }
    }
    // One image: a refusal. Several: those items fail and the others run.
    let bad = overwrites(&items);
    if single && let Some((_, why)) = bad.first() {
        return Err(Error::invalid(why.clone()));
    }
    for (k, why) in bad.into_iter().rev() {
        let it = items.remove(k);
        failures.push(Failure { input: it.input.name(), error: why });
    }
    Ok(Plan { items, failures, single })
}

/// The image format for an output path: PNG, JPEG or BMP by its extension.
pub fn image_format(path: &Path) -> Result<image::ImageFormat> {
    image::ImageFormat::from_path(path)
        .ok()
        .filter(|f| matches!(f, image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::Bmp))
        .ok_or_else(|| Error::invalid(format!("{}: write images as .png, .jpg or .bmp", path.display())))
}

/// `img` encoded by the extension of `path`.
pub fn encode_image(img: &image::RgbImage, path: &Path) -> Result<Vec<u8>> {
    let format = image_format(path)?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .map_err(|e| Error::invalid(format!("{}: encoding the image: {e}", path.display())))?;
    Ok(bytes)
}

/// Encode `img` by the extension of `path` (PNG, JPEG or BMP) and write it atomically.
pub fn save_image(img: &image::RgbImage, path: &Path) -> Result<()> {
    crate::io::write_atomic_bytes(path, &encode_image(img, path)?)
}

/// Write the mesh, and the parameter record and overlay where planned: all of them or, when one
/// cannot be written, none (earlier files of the item keep their old contents).
pub fn write_outputs(r: &Reconstruction, item: &PlanItem) -> Result<()> {
    let mut group = crate::io::WriteGroup::new();
    r.mesh().stage(&mut group, &item.mesh)?;
    if let Some(p) = &item.params {
        let json = serde_json::to_string_pretty(&r.params).expect("the record serialises");
        group.stage_bytes(p, json.as_bytes())?;
    }
    if let (Some(p), Some(img)) = (&item.overlay, &r.overlay) {
        group.stage_bytes(p, &encode_image(img, p)?)?;
    }
    group.commit()
}

/// The items of a plan that would write over one of the plan's inputs (an image or a landmark
/// file) or write two outputs to one file (both lose data silently): (item index, why).
fn overwrites(items: &[PlanItem]) -> Vec<(usize, String)> {
    let mut inputs = std::collections::HashMap::new();
    for it in items {
        if let Some(p) = it.input.path() {
            inputs.insert(crate::io::same_file_key(p), p.to_path_buf());
        }
        if let CropSpec::Landmarks(l) = &it.input.crop {
            inputs.insert(crate::io::same_file_key(l), l.clone());
        }
    }
    let mut outputs: std::collections::HashMap<PathBuf, (&str, &Path)> = std::collections::HashMap::new();
    let mut bad = Vec::new();
    for (k, it) in items.iter().enumerate() {
        for (what, p) in it.outputs() {
            let key = crate::io::same_file_key(p);
            if let Some(input) = inputs.get(&key) {
                bad.push((
                    k,
                    format!(
                        "{what} {} would overwrite the input {}: choose another output path",
                        p.display(),
                        input.display()
                    ),
                ));
                break;
            }
            if let Some((other, q)) = outputs.insert(key, (what, p)) {
                bad.push((
                    k,
                    format!(
                        "{what} {} and {other} {} are the same file: choose different output paths",
                        p.display(),
                        q.display()
                    ),
                ));
                break;
            }
        }
    }
    bad
}

/// Run a plan in batches of `batch` images: reconstruct, write, and collect failures (planning
/// failures included) without stopping.
pub fn run(rec: &Reconstructor, plan: Plan, batch: usize, progress: bool) -> Report {
    let start = Instant::now();
    let total = plan.items.len() + plan.failures.len();
    let mut failures = plan.failures;
    let mut written = 0;
    let bar = crate::progress::Progress::new("reconstruct", "images", plan.items.len(), progress);
    for chunk in plan.items.chunks(batch.max(1)) {
        let inputs: Vec<InputImage> = chunk.iter().map(|i| i.input.clone()).collect();
        let results = rec.reconstruct_batch(&inputs);
        let outcomes: Vec<Result<()>> =
            results.into_par_iter().zip(chunk).map(|(r, item)| write_outputs(&r?, item)).collect();
        for (o, item) in outcomes.into_iter().zip(chunk) {
            match o {
                Ok(()) => written += 1,
                Err(e) => {
                    bar.fail(1);
                    failures.push(Failure { input: item.input.name(), error: e.to_string() })
                }
            }
        }
        bar.inc(chunk.len());
    }
    bar.finish();
    Report { total, written, failures, seconds: start.elapsed().as_secs_f64() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(inputs: Vec<PathBuf>, output: PathBuf) -> Request {
        Request {
            inputs,
            output,
            params: Extra::Off,
            overlay: Extra::Off,
            mesh_format: MeshFormat::Obj,
            crop: CropChoice::Auto,
        }
    }

    #[test]
    fn plans_single_folder_and_list_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("faces/sub")).unwrap();
        for f in ["faces/a.png", "faces/sub/b.jpg", "faces/.hidden.png", "faces/notes.md", "faces/a.pts"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::write(d.join("list.txt"), "# comment\nfaces/a.png\n\n other/a.png \n").unwrap();

        // One image: OUT is the mesh; extras beside it; the sibling .pts gives the crop.
        let mut r = req(vec![d.join("faces/a.png")], d.join("out/m.ply"));
        r.params = Extra::Beside;
        r.overlay = Extra::At(d.join("o.png"));
        let p = plan(&r).unwrap();
        assert!(p.single);
        assert_eq!(p.items[0].params.as_deref(), Some(d.join("out/m.json").as_path()));
        assert_eq!(p.items[0].overlay.as_deref(), Some(d.join("o.png").as_path()));
        assert_eq!(p.items[0].input.crop, CropSpec::Landmarks(d.join("faces/a.pts")));
        r.output = d.join("out/m.stl");
        assert!(plan(&r).unwrap_err().to_string().contains(".obj"));

        // A folder and a list: a directory of outputs, names deduplicated.
        let mut r = req(vec![d.join("faces"), d.join("list.txt")], d.join("out"));
        r.params = Extra::Beside;
        r.mesh_format = MeshFormat::Ply;
        let p = plan(&r).unwrap();
        assert!(!p.single);
        let names: Vec<&str> = p.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "sub/b", "a-2", "a-3"]);
        assert_eq!(p.items[1].mesh, d.join("out/sub/b.ply"));
        assert_eq!(p.items[1].params.as_deref(), Some(d.join("out/sub/b.json").as_path()));
        assert_eq!(p.items[1].input.crop, CropSpec::Whole);
        assert_eq!(p.items[3].input.name(), d.join("other/a.png").display().to_string());
        r.overlay = Extra::At(d.join("x.png"));
        assert!(plan(&r).unwrap_err().to_string().contains("--overlay is a flag"));
        r.overlay = Extra::Off;
        r.crop = CropChoice::Landmarks(d.join("faces/a.pts"));
        assert!(plan(&r).unwrap_err().to_string().contains("--landmarks"));

        // Empty folders and unreadable lists are failures, not errors.
        std::fs::create_dir_all(d.join("empty")).unwrap();
        let p = plan(&req(vec![d.join("empty"), d.join("nope.txt")], d.join("out"))).unwrap();
        assert_eq!((p.items.len(), p.failures.len()), (0, 2));
    }
}
