//! 2D landmark files: iBUG `.pts`, FaceWarehouse-style `.land`, and JSON/CSV manifests, all
//! read into iBUG-68 order with a per-point confidence.
//!
//! Coordinates are continuous pixel coordinates as in `docs/conventions.md` (top-left image
//! corner at (0, 0), +u right, +v down). Files are taken as they are: no 1-based shift is applied
//! (300-W annotations were made in Matlab and may sit ~1 px off; at 240 px crops that is below
//! the accuracy of automatic landmarks, which the paper trains on).
//!
//! Both 68-point (iBUG / Multi-PIE) and 66-point (tracker, iBUG-68 without the inner mouth
//! corners 60 and 64) files are accepted; the count decides the scheme and points a scheme lacks
//! get confidence 0 (see [`crate::data::scheme::to_ibug68`]).

use super::scheme::to_ibug68;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Number of landmarks stored internally (iBUG-68).
pub const N_LANDMARKS: usize = 68;

/// 68 landmarks in iBUG order with per-point confidence in [0, 1] (0 = missing).
#[derive(Clone, Debug, PartialEq)]
pub struct Landmarks68 {
    /// `[68, 2]` (u, v) in continuous pixel coordinates.
    pub points: [[f32; 2]; N_LANDMARKS],
    /// `[68]` confidence; 1 = certain, 0 = missing (coordinates meaningless).
    pub confidence: [f32; N_LANDMARKS],
}

impl Landmarks68 {
    /// Points of either scheme (66 or 68) with optional confidences, validated: every coordinate
    /// finite and every confidence finite and in [0, 1]. `origin` and `place` (e.g. "line 4",
    /// "entry 2") name the source in errors.
    pub fn from_points(points: &[[f32; 2]], conf: Option<&[f32]>, origin: &Path, place: &str) -> Result<Self> {
        let at = |what: String| Error::format(origin, if place.is_empty() { what } else { format!("{place}: {what}") });
        if let Some(c) = conf {
            if c.len() != points.len() {
                return Err(at(format!("{} confidences for {} landmarks", c.len(), points.len())));
            }
            if let Some(i) = c.iter().position(|x| !(x.is_finite() && (0.0..=1.0).contains(x))) {
                return Err(at(format!("confidence {i} is {} (must be in [0, 1])", c[i])));
            }
        }
        if let Some(i) = points.iter().position(|p| !(p[0].is_finite() && p[1].is_finite())) {
            return Err(at(format!("landmark {i} is not finite: ({}, {})", points[i][0], points[i][1])));
        }
        let (p, c) = to_ibug68(points, conf, origin).map_err(|e| match e {
            Error::Format { what, .. } => at(what),
            other => other,
        })?;
        let mut out = Landmarks68 { points: [[0.0; 2]; N_LANDMARKS], confidence: [0.0; N_LANDMARKS] };
        out.points.copy_from_slice(&p);
        out.confidence.copy_from_slice(&c);
        Ok(out)
    }

    /// Axis-aligned bounding box `[u_min, v_min, u_max, v_max]` of the points with confidence
    /// > 0, or `None` when no point is present.
    pub fn bbox(&self) -> Option<[f32; 4]> {
        let mut b = [f32::INFINITY, f32::INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let mut any = false;
        for (p, &c) in self.points.iter().zip(&self.confidence) {
            if c > 0.0 {
                any = true;
                b = [b[0].min(p[0]), b[1].min(p[1]), b[2].max(p[0]), b[3].max(p[1])];
            }
        }
        any.then_some(b)
    }

    /// Mean confidence over all 68 points.
    pub fn mean_confidence(&self) -> f32 {
        self.confidence.iter().sum::<f32>() / N_LANDMARKS as f32
    }
}

fn parse_f32(tok: &str, path: &Path, line: usize, what: &str) -> Result<f32> {
    let v: f32 = tok
        .parse()
        .map_err(|_| Error::format(path, format!("line {line}: cannot parse {what} {tok:?} as a number")))?;
    if !v.is_finite() {
        return Err(Error::format(path, format!("line {line}: {what} is {tok} (not finite)")));
    }
    Ok(v)
}

/// Points `[K, 2]` and, when the file gives them, their confidences `[K]`.
type PointsAndConfidences = (Vec<[f32; 2]>, Option<Vec<f32>>);

/// Parse "x y" or "x y c" point lines (1-based line numbers in `lines`) into points and, when
/// every line has a third column, confidences. Mixed column counts are an error.
fn parse_point_lines(lines: &[(usize, &str)], path: &Path) -> Result<PointsAndConfidences> {
    let mut pts = Vec::with_capacity(lines.len());
    let mut conf = Vec::new();
    let mut columns = None;
    for &(ln, text) in lines {
        let toks: Vec<&str> = text.split_whitespace().collect();
        if toks.len() != 2 && toks.len() != 3 {
            return Err(Error::format(
                path,
                format!("line {ln}: expected \"x y\" (or \"x y confidence\"), found {text:?}"),
            ));
        }
        if *columns.get_or_insert(toks.len()) != toks.len() {
            return Err(Error::format(
                path,
                format!("line {ln}: {} columns where earlier lines have {}", toks.len(), columns.unwrap()),
            ));
        }
        pts.push([parse_f32(toks[0], path, ln, "x")?, parse_f32(toks[1], path, ln, "y")?]);
        if toks.len() == 3 {
            let c = parse_f32(toks[2], path, ln, "confidence")?;
            if !(0.0..=1.0).contains(&c) {
                return Err(Error::format(path, format!("line {ln}: confidence {c} outside [0, 1]")));
            }
            conf.push(c);
        }
    }
    Ok((pts, (columns == Some(3)).then_some(conf)))
}

fn check_count(n: usize, path: &Path, line: usize) -> Result<()> {
    match n {
        66 | 68 => Ok(()),
        // Other schemes (FaceWarehouse's 74 points among them) are read only through a user's
        // point-order mapping ([`LandMap`], `--land-map`): we have no verified correspondence of
        // FaceWarehouse's order to iBUG's, so we refuse rather than map wrongly. The paper
        // re-detects 66 landmarks with [53] on every data set, FaceWarehouse included.
        _ => Err(Error::format(
            path,
            format!(
                "line {line}: {n} landmarks: expected 68 (iBUG) or 66 (tracker scheme); for another scheme \
                 (e.g. FaceWarehouse's 74 points) give its order with --land-map FILE (its format: `fml prepare --help`)"
            ),
        )),
    }
}

/// A point-order mapping from another landmark scheme (e.g. FaceWarehouse's 74 points) to
/// iBUG-68, for `.land` files with that many points.
///
/// File format (text; blank lines and `#` comments ignored): first the scheme's point count,
/// then 68 lines, one per iBUG point in iBUG order, each the 0-based index of that point in the
/// `.land` file, or `-` when the scheme has no such point (it gets confidence 0).
///
/// ```text
/// 74
/// 0    # iBUG 0: right jaw end
/// -    # iBUG 1: not in this scheme
/// ...
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LandMap {
    /// Points in a file of this scheme.
    pub count: usize,
    /// For each iBUG-68 point, its index in the file (None = absent).
    pub to_ibug: [Option<usize>; N_LANDMARKS],
}

impl LandMap {
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(&crate::io::read_text(path)?, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim()))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        let Some(&(ln0, first)) = lines.first() else {
            return Err(Error::format(path, "empty landmark mapping (expected a point count, then 68 lines)"));
        };
        let count: usize = first
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::format(path, format!("line {ln0}: {first:?} is not a point count")))?;
        if lines.len() != 1 + N_LANDMARKS {
            return Err(Error::format(
                path,
                format!("{} mapping lines after the count: expected one per iBUG point (68)", lines.len() - 1),
            ));
        }
        let mut to_ibug = [None; N_LANDMARKS];
        // A set, not a `count`-long table: the count comes from the user's file.
        let mut used = std::collections::HashSet::new();
        for (k, &(ln, tok)) in lines[1..].iter().enumerate() {
            if tok == "-" {
                continue;
            }
            let i: usize = tok.parse().map_err(|_| {
                Error::format(path, format!("line {ln}: {tok:?} is neither a 0-based point index nor \"-\""))
            })?;
            if i >= count {
                return Err(Error::format(path, format!("line {ln}: index {i} out of range for {count} points")));
            }
            if !used.insert(i) {
                return Err(Error::format(path, format!("line {ln}: point {i} is mapped twice")));
            }
            to_ibug[k] = Some(i);
        }
        if to_ibug.iter().all(Option::is_none) {
            return Err(Error::format(path, "the mapping maps no point"));
        }
        Ok(LandMap { count, to_ibug })
    }

    /// iBUG-68 landmarks from the points (and confidences) of a file of this scheme.
    fn apply(&self, points: &[[f32; 2]], conf: Option<&[f32]>) -> Landmarks68 {
        let mut out = Landmarks68 { points: [[0.0; 2]; N_LANDMARKS], confidence: [0.0; N_LANDMARKS] };
        for (k, src) in self.to_ibug.iter().enumerate() {
            if let Some(i) = *src {
                out.points[k] = points[i];
                out.confidence[k] = conf.map_or(1.0, |c| c[i]);
            }
        }
        out
    }
}

/// The process-wide mapping used by [`read_land`] for files that are neither 66 nor 68 points
/// (set once by the CLI's `--land-map`; a global because every command that reads landmark
/// files — prepare, reconstruct, eval — reads them the same way).
static LAND_MAP: std::sync::RwLock<Option<std::sync::Arc<LandMap>>> = std::sync::RwLock::new(None);

/// Set (or clear) the mapping [`read_land`] applies to files of `map.count` points.
pub fn set_land_map(map: Option<LandMap>) {
    *LAND_MAP.write().unwrap_or_else(|e| e.into_inner()) = map.map(std::sync::Arc::new);
}

fn land_map() -> Option<std::sync::Arc<LandMap>> {
    LAND_MAP.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Read an iBUG `.pts` file:
///
/// ```text
/// version: 1
/// n_points: 68
/// {
/// x y
/// ...
/// }
/// ```
///
/// Header lines before `{` are `key: value`; `n_points` is required and must be 66 or 68.
/// Extension: a point line may carry a third column, the confidence in [0, 1] (all lines or
/// none); [`write_pts`] writes it only when some confidence is not 1.
pub fn read_pts(path: impl AsRef<Path>) -> Result<Landmarks68> {
    let path = path.as_ref();
    parse_pts(&crate::io::read_text(path)?, path)
}

fn parse_pts(text: &str, path: &Path) -> Result<Landmarks68> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty());
    let mut n_points = None;
    let mut open_line = 0;
    for (ln, l) in lines.by_ref() {
        if l == "{" {
            open_line = ln;
            break;
        }
        let Some((key, value)) = l.split_once(':') else {
            return Err(Error::format(path, format!("line {ln}: expected \"key: value\" or \"{{\", found {l:?}")));
        };
        if key.trim() == "n_points" {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| Error::format(path, format!("line {ln}: n_points {:?} is not a count", value.trim())))?;
            check_count(n, path, ln)?;
            n_points = Some((n, ln));
        }
    }
    if open_line == 0 {
        return Err(Error::format(path, "no \"{\" line: not an iBUG .pts file"));
    }
    let Some((n, n_line)) = n_points else {
        return Err(Error::format(path, "missing the \"n_points:\" header line"));
    };
    let mut body = Vec::new();
    let mut closed = false;
    for (ln, l) in lines.by_ref() {
        if l == "}" {
            closed = true;
            break;
        }
        body.push((ln, l));
    }
    if !closed {
        return Err(Error::format(path, "missing the closing \"}\" (file truncated?)"));
    }
    if let Some((ln, l)) = lines.next() {
        return Err(Error::format(path, format!("line {ln}: unexpected text after \"}}\": {l:?}")));
    }
    if body.len() != n {
        return Err(Error::format(path, format!("{} point lines but n_points is {n} (line {n_line})", body.len())));
    }
    let (pts, conf) = parse_point_lines(&body, path)?;
    Landmarks68::from_points(&pts, conf.as_deref(), path, "")
}

/// Write an iBUG `.pts` file (68 points) atomically. A third, confidence column is added only
/// when some confidence differs from 1 (our extension; [`read_pts`] reads it back), so plain
/// fully confident annotations stay readable by every `.pts` tool.
pub fn write_pts(path: impl AsRef<Path>, lm: &Landmarks68) -> Result<()> {
    let path = path.as_ref();
    if let Some(i) = lm.points.iter().position(|p| !(p[0].is_finite() && p[1].is_finite())) {
        return Err(Error::invalid(format!("{}: landmark {i} is not finite", path.display())));
    }
    let with_conf = lm.confidence.iter().any(|&c| c != 1.0);
    crate::io::write_atomic(path, |w| {
        writeln!(w, "version: 1\nn_points: {N_LANDMARKS}\n{{")?;
        for (p, c) in lm.points.iter().zip(&lm.confidence) {
            // `{}` prints the shortest representation that parses back to the same f32.
            if with_conf {
                writeln!(w, "{} {} {}", p[0], p[1], c)?;
            } else {
                writeln!(w, "{} {}", p[0], p[1])?;
            }
        }
        writeln!(w, "}}")
    })
}

/// Read a `.land` file: one "x y" point per line, optionally preceded by a line holding only
/// the point count. Blank lines and lines starting with `#` are ignored. 66 or 68 points are
/// read directly; files of another scheme (FaceWarehouse's native 74 points) only through the
/// mapping set with [`set_land_map`] (`--land-map`), and are refused with a clear message
/// otherwise (their order is not iBUG's). As with `.pts`, a third confidence column is accepted
/// on every line.
///
/// Coordinates are read as top-left-origin pixels; files measured from the bottom edge are
/// handled at crop time, where the image height is known (`PrepareConfig::land_y_up`,
/// [`read_landmarks_for_image`]).
pub fn read_land(path: impl AsRef<Path>) -> Result<Landmarks68> {
    let path = path.as_ref();
    parse_land(&crate::io::read_text(path)?, path, land_map().as_deref())
}

fn parse_land(text: &str, path: &Path, map: Option<&LandMap>) -> Result<Landmarks68> {
    let mut lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.is_empty() {
        return Err(Error::format(path, "no landmarks (empty file)"));
    }
    let mapped = |n: usize| map.filter(|m| m.count == n && n != 66 && n != 68);
    let first = lines[0];
    if first.1.split_whitespace().count() == 1 {
        let n: usize = first.1.parse().map_err(|_| {
            Error::format(path, format!("line {}: {:?} is neither a point count nor \"x y\"", first.0, first.1))
        })?;
        if mapped(n).is_none() {
            check_count(n, path, first.0)?;
        }
        lines.remove(0);
        if lines.len() != n {
            return Err(Error::format(path, format!("{} point lines but line {} says {n}", lines.len(), first.0)));
        }
    } else if mapped(lines.len()).is_none() {
        check_count(lines.len(), path, lines.last().map_or(0, |l| l.0))?;
    }
    let (pts, conf) = parse_point_lines(&lines, path)?;
    // `parse_point_lines` has rejected non-finite coordinates and confidences outside [0, 1].
    if let Some(m) = mapped(pts.len()) {
        return Ok(m.apply(&pts, conf.as_deref()));
    }
    Landmarks68::from_points(&pts, conf.as_deref(), path, "")
}

/// Read a landmark file by its extension: `.pts` or `.land` (case-insensitive).
pub fn read_landmark_file(path: impl AsRef<Path>) -> Result<Landmarks68> {
    let path = path.as_ref();
    if path.is_dir() {
        return Err(Error::format(path, "a folder, not a landmark file (.pts or .land)"));
    }
    match extension(path).as_str() {
        "pts" => read_pts(path),
        "land" => read_land(path),
        other => Err(Error::format(path, format!("unknown landmark file extension {other:?} (use .pts or .land)"))),
    }
}

static LAND_Y_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set whether `.land` files measure y from the bottom edge of the image (`--land-y-up`), for
/// [`read_landmarks_for_image`].
pub fn set_land_y_up(on: bool) {
    LAND_Y_UP.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// [`read_landmark_file`] for an image `height` pixels tall: points of a `.land` file are read
/// as `y = height - y` when [`set_land_y_up`] is on (it needs the image, so the parsers cannot do
/// it).
pub fn read_landmarks_for_image(path: impl AsRef<Path>, height: u32) -> Result<Landmarks68> {
    let path = path.as_ref();
    let mut lm = read_landmark_file(path)?;
    if LAND_Y_UP.load(std::sync::atomic::Ordering::Relaxed) && extension(path) == "land" {
        for p in lm.points.iter_mut() {
            p[1] = height as f32 - p[1];
        }
    }
    Ok(lm)
}

pub(crate) fn extension(path: &Path) -> String {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

/// One face of a manifest: an image (resolved against the manifest's folder) and its landmarks.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestEntry {
    pub image: PathBuf,
    pub landmarks: Landmarks68,
}

/// The entries of a manifest file. The outer `Result` fails when the file as a whole cannot be
/// read (missing, not UTF-8, JSON syntax); each entry carries its own `Result` so that one bad
/// row does not lose the others.
pub type Manifest = Vec<Result<ManifestEntry>>;

/// Read a manifest by extension: `.json` or `.csv`.
///
/// JSON: a list of `{"image": "rel/or/abs.png", "landmarks": [[x, y], ...], "confidence":
/// [c, ...]}` (confidence optional, unknown keys ignored). CSV: one face per line,
/// `image,x0,y0,...,xN,yN[,c0,...,cN]` with N+1 = 66 or 68; an optional header line (whose second
/// field is not a number), blank lines and `#` comment lines are skipped; the image field may be
/// double-quoted. Relative image paths are relative to the manifest's folder. The user-facing
/// description, with examples, is `docs/data-formats.md`.
pub fn read_manifest(path: impl AsRef<Path>) -> Result<Manifest> {
    let path = path.as_ref();
    let text = crate::io::read_text(path)?;
    let base = path.parent().unwrap_or(Path::new(""));
    match extension(path).as_str() {
        "json" => parse_json_manifest(&text, path, base),
        "csv" => Ok(parse_csv_manifest(&text, path, base)),
        other => Err(Error::format(path, format!("unknown manifest extension {other:?} (use .json or .csv)"))),
    }
}

#[derive(serde::Deserialize)]
struct JsonEntry {
    image: PathBuf,
    landmarks: Vec<[f32; 2]>,
    #[serde(default)]
    confidence: Option<Vec<f32>>,
}

fn parse_json_manifest(text: &str, path: &Path, base: &Path) -> Result<Manifest> {
    let values: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| Error::format(path, format!("{e} (expected a JSON list of faces)")))?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let entry: JsonEntry = serde_json::from_value(v).map_err(|e| {
                Error::format(path, format!("entry {i}: {e} (expected {{\"image\", \"landmarks\": [[x, y], ...]}})"))
            })?;
            let place = format!("entry {i} ({})", entry.image.display());
            let landmarks = Landmarks68::from_points(&entry.landmarks, entry.confidence.as_deref(), path, &place)?;
            Ok(ManifestEntry { image: base.join(&entry.image), landmarks })
        })
        .collect())
}

/// Split one CSV line into fields; a field may be double-quoted (with `""` for a quote).
fn split_csv(line: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' && at_start {
            quoted = true;
            at_start = false;
        } else if c == ',' {
            fields.push(std::mem::take(&mut cur));
            at_start = true;
        } else {
            cur.push(c);
            at_start = false;
        }
    }
    if quoted {
        return Err("unterminated quote");
    }
    fields.push(cur);
    Ok(fields)
}

fn parse_csv_manifest(text: &str, path: &Path, base: &Path) -> Manifest {
    let mut out = Vec::new();
    let mut first_data = true;
    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = match split_csv(line) {
            Ok(f) => f,
            Err(e) => {
                out.push(Err(Error::format(path, format!("line {ln}: {e}"))));
                continue;
            }
        };
        // A header names its columns: no field after the image's is a number. (Testing only
        // the first would drop a headerless first row with an empty or bad x0 unreported.)
        let is_header = first_data && fields.len() > 1 && fields[1..].iter().all(|f| f.trim().parse::<f32>().is_err());
        first_data = false;
        if is_header {
            continue;
        }
        out.push(parse_csv_row(&fields, path, base, ln));
    }
    out
}

fn parse_csv_row(fields: &[String], path: &Path, base: &Path, ln: usize) -> Result<ManifestEntry> {
    let values = fields.len() - 1;
    // 1 + 2n or 1 + 3n fields for n in {66, 68}: 133, 137, 199, 205 are all distinct.
    let (n, with_conf) = match values {
        132 => (66, false),
        136 => (68, false),
        198 => (66, true),
        204 => (68, true),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "line {ln}: {} fields: expected image,x0,y0,...,x67,y67[,c0,...,c67] \
                     (137 or 205 fields; 133 or 199 for 66 points)",
                    fields.len()
                ),
            ));
        }
    };
    let image = fields[0].trim();
    if image.is_empty() {
        return Err(Error::format(path, format!("line {ln}: empty image field")));
    }
    let nums = fields[1..]
        .iter()
        .enumerate()
        .map(|(k, f)| parse_f32(f.trim(), path, ln, &format!("field {}", k + 2)))
        .collect::<Result<Vec<f32>>>()?;
    let pts: Vec<[f32; 2]> = (0..n).map(|i| [nums[2 * i], nums[2 * i + 1]]).collect();
    let conf = with_conf.then(|| nums[2 * n..].to_vec());
    let landmarks = Landmarks68::from_points(&pts, conf.as_deref(), path, &format!("line {ln}"))?;
    Ok(ManifestEntry { image: base.join(image), landmarks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_points(n: usize) -> Vec<[f32; 2]> {
        (0..n).map(|i| [10.0 + i as f32, 20.5 + 0.25 * i as f32]).collect()
    }

    fn pts_text(points: &[[f32; 2]]) -> String {
        let mut s = format!("version: 1\nn_points:  {}\n{{\n", points.len());
        for p in points {
            s += &format!("{} {}\n", p[0], p[1]);
        }
        s + "}\n"
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn pts_68_and_66_points() {
        let p = Path::new("a.pts");
        let lm = parse_pts(&pts_text(&sample_points(68)), p).unwrap();
        assert_eq!(lm.points[67], [77.0, 20.5 + 0.25 * 67.0]);
        assert!(lm.confidence.iter().all(|&c| c == 1.0));

        let lm = parse_pts(&pts_text(&sample_points(66)), p).unwrap();
        assert_eq!(lm.confidence[60], 0.0);
        assert_eq!(lm.confidence[64], 0.0);
        assert_eq!(lm.points[61], [70.0, 20.5 + 15.0]); // tracker point 60 -> iBUG 61
        assert_eq!(lm.points[67][0], 10.0 + 65.0);
    }

    #[test]
    fn pts_bad_inputs_name_file_and_line() {
        let p = Path::new("bad.pts");
        let mut pts = sample_points(68);
        let good = pts_text(&pts);

        let e = err_text(parse_pts(&good.replace("n_points:  68", "n_points: 67"), p));
        assert!(e.contains("bad.pts") && e.contains("line 2") && e.contains("67 landmarks"), "{e}");

        // One point line missing: count mismatch.
        let short: String = good.lines().filter(|l| !l.starts_with("12 ")).map(|l| format!("{l}\n")).collect();
        let e = err_text(parse_pts(&short, p));
        assert!(e.contains("67 point lines but n_points is 68"), "{e}");

        let e = err_text(parse_pts(&good.replace("12 21", "12 abc"), p));
        assert!(e.contains("line 6") && e.contains("\"abc\""), "{e}");

        pts[5] = [f32::NAN, 1.0];
        let e = err_text(parse_pts(&pts_text(&pts), p));
        assert!(e.contains("line 9") && e.contains("not finite"), "{e}");

        let e = err_text(parse_pts(&good.replace("}\n", ""), p));
        assert!(e.contains("closing"), "{e}");
        let e = err_text(parse_pts("version: 1\n{\n}\n", p));
        assert!(e.contains("n_points"), "{e}");
        let e = err_text(parse_pts(&format!("{good}junk\n"), p));
        assert!(e.contains("after"), "{e}");
        let e = err_text(parse_pts(&good.replace("12 21", "12 21 0.5"), p));
        assert!(e.contains("columns"), "{e}");
        let e = err_text(parse_pts("", p));
        assert!(e.contains("bad.pts"), "{e}");
    }

    #[test]
    fn pts_write_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pts");
        let mut lm = Landmarks68::from_points(&sample_points(68), None, &path, "").unwrap();
        lm.points[3] = [1.0 / 3.0, 123.456_79];
        write_pts(&path, &lm).unwrap();
        assert_eq!(read_pts(&path).unwrap(), lm);
        // Partial confidence survives through the extension column.
        lm.confidence[10] = 0.25;
        lm.confidence[60] = 0.0;
        write_pts(&path, &lm).unwrap();
        assert_eq!(read_landmark_file(&path).unwrap(), lm);
        lm.points[0][0] = f32::INFINITY;
        assert!(write_pts(&path, &lm).is_err());
    }

    #[test]
    fn land_with_and_without_count() {
        let p = Path::new("f.land");
        let body: String = sample_points(68).iter().map(|q| format!("{} {}\n", q[0], q[1])).collect();
        let a = parse_land(&body, p, None).unwrap();
        let b = parse_land(&format!("68\n{body}"), p, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.points[0], [10.0, 20.5]);
        let e = err_text(parse_land(&format!("67\n{body}"), p, None));
        assert!(e.contains("line 1") && e.contains("67 landmarks"), "{e}");
        let e = err_text(parse_land(&format!("66\n{body}"), p, None));
        assert!(e.contains("68 point lines but line 1 says 66"), "{e}");
        let fw: String = sample_points(74).iter().map(|q| format!("{} {}\n", q[0], q[1])).collect();
        let e = err_text(parse_land(&format!("74\n{fw}"), p, None));
        assert!(e.contains("FaceWarehouse") && e.contains("--land-map"), "{e}");
        let e = err_text(parse_land(&body.replace("11 20.75", "11 nan"), p, None));
        assert!(e.contains("line 2") && e.contains("not finite"), "{e}");
        assert!(err_text(parse_land("\n\n", p, None)).contains("empty"));
        let e = err_text(parse_land(&body.replace("11 20.75", "11,20.75"), p, None));
        assert!(e.contains("line 2"), "{e}");
    }

    /// A 74-point file read through a mapping: iBUG point k takes file point map[k], unmapped
    /// points get confidence 0; 68-point files ignore the mapping; bad mappings name the line.
    #[test]
    fn land_through_a_mapping() {
        let p = Path::new("f.land");
        let m = Path::new("fw.map");
        // iBUG k <- file point 73 - k for k < 60, the rest absent.
        let mut text = String::from("# test scheme\n74\n");
        for k in 0..68 {
            text += &if k < 60 { format!("{}  # iBUG {k}\n", 73 - k) } else { "-\n".into() };
        }
        let map = LandMap::parse(&text, m).unwrap();
        let fw = sample_points(74);
        let body: String = fw.iter().map(|q| format!("{} {}\n", q[0], q[1])).collect();
        let lm = parse_land(&format!("74\n{body}"), p, Some(&map)).unwrap();
        assert_eq!(lm, parse_land(&body, p, Some(&map)).unwrap());
        for k in 0..68 {
            if k < 60 {
                assert_eq!((lm.points[k], lm.confidence[k]), (fw[73 - k], 1.0), "point {k}");
            } else {
                assert_eq!(lm.confidence[k], 0.0, "point {k}");
            }
        }
        let b68: String = sample_points(68).iter().map(|q| format!("{} {}\n", q[0], q[1])).collect();
        assert_eq!(parse_land(&b68, p, Some(&map)).unwrap(), parse_land(&b68, p, None).unwrap());
        // A 74-point file with a NaN is still an error.
        let bad = body.replacen(&format!("{} {}", fw[3][0], fw[3][1]), "nan 1", 1);
        assert!(err_text(parse_land(&bad, p, Some(&map))).contains("not finite"));

        let e = err_text(LandMap::parse(&text.replace("73  # iBUG 0", "74"), m));
        assert!(e.contains("fw.map") && e.contains("line 3") && e.contains("out of range"), "{e}");
        let e = err_text(LandMap::parse(&text.replace("72  # iBUG 1", "73"), m));
        assert!(e.contains("line 4") && e.contains("mapped twice"), "{e}");
        let e = err_text(LandMap::parse(&text.replace("72  # iBUG 1", "x"), m));
        assert!(e.contains("line 4"), "{e}");
        let e = err_text(LandMap::parse("74\n0\n", m));
        assert!(e.contains("68"), "{e}");
        assert!(err_text(LandMap::parse("", m)).contains("empty"));
    }

    fn csv_row(image: &str, pts: &[[f32; 2]], conf: Option<&[f32]>) -> String {
        let mut s = image.to_string();
        for p in pts {
            s += &format!(",{},{}", p[0], p[1]);
        }
        if let Some(c) = conf {
            for x in c {
                s += &format!(",{x}");
            }
        }
        s + "\n"
    }

    #[test]
    fn csv_manifest_rows() {
        let p = Path::new("/data/m.csv");
        let base = Path::new("/data");
        let pts = sample_points(68);
        let conf: Vec<f32> = (0..68).map(|i| if i == 7 { 0.5 } else { 1.0 }).collect();
        let header = "image,x0,y0\n";
        let text = format!(
            "{header}{}{}\n# comment\n{}{}{}",
            csv_row("a.png", &pts, None),
            csv_row("\"sub dir/b,c.png\"", &pts, Some(&conf)),
            csv_row("c.png", &pts[..66], None),
            csv_row("d.png", &pts[..67], None),
            csv_row("e.png", &pts, None).replace(",10,", ",x,"),
        );
        let m = parse_csv_manifest(&text, p, base);
        assert_eq!(m.len(), 5);
        let a = m[0].as_ref().unwrap();
        assert_eq!(a.image, Path::new("/data/a.png"));
        let b = m[1].as_ref().unwrap();
        assert_eq!(b.image, Path::new("/data/sub dir/b,c.png"));
        assert_eq!(b.landmarks.confidence[7], 0.5);
        assert_eq!(m[2].as_ref().unwrap().landmarks.confidence[64], 0.0);
        let e = m[3].as_ref().unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("135 fields"), "{e}");
        let e = m[4].as_ref().unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("field 2"), "{e}");
    }

    /// Without a header, a first row whose x0 is empty is reported as a bad row, not taken for
    /// a header and dropped; a byte-order mark before a header or a `.pts` file is ignored.
    #[test]
    fn csv_first_row_and_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        let pts = sample_points(68);
        let m = dir.path().join("m.csv");
        let text = csv_row("a.png", &pts, None).replacen(",10,", ",,", 1) + &csv_row("b.png", &pts, None);
        std::fs::write(&m, &text).unwrap();
        let rows = read_manifest(&m).unwrap();
        assert_eq!(rows.len(), 2);
        let e = rows[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("field 2"), "{e}");
        std::fs::write(&m, format!("\u{feff}image,x0,y0\n{}", csv_row("b.png", &pts, None))).unwrap();
        let rows = read_manifest(&m).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].is_ok());
        let p = dir.path().join("a.pts");
        std::fs::write(&p, format!("\u{feff}{}", pts_text(&pts))).unwrap();
        assert_eq!(read_pts(&p).unwrap().points[3], pts[3]);
    }

    #[test]
    fn json_manifest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let pts = sample_points(68);
        let conf = vec![0.9f32; 68];
        let mut bad_conf = conf.clone();
        bad_conf[3] = 1.5;
        let json = serde_json::json!([
            {"image": "a.png", "landmarks": pts, "confidence": conf, "extra": 1},
            {"image": "b.png", "landmarks": &pts[..66]},
            {"image": "c.png", "landmarks": &pts[..10]},
            {"image": "d.png", "landmarks": pts, "confidence": bad_conf},
            {"landmarks": pts},
        ]);
        std::fs::write(&path, json.to_string()).unwrap();
        let m = read_manifest(&path).unwrap();
        assert_eq!(m.len(), 5);
        let a = m[0].as_ref().unwrap();
        assert_eq!(a.image, dir.path().join("a.png"));
        assert_eq!(a.landmarks.confidence[0], 0.9);
        assert_eq!(m[1].as_ref().unwrap().landmarks.confidence[60], 0.0);
        let e = m[2].as_ref().unwrap_err().to_string();
        assert!(e.contains("m.json") && e.contains("entry 2") && e.contains("10 landmarks"), "{e}");
        let e = m[3].as_ref().unwrap_err().to_string();
        assert!(e.contains("entry 3") && e.contains("confidence 3"), "{e}");
        let e = m[4].as_ref().unwrap_err().to_string();
        assert!(e.contains("entry 4") && e.contains("image"), "{e}");

        std::fs::write(&path, "[{\"image\": \"a.png\",").unwrap();
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("m.json") && e.contains("line 1"), "{e}");
        assert!(read_manifest(dir.path().join("missing.json")).is_err());
    }
}
