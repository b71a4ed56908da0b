//! MATLAB Level-5 MAT-files: a reader for numeric matrices (the BFM importers' input) and a small
//! writer of double / single / int32 / uint8 matrices (used to write synthetic fixtures).
//!
//! Format reference: MathWorks, "MAT-File Format" (Level 5). A file is a 128-byte header
//! (116 bytes of text, 8 bytes subsystem offset, version, endian indicator "IM"/"MI") followed
//! by data elements, each an 8-byte tag (type, byte count) and data padded to 8 bytes, or the
//! 8-byte "small data element" form (byte count <= 4 packed into the tag). Variables are
//! miMATRIX elements (array flags, dimensions, name, real part, optional imaginary part),
//! possibly wrapped in miCOMPRESSED (zlib). Data are stored column-major, and MATLAB may store a
//! class's values in a narrower type (a double array of small integers as miUINT8), so every
//! stored type is converted to f64 here.
//!
//! Read: numeric classes double, single, int8..uint64 and logical (as 0/1), real parts only.
//! Skipped (listed in [`MatFile::skipped`]): char, cell, struct, object, sparse and complex
//! arrays. MATLAB v7.3 files (HDF5) are detected and refused with a hint to re-save with -v7.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

// Data element types (Table 1-1 of the format reference).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

// Array classes (Table 1-3).
const MX_CELL: u32 = 1;
const MX_STRUCT: u32 = 2;
const MX_OBJECT: u32 = 3;
const MX_CHAR: u32 = 4;
const MX_SPARSE: u32 = 5;
const MX_DOUBLE: u32 = 6;
const MX_SINGLE: u32 = 7;
const MX_INT32: u32 = 12;
const MX_UINT8: u32 = 9;
const MX_UINT64: u32 = 15;

const FLAG_COMPLEX: u32 = 0x0800;
const FLAG_LOGICAL: u32 = 0x0200;

const HDF5_SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";

/// One numeric MATLAB variable.
///
/// # Shapes
/// `dims` are MATLAB's dimensions (at least 2); `data` holds `dims.iter().product()` values in
/// MATLAB's column-major order: element `(r, c)` of a 2-D array is `data[r + c * rows]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MatArray {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Vec<f64>,
}

impl MatArray {
    /// A 2-D array from column-major data. Panics if `data.len() != rows * cols` (a programming
    /// error of the caller, not user input).
    pub fn new(name: impl Into<String>, rows: usize, cols: usize, data: Vec<f64>) -> MatArray {
        assert_eq!(data.len(), rows * cols, "MatArray::new: data length");
        MatArray { name: name.into(), dims: vec![rows, cols], data }
    }

    /// A 2-D array from row-major rows (convenient in tests: `[[1, 2, 3], [4, 5, 6]]` is 2 x 3).
    pub fn from_rows(name: impl Into<String>, rows: &[Vec<f64>]) -> MatArray {
        let r = rows.len();
        let c = rows.first().map_or(0, Vec::len);
        let mut data = vec![0.0; r * c];
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.len(), c, "MatArray::from_rows: ragged rows");
            for (j, &x) in row.iter().enumerate() {
                data[i + j * r] = x;
            }
        }
        MatArray::new(name, r, c, data)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the array holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// First dimension.
    pub fn rows(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    /// Product of all dimensions after the first (the column count of a 2-D array).
    pub fn cols(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    /// True for a 1 x n or n x 1 array.
    pub fn is_vector(&self) -> bool {
        self.dims.len() == 2 && (self.dims[0] == 1 || self.dims[1] == 1)
    }

    /// Element (row, col) of a 2-D array (column-major). Panics when out of range.
    pub fn at(&self, row: usize, col: usize) -> f64 {
        let r = self.rows();
        assert!(row < r && col < self.cols(), "MatArray::at({row}, {col}) outside {:?}", self.dims);
        self.data[row + col * r]
    }

    /// "3 x 80" style description of the dimensions, for error messages.
    pub fn shape_text(&self) -> String {
        dims_text(&self.dims)
    }
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x ")
}

/// The numeric variables of a MAT-file, in file order.
#[derive(Clone, Debug, Default)]
pub struct MatFile {
    /// The file read (named in errors).
    pub path: PathBuf,
    pub arrays: Vec<MatArray>,
    /// Variables that were present but not read: (name, why), e.g. ("info", "struct array").
    pub skipped: Vec<(String, String)>,
    /// Numeric variables left out by the caller's filter (names only).
    pub unread: Vec<String>,
}

impl MatFile {
    /// The variable called `name`, if read.
    pub fn get(&self, name: &str) -> Option<&MatArray> {
        self.arrays.iter().find(|a| a.name == name)
    }

    /// The variable called `name`, or an error naming the file, the variable and what the file
    /// does contain.
    pub fn require(&self, name: &str) -> Result<&MatArray> {
        self.get(name).ok_or_else(|| self.missing(name))
    }

    /// Remove and return the variable called `name` (avoids copying large bases).
    pub fn take(&mut self, name: &str) -> Result<MatArray> {
        match self.arrays.iter().position(|a| a.name == name) {
            Some(i) => Ok(self.arrays.swap_remove(i)),
            None => Err(self.missing(name)),
        }
    }

    fn missing(&self, name: &str) -> Error {
        let file = self.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some((_, why)) = self.skipped.iter().find(|(n, _)| n == name) {
            return Error::format(&self.path, format!("{name} in {file} is a {why}, expected a real numeric matrix"));
        }
        let mut found: Vec<&str> = self.arrays.iter().map(|a| a.name.as_str()).collect();
        found.extend(self.skipped.iter().map(|(n, _)| n.as_str()));
        found.extend(self.unread.iter().map(String::as_str));
        let found = if found.is_empty() { "no variables".to_string() } else { found.join(", ") };
        Error::format(&self.path, format!("{name} missing from {file} (it contains: {found})"))
    }
}

/// Read every numeric variable of a Level-5 MAT-file.
pub fn read_mat(path: impl AsRef<Path>) -> Result<MatFile> {
    read_mat_filtered(path, |_| true)
}

/// Read the numeric variables whose name `keep` accepts; others are skipped without converting
/// their data (the BFM 2009 file is ~600 MB, most of it bases we may not all need).
pub fn read_mat_filtered(path: impl AsRef<Path>, keep: impl Fn(&str) -> bool) -> Result<MatFile> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_mat(&bytes, path, keep)
}

#[derive(Clone, Copy)]
struct Endian {
    big: bool,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
    }
    fn i32(self, b: &[u8]) -> i32 {
        self.u32(b) as i32
    }
}

/// Parse MAT-file bytes; `origin` names the source in errors.
pub fn parse_mat(bytes: &[u8], origin: &Path, keep: impl Fn(&str) -> bool) -> Result<MatFile> {
    let bad = |what: String| Error::format(origin, what);
    if bytes.starts_with(HDF5_SIGNATURE) || bytes.get(512..520) == Some(HDF5_SIGNATURE) {
        return Err(bad(v73_message()));
    }
    if bytes.len() < 128 {
        return Err(bad(format!("only {} bytes: too short for a MAT-file header (128 bytes)", bytes.len())));
    }
    let text = String::from_utf8_lossy(&bytes[..116]);
    if text.contains("MATLAB 7.3") {
        return Err(bad(v73_message()));
    }
    if !text.starts_with("MATLAB") {
        return Err(bad("not a MATLAB Level-5 MAT-file (the header does not start with \"MATLAB\")".into()));
    }
    let endian = match &bytes[126..128] {
        b"IM" => Endian { big: false },
        b"MI" => Endian { big: true },
        other => {
            return Err(bad(format!("bad endian indicator {:?} at byte 126 (expected \"IM\" or \"MI\")", other)));
        }
    };
    let version = endian.u16(&bytes[124..126]);
    if version != 0x0100 {
        return Err(bad(format!("unsupported MAT-file version 0x{version:04x} (expected 0x0100, Level 5)")));
    }
    let mut out = MatFile { path: origin.to_path_buf(), ..Default::default() };
    let mut pos = 128usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < 8 {
            if rest.iter().all(|&b| b == 0) {
                break; // trailing padding
            }
            return Err(bad(format!("truncated data element tag at byte {pos}")));
        }
        let (ty, n, data_off) = tag(rest, endian);
        if data_off == 4 && n > 4 {
            return Err(bad(format!("small data element at byte {pos} claims {n} bytes (at most 4)")));
        }
        let end = data_off.checked_add(n).filter(|&e| e <= rest.len()).ok_or_else(|| {
            bad(format!(
                "data element at byte {pos} (type {}) claims {n} bytes but only {} remain: the file is truncated",
                type_name(ty),
                rest.len().saturating_sub(data_off)
            ))
        })?;
        let body = &rest[data_off..end];
        match ty {
            MI_MATRIX => parse_matrix(body, endian, origin, pos, &keep, &mut out)?,
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(body).read_to_end(&mut inflated).map_err(|e| {
                    bad(format!("compressed element at byte {pos}: zlib data is corrupt or truncated ({e})"))
                })?;
                let inner_tag_ok = inflated.len() >= 8;
                if !inner_tag_ok {
                    return Err(bad(format!(
                        "compressed element at byte {pos} inflates to only {} bytes",
                        inflated.len()
                    )));
                }
                let (ity, in_n, ioff) = tag(&inflated, endian);
                let iend = ioff.checked_add(in_n).filter(|&e| e <= inflated.len()).ok_or_else(|| {
                    bad(format!(
                        "compressed element at byte {pos}: inner element claims {in_n} bytes, {} inflated",
                        inflated.len().saturating_sub(ioff)
                    ))
                })?;
                if ity == MI_MATRIX {
                    parse_matrix(&inflated[ioff..iend], endian, origin, pos, &keep, &mut out)?;
                }
            }
            // Other top-level elements do not occur in MATLAB's own files; tolerate and skip.
            _ => {}
        }
        // Compressed elements are not padded; everything else is padded to 8 bytes.
        let step = if data_off == 4 {
            8
        } else if ty == MI_COMPRESSED {
            end
        } else {
            data_off + pad8(n)
        };
        pos += step.min(rest.len()).max(8);
    }
    Ok(out)
}

fn v73_message() -> String {
    "this is a MATLAB v7.3 MAT-file (HDF5), which is not supported: re-save it in MATLAB with \
     `save(filename, '-v7')` (or `-v6`), or in Octave with `save -v7`"
        .into()
}

/// (type, byte count, offset of the data) of the element starting at `b` (at least 8 bytes).
fn tag(b: &[u8], e: Endian) -> (u32, usize, usize) {
    let first = e.u32(&b[0..4]);
    if first >> 16 != 0 {
        // Small data element: byte count in the upper 16 bits, data in the next 4 bytes.
        (first & 0xffff, (first >> 16) as usize, 4)
    } else {
        (first, e.u32(&b[4..8]) as usize, 8)
    }
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

fn type_name(t: u32) -> String {
    match t {
        MI_INT8 => "miINT8".into(),
        MI_UINT8 => "miUINT8".into(),
        MI_INT16 => "miINT16".into(),
        MI_UINT16 => "miUINT16".into(),
        MI_INT32 => "miINT32".into(),
        MI_UINT32 => "miUINT32".into(),
        MI_SINGLE => "miSINGLE".into(),
        MI_DOUBLE => "miDOUBLE".into(),
        MI_INT64 => "miINT64".into(),
        MI_UINT64 => "miUINT64".into(),
        MI_MATRIX => "miMATRIX".into(),
        MI_COMPRESSED => "miCOMPRESSED".into(),
        other => format!("type {other}"),
    }
}

fn class_name(c: u32) -> &'static str {
    match c {
        MX_CELL => "cell array",
        MX_STRUCT => "struct array",
        MX_OBJECT => "object",
        MX_CHAR => "char array",
        MX_SPARSE => "sparse matrix",
        _ => "non-numeric array",
    }
}

/// Sub-elements of a miMATRIX body, read one after the other.
struct Sub<'a> {
    body: &'a [u8],
    pos: usize,
    e: Endian,
}

impl<'a> Sub<'a> {
    /// The next sub-element's (type, data), or a description of what is wrong.
    fn next(&mut self, what: &str) -> std::result::Result<(u32, &'a [u8]), String> {
        let rest = &self.body[self.pos.min(self.body.len())..];
        if rest.len() < 8 {
            return Err(format!("{what}: missing (the matrix element ends early)"));
        }
        let (ty, n, off) = tag(rest, self.e);
        if off == 4 && n > 4 {
            return Err(format!("{what}: small data element claims {n} bytes (at most 4)"));
        }
        if off + n > rest.len() {
            return Err(format!("{what}: claims {n} bytes but only {} remain", rest.len() - off));
        }
        let data = &rest[off..off + n];
        self.pos += if off == 4 { 8 } else { 8 + pad8(n) };
        Ok((ty, data))
    }
}

fn parse_matrix(
    body: &[u8],
    e: Endian,
    origin: &Path,
    at: usize,
    keep: &dyn Fn(&str) -> bool,
    out: &mut MatFile,
) -> Result<()> {
    if body.is_empty() {
        return Ok(()); // an empty placeholder element
    }
    let mut sub = Sub { body, pos: 0, e };
    let ctx = |what: String| Error::format(origin, format!("matrix element at byte {at}: {what}"));
    let (fty, flags) = sub.next("array flags").map_err(ctx)?;
    if fty != MI_UINT32 || flags.len() < 8 {
        return Err(ctx(format!("array flags sub-element has {} of {} bytes", type_name(fty), flags.len())));
    }
    let flags = e.u32(&flags[0..4]);
    let class = flags & 0xff;
    let (dty, dims_raw) = sub.next("dimensions").map_err(ctx)?;
    if dty != MI_INT32 || dims_raw.len() < 8 || dims_raw.len() % 4 != 0 {
        return Err(ctx(format!("dimensions sub-element has {} of {} bytes", type_name(dty), dims_raw.len())));
    }
    let mut dims = Vec::new();
    for c in dims_raw.chunks_exact(4) {
        let d = e.i32(c);
        if d < 0 {
            return Err(ctx(format!("negative dimension {d}")));
        }
        dims.push(d as usize);
    }
    let (nty, name_raw) = sub.next("array name").map_err(ctx)?;
    if nty != MI_INT8 && nty != MI_UINT8 {
        return Err(ctx(format!("array name sub-element has {}", type_name(nty))));
    }
    let name = String::from_utf8_lossy(name_raw).into_owned();
    let ctx = |what: String| Error::format(origin, format!("variable {name:?} (byte {at}): {what}"));

    let numeric = (MX_DOUBLE..=MX_UINT64).contains(&class);
    if !numeric {
        out.skipped.push((name, class_name(class).into()));
        return Ok(());
    }
    if flags & FLAG_COMPLEX != 0 {
        out.skipped.push((name, "complex array".into()));
        return Ok(());
    }
    if !keep(&name) {
        out.unread.push(name);
        return Ok(());
    }
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| ctx(format!("dimensions {} overflow", dims_text(&dims))))?;
    let (rty, real) = sub.next("real part").map_err(ctx)?;
    let width = match rty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        other => return Err(ctx(format!("real part stored as unsupported {}", type_name(other)))),
    };
    if count.checked_mul(width) != Some(real.len()) {
        return Err(ctx(format!(
            "dimensions {} need {} values but the real part holds {} bytes of {} ({} values)",
            dims_text(&dims),
            count,
            real.len(),
            type_name(rty),
            real.len() / width
        )));
    }
    let data = convert(real, rty, e);
    let logical = flags & FLAG_LOGICAL != 0;
    let data = if logical { data.into_iter().map(|x| if x != 0.0 { 1.0 } else { 0.0 }).collect() } else { data };
    out.arrays.push(MatArray { name, dims, data });
    Ok(())
}

fn convert(b: &[u8], ty: u32, e: Endian) -> Vec<f64> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().unwrap();
                    (if e.big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f64
                })
                .collect()
        };
    }
    match ty {
        MI_INT8 => b.iter().map(|&x| x as i8 as f64).collect(),
        MI_UINT8 => b.iter().map(|&x| x as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        _ => unreachable!("convert: type checked by the caller"),
    }
}

/// The MATLAB class a variable is written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatClass {
    Double,
    Single,
    Int32,
    Uint8,
}

/// How [`write_mat`] lays out the file.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatWriteOptions {
    /// Wrap each variable in a zlib-compressed element (MATLAB's default since v7).
    pub compress: bool,
    /// Write a big-endian file (indicator "MI").
    pub big_endian: bool,
    /// Store double arrays whose values are all small non-negative integers as miUINT8 /
    /// miUINT16, as MATLAB does, to exercise the reader's type conversion.
    pub compact_integers: bool,
}

struct Out {
    big: bool,
    buf: Vec<u8>,
}

impl Out {
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&if self.big { v.to_be_bytes() } else { v.to_le_bytes() });
    }
    fn tag(&mut self, ty: u32, n: usize) {
        self.u32(ty);
        self.u32(n as u32);
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(8) {
            self.buf.push(0);
        }
    }
    /// A sub-element with data `data` (already in file byte order), small format when it fits.
    fn element(&mut self, ty: u32, data: &[u8]) {
        if data.len() <= 4 && !data.is_empty() {
            self.u32(((data.len() as u32) << 16) | ty);
            self.buf.extend_from_slice(data);
            self.buf.resize(self.buf.len() + 4 - data.len(), 0);
        } else {
            self.tag(ty, data.len());
            self.buf.extend_from_slice(data);
            self.pad();
        }
    }
}

fn matrix_element(a: &MatArray, class: MatClass, opts: &MatWriteOptions) -> Result<Vec<u8>> {
    let big = opts.big_endian;
    let count: usize = a.dims.iter().product();
    if a.dims.len() < 2 || count != a.data.len() {
        return Err(Error::invalid(format!(
            "MAT writer: {} has dims {:?} but {} values",
            a.name,
            a.dims,
            a.data.len()
        )));
    }
    let mut o = Out { big, buf: Vec::new() };
    let mx = match class {
        MatClass::Double => MX_DOUBLE,
        MatClass::Single => MX_SINGLE,
        MatClass::Int32 => MX_INT32,
        MatClass::Uint8 => MX_UINT8,
    };
    let mut flags = Vec::new();
    for v in [mx, 0u32] {
        flags.extend_from_slice(&if big { v.to_be_bytes() } else { v.to_le_bytes() });
    }
    o.element(MI_UINT32, &flags);
    let mut dims = Vec::new();
    for &d in &a.dims {
        let d = i32::try_from(d).map_err(|_| Error::invalid(format!("MAT writer: dimension {d} too large")))?;
        dims.extend_from_slice(&if big { d.to_be_bytes() } else { d.to_le_bytes() });
    }
    o.element(MI_INT32, &dims);
    o.element(MI_INT8, a.name.as_bytes());
    let ints = a.data.iter().all(|&x| x >= 0.0 && x.fract() == 0.0);
    let max = a.data.iter().fold(0.0f64, |m, &x| m.max(x));
    let (ty, bytes): (u32, Vec<u8>) = match class {
        MatClass::Double if opts.compact_integers && ints && max <= 255.0 => {
            (MI_UINT8, a.data.iter().map(|&x| x as u8).collect())
        }
        MatClass::Double if opts.compact_integers && ints && max <= 65535.0 => (
            MI_UINT16,
            a.data
                .iter()
                .flat_map(|&x| if big { (x as u16).to_be_bytes() } else { (x as u16).to_le_bytes() })
                .collect(),
        ),
        MatClass::Double => {
            (MI_DOUBLE, a.data.iter().flat_map(|&x| if big { x.to_be_bytes() } else { x.to_le_bytes() }).collect())
        }
        MatClass::Single => (
            MI_SINGLE,
            a.data
                .iter()
                .flat_map(|&x| if big { (x as f32).to_be_bytes() } else { (x as f32).to_le_bytes() })
                .collect(),
        ),
        MatClass::Int32 => (
            MI_INT32,
            a.data
                .iter()
                .flat_map(|&x| if big { (x as i32).to_be_bytes() } else { (x as i32).to_le_bytes() })
                .collect(),
        ),
        MatClass::Uint8 => (MI_UINT8, a.data.iter().map(|&x| x as u8).collect()),
    };
    o.element(ty, &bytes);
    let body = o.buf;
    let mut top = Out { big, buf: Vec::new() };
    top.tag(MI_MATRIX, body.len());
    top.buf.extend_from_slice(&body);
    if !opts.compress {
        return Ok(top.buf);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&top.buf).and_then(|_| z.flush()).map_err(|e| Error::invalid(format!("MAT writer: zlib: {e}")))?;
    let packed = z.finish().map_err(|e| Error::invalid(format!("MAT writer: zlib: {e}")))?;
    let mut c = Out { big, buf: Vec::new() };
    c.tag(MI_COMPRESSED, packed.len());
    c.buf.extend_from_slice(&packed);
    Ok(c.buf)
}

/// The bytes of a Level-5 MAT-file holding `vars` (each written with its class).
pub fn mat_bytes(vars: &[(&MatArray, MatClass)], opts: &MatWriteOptions) -> Result<Vec<u8>> {
    let mut header =
        format!("MATLAB 5.0 MAT-file, Platform: fml, Created by: fml {} (test fixtures)", env!("CARGO_PKG_VERSION"))
            .into_bytes();
    header.resize(116, b' ');
    header.extend_from_slice(&[0u8; 8]);
    if opts.big_endian {
        header.extend_from_slice(&0x0100u16.to_be_bytes());
        header.extend_from_slice(b"MI");
    } else {
        header.extend_from_slice(&0x0100u16.to_le_bytes());
        header.extend_from_slice(b"IM");
    }
    for (a, class) in vars {
        header.extend_from_slice(&matrix_element(a, *class, opts)?);
    }
    Ok(header)
}

/// Write a Level-5 MAT-file atomically.
pub fn write_mat(path: impl AsRef<Path>, vars: &[(&MatArray, MatClass)], opts: &MatWriteOptions) -> Result<()> {
    let bytes = mat_bytes(vars, opts)?;
    crate::io::write_atomic_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<MatArray> {
        vec![
            MatArray::from_rows("a", &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.5]]),
            MatArray::from_rows("longer_name", &[vec![0.25], vec![-1.5e5], vec![7.0]]),
            MatArray::from_rows("tri", &[vec![1.0, 2.0, 300.0], vec![4.0, 5.0, 6.0]]),
        ]
    }

    fn parse(bytes: &[u8]) -> Result<MatFile> {
        parse_mat(bytes, Path::new("x.mat"), |_| true)
    }

    #[test]
    fn round_trip_all_layouts() {
        let arrays = sample();
        for compress in [false, true] {
            for big_endian in [false, true] {
                for compact_integers in [false, true] {
                    let opts = MatWriteOptions { compress, big_endian, compact_integers };
                    let vars: Vec<_> = arrays.iter().map(|a| (a, MatClass::Double)).collect();
                    let bytes = mat_bytes(&vars, &opts).unwrap();
                    let f = parse(&bytes).unwrap();
                    assert_eq!(f.arrays, arrays, "{opts:?}");
                }
            }
        }
    }

    #[test]
    fn column_major_indexing() {
        let a = MatArray::from_rows("a", &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(a.at(1, 2), 6.0);
        assert_eq!(a.at(0, 1), 2.0);
        assert_eq!((a.rows(), a.cols()), (2, 3));
        assert!(!a.is_vector());
    }

    #[test]
    fn other_classes_convert() {
        let a = MatArray::from_rows("s", &[vec![0.5, -2.0]]);
        let b = MatArray::from_rows("i", &[vec![-7.0, 70000.0]]);
        let c = MatArray::from_rows("u", &[vec![0.0, 255.0, 3.0]]);
        for big_endian in [false, true] {
            let opts = MatWriteOptions { big_endian, ..Default::default() };
            let bytes =
                mat_bytes(&[(&a, MatClass::Single), (&b, MatClass::Int32), (&c, MatClass::Uint8)], &opts).unwrap();
            let f = parse(&bytes).unwrap();
            assert_eq!(f.arrays, vec![a.clone(), b.clone(), c.clone()]);
        }
    }

    #[test]
    fn filter_skips_conversion() {
        let arrays = sample();
        let vars: Vec<_> = arrays.iter().map(|a| (a, MatClass::Double)).collect();
        let bytes = mat_bytes(&vars, &MatWriteOptions { compress: true, ..Default::default() }).unwrap();
        let f = parse_mat(&bytes, Path::new("x.mat"), |n| n == "tri").unwrap();
        assert_eq!(f.arrays.len(), 1);
        assert_eq!(f.unread, vec!["a", "longer_name"]);
        assert_eq!(f.require("tri").unwrap().at(0, 2), 300.0);
        let err = f.require("idBase").unwrap_err().to_string();
        assert!(err.contains("idBase missing from x.mat"), "{err}");
    }

    #[test]
    fn skipped_classes_are_reported() {
        // A char array 'ab': flags class 4, dims 1x2, name "c", data miUTF16... use miUINT16.
        let mut body = Out { big: false, buf: Vec::new() };
        body.element(MI_UINT32, &[MX_CHAR as u8, 0, 0, 0, 0, 0, 0, 0]);
        body.element(MI_INT32, &[1, 0, 0, 0, 2, 0, 0, 0]);
        body.element(MI_INT8, b"c");
        body.element(MI_UINT16, &[b'a', 0, b'b', 0]);
        let mut bytes = mat_bytes(&[], &MatWriteOptions::default()).unwrap();
        let mut top = Out { big: false, buf: Vec::new() };
        top.tag(MI_MATRIX, body.buf.len());
        bytes.extend_from_slice(&top.buf);
        bytes.extend_from_slice(&body.buf);
        let f = parse(&bytes).unwrap();
        assert!(f.arrays.is_empty());
        let err = f.require("c").unwrap_err().to_string();
        assert!(err.contains("char array"), "{err}");
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let arrays = sample();
        let vars: Vec<_> = arrays.iter().map(|a| (a, MatClass::Double)).collect();
        for compress in [false, true] {
            let bytes = mat_bytes(&vars, &MatWriteOptions { compress, ..Default::default() }).unwrap();
            // Every truncation point past the header is an error (never a panic), except
            // exactly at element boundaries, where a shorter valid file remains.
            for cut in 128..bytes.len() {
                if let Err(e) = parse(&bytes[..cut]) {
                    let s = e.to_string();
                    assert!(s.contains("x.mat"), "{s}");
                }
            }
            let err = parse(&bytes[..bytes.len() - 3]).unwrap_err().to_string();
            assert!(err.contains("truncated") || err.contains("corrupt"), "{err}");
            // Flipped bytes in the body: errors or different values, never a panic.
            for i in (128..bytes.len()).step_by(7) {
                let mut b = bytes.clone();
                b[i] ^= 0x5a;
                let _ = parse(&b);
            }
        }
        assert!(parse(b"short").unwrap_err().to_string().contains("too short"));
        let mut not_mat = vec![b' '; 128];
        not_mat[..5].copy_from_slice(b"hello");
        assert!(parse(&not_mat).unwrap_err().to_string().contains("not a MATLAB"));
        let mut bad_endian = mat_bytes(&[], &MatWriteOptions::default()).unwrap();
        bad_endian[126..128].copy_from_slice(b"XX");
        assert!(parse(&bad_endian).unwrap_err().to_string().contains("endian"));
    }

    #[test]
    fn v73_files_are_refused_with_a_hint() {
        let mut h = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00".to_vec();
        h.resize(512, b' ');
        h.extend_from_slice(HDF5_SIGNATURE);
        h.resize(1024, 0);
        let err = parse(&h).unwrap_err().to_string();
        assert!(err.contains("v7.3") && err.contains("-v7"), "{err}");
        let err = parse(&h[512..]).unwrap_err().to_string();
        assert!(err.contains("v7.3"), "{err}");
    }

    #[test]
    fn dims_mismatch_is_reported() {
        let a = MatArray::from_rows("m", &[vec![1.0, 2.0], vec![3.0, 4.0]]);
        let mut bytes = mat_bytes(&[(&a, MatClass::Double)], &MatWriteOptions::default()).unwrap();
        // Dimensions sub-element: header(128) + matrix tag(8) + flags(16) + dims tag(8) -> rows.
        let rows_at = 128 + 8 + 16 + 8;
        bytes[rows_at] = 3;
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("\"m\"") && err.contains("3 x 2"), "{err}");
    }

    #[test]
    fn write_mat_is_readable_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.mat");
        let a = MatArray::from_rows("v", &[vec![1.0, 2.0]]);
        write_mat(&p, &[(&a, MatClass::Double)], &MatWriteOptions { compress: true, ..Default::default() }).unwrap();
        assert_eq!(read_mat(&p).unwrap().arrays, vec![a]);
        let err = read_mat(dir.path().join("missing.mat")).unwrap_err().to_string();
        assert!(err.contains("missing.mat"), "{err}");
    }
}
