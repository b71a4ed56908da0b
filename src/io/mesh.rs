//! Triangle meshes with optional per-vertex colour: OBJ (read/write) and binary PLY (write).

use crate::error::{Error, Result};

use std::io::Write;
use std::path::Path;

/// A triangle mesh. Colours, when present, are linear RGB in [0, 1], one per vertex.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mesh {
    pub vertices: Vec<[f32; 3]>,
    pub triangles: Vec<[u32; 3]>,
    pub colors: Option<Vec<[f32; 3]>>,
}

impl Mesh {
    /// Check that every triangle index is in range and every value is finite.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let n = self.vertices.len() as u32;
        if let Some((t, tri)) = self.triangles.iter().enumerate().find(|(_, t)| t.iter().any(|&i| i >= n)) {
            return Err(Error::format(origin, format!("triangle {t} {tri:?} indexes past the {n} vertices")));
        }
        if let Some(i) = self.vertices.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(Error::format(origin, format!("vertex {i} is not finite")));
        }
        if let Some(c) = &self.colors
            && c.len() != self.vertices.len()
        {
            return Err(Error::format(origin, format!("{} colours for {} vertices", c.len(), n)));
        }
        Ok(())
    }

    /// Write OBJ or PLY, chosen by the extension of `path` (`.obj`, `.ply`), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut group = crate::io::WriteGroup::new();
        self.stage(&mut group, path)?;
        group.commit()
    }

    /// Stage the mesh as `path` (.obj or .ply) in a group of files written together.
    pub fn stage(&self, group: &mut crate::io::WriteGroup, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        check_save_path(path)?;
        if extension(path) == "obj" {
            group.stage(path, |w| self.write_obj(w))
        } else {
            group.stage(path, |w| self.write_ply(w))
        }
    }

    /// OBJ with `v x y z r g b` lines when colours are present (read by MeshLab and Blender).
    pub fn save_obj(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(path, |w| self.write_obj(w))
    }

    fn write_obj(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(w, "# written by fml")?;
        for (i, v) in self.vertices.iter().enumerate() {
            match &self.colors {
                Some(c) => {
                    let c = c[i].map(|x| x.clamp(0.0, 1.0));
                    writeln!(w, "v {} {} {} {:.4} {:.4} {:.4}", v[0], v[1], v[2], c[0], c[1], c[2])?
                }
                None => writeln!(w, "v {} {} {}", v[0], v[1], v[2])?,
            }
        }
        for t in &self.triangles {
            writeln!(w, "f {} {} {}", t[0] + 1, t[1] + 1, t[2] + 1)?;
        }
        Ok(())
    }

    /// Binary little-endian PLY with uchar vertex colours when present.
    pub fn save_ply(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(path, |w| self.write_ply(w))
    }

    fn write_ply(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(w, "ply\nformat binary_little_endian 1.0\ncomment written by fml")?;
        writeln!(w, "element vertex {}", self.vertices.len())?;
        writeln!(w, "property float x\nproperty float y\nproperty float z")?;
        if self.colors.is_some() {
            writeln!(w, "property uchar red\nproperty uchar green\nproperty uchar blue")?;
        }
        writeln!(w, "element face {}", self.triangles.len())?;
        writeln!(w, "property list uchar int vertex_indices\nend_header")?;
        for (i, v) in self.vertices.iter().enumerate() {
            for x in v {
                w.write_all(&x.to_le_bytes())?;
            }
            if let Some(c) = &self.colors {
                let b = c[i].map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8);
                w.write_all(&b)?;
            }
        }
        for t in &self.triangles {
            w.write_all(&[3u8])?;
            for &i in t {
                w.write_all(&(i as i32).to_le_bytes())?;
            }
        }
        Ok(())
    }

    /// Read an OBJ: `v x y z [r g b]` and `f` lines (any of `i`, `i/t`, `i//n`, `i/t/n`, negative
    /// indices); polygons are fan-triangulated; other lines are ignored.
    pub fn load_obj(path: impl AsRef<Path>) -> Result<Mesh> {
        let path = path.as_ref();
        let text = crate::io::read_text(path)?;
        Self::parse_obj(&text, path)
    }

    /// Parse OBJ text; `origin` names the source in errors.
    pub fn parse_obj(text: &str, origin: &Path) -> Result<Mesh> {
        let mut mesh = Mesh::default();
        let mut colors: Vec<[f32; 3]> = Vec::new();
        let mut colored = 0usize;
        for (lineno, line) in text.lines().enumerate() {
            let bad = |what: &str| Error::format(origin, format!("line {}: {what}", lineno + 1));
            let mut it = line.split_whitespace();
            match it.next() {
                Some("v") => {
                    let nums: Vec<f32> = it
                        .map(|s| s.parse::<f32>().map_err(|_| bad(&format!("bad number {s:?} in vertex"))))
                        .collect::<Result<_>>()?;
                    if nums.len() < 3 {
                        return Err(bad("vertex with fewer than 3 coordinates"));
                    }
                    if nums.iter().any(|x| !x.is_finite()) {
                        return Err(bad("vertex is not finite"));
                    }
                    mesh.vertices.push([nums[0], nums[1], nums[2]]);
                    if nums.len() >= 6 {
                        colors.push([nums[3], nums[4], nums[5]]);
                        colored += 1;
                    } else {
                        colors.push([0.0; 3]);
                    }
                }
                Some("f") => {
                    let n = mesh.vertices.len() as i64;
                    let idx: Vec<u32> = it
                        .map(|s| {
                            let first = s.split('/').next().unwrap_or("");
                            let i: i64 = first.parse().map_err(|_| bad(&format!("bad face index {s:?}")))?;
                            let i = if i < 0 { n + i } else { i - 1 };
                            if i < 0 || i >= n {
                                return Err(bad(&format!("face index {s} out of range (vertices so far: {n})")));
                            }
                            Ok(i as u32)
                        })
                        .collect::<Result<_>>()?;
                    if idx.len() < 3 {
                        return Err(bad("face with fewer than 3 vertices"));
                    }
                    for k in 1..idx.len() - 1 {
                        mesh.triangles.push([idx[0], idx[k], idx[k + 1]]);
                    }
                }
                _ => {}
            }
        }
        if mesh.vertices.is_empty() {
            return Err(Error::format(origin, "no vertices"));
        }
        if colored == mesh.vertices.len() {
            mesh.colors = Some(colors);
        }
        Ok(mesh)
    }
}

/// Whether [`Mesh::save`] can write `path` (its extension picks OBJ or PLY): for commands that
/// check their outputs before the work.
pub fn check_save_path(path: &Path) -> Result<()> {
    match extension(path).as_str() {
        "obj" | "ply" => Ok(()),
        other => {
            Err(Error::invalid(format!("{}: unknown mesh extension {other:?} (use .obj or .ply)", path.display())))
        }
    }
}

fn extension(path: &Path) -> String {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quad() -> Mesh {
        Mesh {
            vertices: vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.5], [0.0, 1.0, 0.0]],
            triangles: vec![[0, 1, 2], [0, 2, 3]],
            colors: Some(vec![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]),
        }
    }

    #[test]
    fn obj_round_trip_with_colours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.obj");
        let m = quad();
        m.save(&p).unwrap();
        let back = Mesh::load_obj(&p).unwrap();
        assert_eq!(back.vertices, m.vertices);
        assert_eq!(back.triangles, m.triangles);
        let (a, b) = (back.colors.unwrap(), m.colors.unwrap());
        for (x, y) in a.iter().zip(&b) {
            for k in 0..3 {
                assert!((x[k] - y[k]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn obj_polygons_slashes_and_negative_indices() {
        let text = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nf 1/1/1 2/1/1 3//1 -1\n";
        let m = Mesh::parse_obj(text, Path::new("x.obj")).unwrap();
        assert_eq!(m.triangles, vec![[0, 1, 2], [0, 2, 3]]);
        assert!(m.colors.is_none());
    }

    #[test]
    fn obj_errors_name_file_and_line() {
        let err = Mesh::parse_obj("v 0 0 0\nf 1 2 3\n", Path::new("bad.obj")).unwrap_err().to_string();
        assert!(err.contains("bad.obj") && err.contains("line 2"), "{err}");
        let err = Mesh::parse_obj("v 0 nan 0\n", Path::new("n.obj")).unwrap_err().to_string();
        assert!(err.contains("not finite"), "{err}");
    }

    #[test]
    fn ply_header_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.ply");
        let m = quad();
        m.save(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let end = text.find("end_header\n").unwrap() + "end_header\n".len();
        assert!(text[..end].contains("element vertex 4"));
        assert_eq!(bytes.len() - end, 4 * (12 + 3) + 2 * (1 + 12));
    }
}
