//! The packed dataset file (`.fmlds`): fixed-size records of cropped faces that training reads
//! with random access, without decoding images again.
//!
//! # Layout (version 1, all integers and floats little-endian)
//!
//! ```text
//! offset 0            8 bytes   magic "FMLDSv1\n"
//! offset 8            count records, each `record_bytes` long:
//!                       u8  [S, S, 3]  RGB crop, row-major, top row first
//!                       f32 [68, 2]    landmarks (u, v), crop pixel coordinates
//!                       f32 [68]       confidence in [0, 1] (0 = missing)
//!                       u64            checksum of the record's preceding bytes
//! after the records   UTF-8 JSON index (see [`DatasetHeader`])
//! last 16 bytes       u64 length of the JSON index, then the 8-byte end magic "FMLDSEND"
//! ```
//!
//! The index sits at the end so `fml prepare` can stream records through one atomic write
//! without knowing in advance how many faces survive. A file cut short loses its end magic and
//! is refused on open; a file whose size does not match `8 + count * record_bytes + json + 16`
//! is refused too. Damaged record bytes are caught by the per-record checksum when read.
//! The train/validation split is a flag per record in the index (one file, both splits).

use super::landmarks::N_LANDMARKS;
use super::scheme::Scheme;
use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// First bytes of every dataset file.
pub const MAGIC: &[u8; 8] = b"FMLDSv1\n";
/// Last bytes of every complete dataset file.
pub const END_MAGIC: &[u8; 8] = b"FMLDSEND";
/// Current format version.
pub const VERSION: u32 = 1;
/// Largest crop side accepted on open (guards against absurd headers).
pub const MAX_SIZE: u32 = 4096;

/// Which part of the data a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

/// Index entry of one record.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordMeta {
    /// The image the face was cut from, as given to `fml prepare`.
    pub source: String,
    /// `[x0, y0, side]`: the crop's square box in source-image pixels (so crop coordinates map
    /// back as `u_src = x0 + u * side / size`).
    #[serde(rename = "box")]
    pub face_box: [i64; 3],
    pub split: Split,
}

/// The JSON index at the end of a dataset file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetHeader {
    /// Always "fmlds".
    pub format: String,
    pub version: u32,
    /// Crop side S in pixels (images are S x S).
    pub size: u32,
    /// Landmark order of the records; always iBUG-68.
    pub landmarks: Scheme,
    pub count: usize,
    pub record_bytes: u64,
    /// Free-form provenance: the program and the `prepare` settings.
    #[serde(default)]
    pub info: serde_json::Value,
    pub records: Vec<RecordMeta>,
}

/// Bytes of one record for crop side `size`.
pub fn record_bytes(size: u32) -> u64 {
    let s = size as u64;
    s * s * 3 + (N_LANDMARKS as u64 * 3) * 4 + 8
}

/// One face: the crop and its landmarks.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `[S, S, 3]` RGB, row-major.
    pub image: Vec<u8>,
    /// `[68, 2]` crop pixel coordinates.
    pub landmarks: [[f32; 2]; N_LANDMARKS],
    /// `[68]`.
    pub confidence: [f32; N_LANDMARKS],
}

/// 64-bit FNV-1a-style checksum over 8-byte words (fast, catches flipped or zeroed bytes; not
/// cryptographic).
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in words.by_ref() {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^ (h >> 31)
}

impl Record {
    fn encode(&self, size: u32, out: &mut Vec<u8>) -> std::io::Result<()> {
        let n = size as usize * size as usize * 3;
        if self.image.len() != n {
            return Err(std::io::Error::other(format!("record image has {} bytes, expected {n}", self.image.len())));
        }
        out.clear();
        out.extend_from_slice(&self.image);
        for p in &self.landmarks {
            out.extend_from_slice(&p[0].to_le_bytes());
            out.extend_from_slice(&p[1].to_le_bytes());
        }
        for c in &self.confidence {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let h = checksum(out);
        out.extend_from_slice(&h.to_le_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8], size: u32) -> std::result::Result<Record, String> {
        let body = bytes.len() - 8;
        let stored = u64::from_le_bytes(bytes[body..].try_into().unwrap());
        if checksum(&bytes[..body]) != stored {
            return Err("checksum mismatch (file damaged)".into());
        }
        let n = size as usize * size as usize * 3;
        let f = |k: usize| f32::from_le_bytes(bytes[n + 4 * k..n + 4 * k + 4].try_into().unwrap());
        let mut landmarks = [[0.0f32; 2]; N_LANDMARKS];
        let mut confidence = [0.0f32; N_LANDMARKS];
        for i in 0..N_LANDMARKS {
            landmarks[i] = [f(2 * i), f(2 * i + 1)];
            confidence[i] = f(2 * N_LANDMARKS + i);
        }
        if landmarks.iter().flatten().chain(&confidence).any(|x| !x.is_finite()) {
            return Err("non-finite landmark or confidence".into());
        }
        Ok(Record { image: bytes[..n].to_vec(), landmarks, confidence })
    }
}

/// Write a dataset file atomically from `(record, meta)` pairs, in order. `info` is stored
/// as the index's provenance. Returns the number of records written.
///
/// Nothing is written (and an existing file is kept) when `records` is empty or a record has
/// the wrong image size: an empty dataset is always a mistake upstream.
pub fn write_dataset<I>(path: impl AsRef<Path>, size: u32, info: serde_json::Value, records: I) -> Result<usize>
where
    I: IntoIterator<Item = (Record, RecordMeta)>,
{
    write_dataset_then(path, size, info, records, |_| ())
}

/// [`write_dataset`], with `finish` given every record's meta (in file order) once all records
/// are written and before the index is: the index comes last in the file, so what depends on the
/// whole set (`fml prepare`'s train/validation split over the faces that survived its checks)
/// can be decided there.
pub fn write_dataset_then<I>(
    path: impl AsRef<Path>,
    size: u32,
    info: serde_json::Value,
    records: I,
    finish: impl FnOnce(&mut [RecordMeta]),
) -> Result<usize>
where
    I: IntoIterator<Item = (Record, RecordMeta)>,
{
    let path = path.as_ref();
    if size == 0 || size > MAX_SIZE {
        return Err(Error::invalid(format!("dataset crop size {size} outside 1..={MAX_SIZE}")));
    }
    let mut metas = Vec::new();
    let mut empty = false;
    let result = crate::io::write_atomic(path, |w| {
        w.write_all(MAGIC)?;
        let mut buf = Vec::with_capacity(record_bytes(size) as usize);
        for (rec, meta) in records {
            rec.encode(size, &mut buf)?;
            w.write_all(&buf)?;
            metas.push(meta);
        }
        if metas.is_empty() {
            empty = true;
            return Err(std::io::Error::other("no records"));
        }
        finish(&mut metas);
        let header = DatasetHeader {
            format: "fmlds".into(),
            version: VERSION,
            size,
            landmarks: Scheme::Ibug68,
            count: metas.len(),
            record_bytes: record_bytes(size),
            info,
            records: std::mem::take(&mut metas),
        };
        let json = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        w.write_all(&json)?;
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(END_MAGIC)?;
        metas = header.records;
        Ok(())
    });
    if empty {
        return Err(Error::invalid(format!("{}: no records to write; nothing was written", path.display())));
    }
    result?;
    Ok(metas.len())
}

/// An open dataset file: the parsed index plus random access to records.
#[derive(Debug)]
pub struct Dataset {
    path: PathBuf,
    file: ReadAt,
    header: DatasetHeader,
}

impl Dataset {
    /// Open and validate `path`: magics, index, sizes. Errors name the file and the problem.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let file = ReadAt::new(file);
        let bad = |what: String| Error::format(path, what);
        if len < 8 + 16 {
            return Err(bad(format!("{len} bytes: too short to be a dataset file (truncated?)")));
        }
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, 0).map_err(|e| Error::io(path, e))?;
        if &head != MAGIC {
            return Err(bad("not an fml dataset file (bad magic; expected \"FMLDSv1\")".into()));
        }
        let mut tail = [0u8; 16];
        file.read_exact_at(&mut tail, len - 16).map_err(|e| Error::io(path, e))?;
        if &tail[8..] != END_MAGIC {
            return Err(bad("no end marker: the file is truncated or was not completely written".into()));
        }
        let json_len = u64::from_le_bytes(tail[..8].try_into().unwrap());
        if json_len > len - 24 {
            return Err(bad(format!("index length {json_len} exceeds the file size {len} (corrupt)")));
        }
        let mut json = vec![0u8; json_len as usize];
        file.read_exact_at(&mut json, len - 16 - json_len).map_err(|e| Error::io(path, e))?;
        let header: DatasetHeader =
            serde_json::from_slice(&json).map_err(|e| bad(format!("corrupt index: {e} (column {})", e.column())))?;
        if header.format != "fmlds" || header.version != VERSION {
            return Err(bad(format!(
                "format {:?} version {}: expected \"fmlds\" version {VERSION}",
                header.format, header.version
            )));
        }
        if header.size == 0 || header.size > MAX_SIZE {
            return Err(bad(format!("index: size {} outside 1..={MAX_SIZE}", header.size)));
        }
        if header.landmarks != Scheme::Ibug68 {
            return Err(bad(format!("index: landmarks {:?}, expected ibug68", header.landmarks)));
        }
        if header.record_bytes != record_bytes(header.size) {
            return Err(bad(format!(
                "index: record_bytes {} does not match size {} ({} expected)",
                header.record_bytes,
                header.size,
                record_bytes(header.size)
            )));
        }
        if header.count != header.records.len() || header.count == 0 {
            return Err(bad(format!("index: count {} but {} record entries", header.count, header.records.len())));
        }
        let expected = (header.count as u64)
            .checked_mul(header.record_bytes)
            .and_then(|d| d.checked_add(8 + json_len + 16))
            .ok_or_else(|| bad("index: count overflows".into()))?;
        if expected != len {
            return Err(bad(format!(
                "file is {len} bytes but its index describes {expected} ({} records of {} bytes): truncated or corrupt",
                header.count, header.record_bytes
            )));
        }
        Ok(Dataset { path: path.to_path_buf(), file, header })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &DatasetHeader {
        &self.header
    }

    /// Number of records (both splits).
    pub fn len(&self) -> usize {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Crop side S.
    pub fn size(&self) -> u32 {
        self.header.size
    }

    /// Record indices of one split, ascending; `None` gives all records.
    pub fn indices(&self, split: Option<Split>) -> Vec<usize> {
        let r = &self.header.records;
        (0..r.len()).filter(|&i| split.is_none_or(|s| r[i].split == s)).collect()
    }

    /// Read and verify record `i`. Safe to call from many threads at once.
    pub fn read(&self, i: usize) -> Result<Record> {
        if i >= self.len() {
            return Err(Error::invalid(format!(
                "{}: record {i} out of range (count {})",
                self.path.display(),
                self.len()
            )));
        }
        let rb = self.header.record_bytes;
        let mut buf = vec![0u8; rb as usize];
        self.file.read_exact_at(&mut buf, 8 + i as u64 * rb).map_err(|e| Error::io(&self.path, e))?;
        Record::decode(&buf, self.header.size).map_err(|what| Error::format(&self.path, format!("record {i}: {what}")))
    }
}

/// Positional reads that several threads can share without a lock where the OS allows it.
#[derive(Debug)]
struct ReadAt {
    #[cfg(unix)]
    file: File,
    #[cfg(not(unix))]
    file: std::sync::Mutex<File>,
}

impl ReadAt {
    fn new(file: File) -> Self {
        #[cfg(unix)]
        return ReadAt { file };
        #[cfg(not(unix))]
        return ReadAt { file: std::sync::Mutex::new(file) };
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(buf)
        }
    }
}

/// Write a dataset of `count` synthetic faces (smooth colour gradients with a dot at every
/// landmark, landmarks on a jittered face-like layout) for tests and benchmarks of code that
/// consumes datasets. Every 10th record is in the validation split.
pub fn write_synthetic(path: impl AsRef<Path>, count: usize, size: u32, seed: u64) -> Result<usize> {
    let s = size as f32;
    let records = (0..count).map(move |k| {
        let mut rng = crate::rng::Rng::for_item(seed, k as u64);
        let (r0, g0, b0) =
            (rng.range(40.0, 200.0) as f32, rng.range(40.0, 200.0) as f32, rng.range(40.0, 200.0) as f32);
        let mut image = vec![0u8; (size * size * 3) as usize];
        for y in 0..size as usize {
            for x in 0..size as usize {
                let (fx, fy) = (x as f32 / s, y as f32 / s);
                let px = &mut image[(y * size as usize + x) * 3..][..3];
                px[0] = (r0 + 50.0 * fx) as u8;
                px[1] = (g0 + 50.0 * fy) as u8;
                px[2] = (b0 + 25.0 * (fx + fy)) as u8;
            }
        }
        let mut landmarks = [[0.0f32; 2]; N_LANDMARKS];
        for (i, p) in landmarks.iter_mut().enumerate() {
            // An ellipse of points around the centre, index-dependent so that left and right
            // differ; enough structure for flip and transform tests.
            let a = i as f32 / N_LANDMARKS as f32 * std::f32::consts::TAU;
            let r = 0.3 * s * (0.6 + 0.4 * ((i % 5) as f32 / 4.0));
            *p = [0.5 * s + r * a.cos() + rng.range(-1.0, 1.0) as f32, 0.5 * s + r * a.sin()];
            let (cx, cy) = (p[0] as i64, p[1] as i64);
            if (0..size as i64).contains(&cx) && (0..size as i64).contains(&cy) {
                image[(cy as usize * size as usize + cx as usize) * 3..][..3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let meta = RecordMeta {
            source: format!("synthetic/{k}"),
            face_box: [0, 0, size as i64],
            split: if k % 10 == 9 { Split::Val } else { Split::Train },
        };
        (Record { image, landmarks, confidence: [1.0; N_LANDMARKS] }, meta)
    });
    write_dataset(path, size, serde_json::json!({"synthetic": true, "seed": seed}), records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_open_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.fmlds");
        assert_eq!(write_synthetic(&p, 12, 16, 3).unwrap(), 12);
        let ds = Dataset::open(&p).unwrap();
        assert_eq!((ds.len(), ds.size()), (12, 16));
        assert_eq!(ds.indices(Some(Split::Val)), vec![9]);
        assert_eq!(ds.indices(None).len(), 12);
        let r = ds.read(4).unwrap();
        assert_eq!(r.image.len(), 16 * 16 * 3);
        assert!(ds.read(12).is_err());
        // Same content as generated.
        let q = dir.path().join("e.fmlds");
        write_synthetic(&q, 12, 16, 3).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
    }

    #[test]
    fn empty_dataset_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.fmlds");
        let e = write_dataset(&p, 8, serde_json::Value::Null, std::iter::empty()).unwrap_err();
        assert!(e.to_string().contains("no records"), "{e}");
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn truncated_and_corrupt_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.fmlds");
        write_synthetic(&p, 5, 8, 1).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let q = dir.path().join("bad.fmlds");
        let check = |data: &[u8], needle: &str| {
            std::fs::write(&q, data).unwrap();
            let e = Dataset::open(&q).unwrap_err().to_string();
            assert!(e.contains("bad.fmlds") && e.contains(needle), "{needle}: {e}");
        };
        check(&bytes[..bytes.len() - 1], "truncated");
        check(&bytes[..bytes.len() / 2], "truncated");
        check(&bytes[..10], "too short");
        check(b"", "too short");
        let mut m = bytes.clone();
        m[0] = b'X';
        check(&m, "magic");
        // Drop one record from the middle but keep the tail: size no longer matches.
        let rb = record_bytes(8) as usize;
        let mut cut = bytes[..8 + rb].to_vec();
        cut.extend_from_slice(&bytes[8 + 2 * rb..]);
        check(&cut, "truncated or corrupt");
        // Damage inside the JSON index.
        let json_len = u64::from_le_bytes(bytes[bytes.len() - 16..bytes.len() - 8].try_into().unwrap()) as usize;
        let mut j = bytes.clone();
        j[bytes.len() - 16 - json_len + 1] = b'#';
        check(&j, "corrupt index");
        // Damage inside a record: opens, but reading that record fails.
        let mut r = bytes.clone();
        r[8 + rb + 5] ^= 0xFF;
        std::fs::write(&q, &r).unwrap();
        let ds = Dataset::open(&q).unwrap();
        assert!(ds.read(0).is_ok());
        let e = ds.read(1).unwrap_err().to_string();
        assert!(e.contains("bad.fmlds") && e.contains("record 1") && e.contains("checksum"), "{e}");
        assert!(Dataset::open(dir.path().join("none.fmlds")).unwrap_err().to_string().contains("none.fmlds"));
    }
}
