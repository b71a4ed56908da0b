//! Reading training images (PNG, JPEG, BMP) into 8-bit RGB, whatever their stored colour type.
//!
//! Conversions: grayscale is replicated to R = G = B; 16-bit channels are rounded to 8 bits
//! (`v16 / 257`); alpha is composited onto black (`rgb * a`). Compositing instead of dropping
//! alpha because the colour of fully transparent pixels is undefined (often leftover or white)
//! and would otherwise appear as content; black reads as "no data".

use crate::error::{Error, Result};
use image::{DynamicImage, RgbImage};
use std::path::Path;

/// Decode `path` (format guessed from the content, not the extension) into 8-bit RGB.
///
/// Errors name the file: unreadable (I/O), unknown format, corrupt or truncated data, or a
/// zero-sized image.
pub fn read_rgb8(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb8(&bytes, path)
}

/// Decode an in-memory encoded image; `origin` names it in errors.
pub fn decode_rgb8(bytes: &[u8], origin: &Path) -> Result<RgbImage> {
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| Error::io(origin, e))?;
    let Some(format) = reader.format() else {
        return Err(Error::format(origin, "not a PNG, JPEG or BMP image (unrecognised content)"));
    };
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // The JPEG decoder pads a truncated scan with grey instead of failing; a file cut short
        // (interrupted download or copy) would then become a silently damaged training image.
        return Err(Error::format(origin, "truncated JPEG (no end-of-image marker)"));
    }
    let img = reader.decode().map_err(|e| Error::format(origin, format!("cannot decode {format:?} image: {e}")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::format(origin, "image has zero width or height"));
    }
    Ok(to_rgb8(&img))
}

/// An EOI marker (FF D9) among the last bytes; a few trailing bytes (padding some writers
/// append) are tolerated.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Convert any decoded colour type to 8-bit RGB with the rules in the module docs.
pub fn to_rgb8(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba16();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u64;
        for c in 0..3 {
            // c16 * a16 / 65535 in 16 bits, then / 257 to 8 bits, rounded once at the end.
            let v = (p[c] as u64 * a * 2 + 65535 * 257) / (2 * 65535 * 257);
            o[c] = v as u8;
        }
    }
    out
}

/// Interleaved 8-bit RGB `[H*W*3]` to the encoder's planar layout `[3, H*W]` in [0, 1], with the
/// training loader's exact `v / 255` (so inference and evaluation see the values training saw).
pub fn rgb8_to_planar(raw: &[u8]) -> Vec<f32> {
    let plane = raw.len() / 3;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c] as f32 / 255.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    #[test]
    fn planar_layout_splits_the_channels() {
        // Two pixels: (255, 0, 51) and (102, 153, 204).
        let out = rgb8_to_planar(&[255, 0, 51, 102, 153, 204]);
        assert_eq!(out, vec![1.0, 102.0 / 255.0, 0.0, 153.0 / 255.0, 51.0 / 255.0, 204.0 / 255.0]);
    }

    fn encode(img: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn colour_types_become_rgb8() {
        let p = Path::new("t.png");
        let gray = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(3, 2, Luma([77u8])));
        let out = decode_rgb8(&encode(&gray, image::ImageFormat::Png), p).unwrap();
        assert_eq!(out.dimensions(), (3, 2));
        assert_eq!(out.get_pixel(2, 1).0, [77, 77, 77]);

        let g16 = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(2, 2, Luma([257u16 * 200])));
        assert_eq!(decode_rgb8(&encode(&g16, image::ImageFormat::Png), p).unwrap().get_pixel(0, 0).0, [200; 3]);

        let rgb16 = DynamicImage::ImageRgb16(ImageBuffer::from_pixel(2, 2, Rgb([65535u16, 0, 257 * 10])));
        assert_eq!(decode_rgb8(&encode(&rgb16, image::ImageFormat::Png), p).unwrap().get_pixel(1, 1).0, [255, 0, 10]);

        let mut rgba = ImageBuffer::from_pixel(2, 1, Rgba([200u8, 100, 50, 255]));
        rgba.put_pixel(1, 0, Rgba([200, 100, 50, 0]));
        let rgba = DynamicImage::ImageRgba8(rgba);
        let out = decode_rgb8(&encode(&rgba, image::ImageFormat::Png), p).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [200, 100, 50]);
        assert_eq!(out.get_pixel(1, 0).0, [0, 0, 0]);

        let la = DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(1, 1, LumaA([200u8, 128])));
        let out = decode_rgb8(&encode(&la, image::ImageFormat::Png), p).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [100; 3]);

        let bmp = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 3, Rgb([1u8, 2, 3])));
        assert_eq!(decode_rgb8(&encode(&bmp, image::ImageFormat::Bmp), p).unwrap().get_pixel(3, 2).0, [1, 2, 3]);
    }

    fn noisy(w: u32, h: u32) -> DynamicImage {
        let mut r = crate::rng::Rng::new(5);
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |_, _| Rgb([r.below(256) as u8, 90, 200])))
    }

    #[test]
    fn corrupt_and_truncated_images_fail_with_the_file_name() {
        let p = Path::new("dir/face.jpg");
        let jpg = encode(&noisy(64, 48), image::ImageFormat::Jpeg);
        assert_eq!(decode_rgb8(&jpg, p).unwrap().dimensions(), (64, 48));
        let e = decode_rgb8(&jpg[..jpg.len() / 2], p).unwrap_err().to_string();
        assert!(e.contains("dir/face.jpg") && e.contains("truncated"), "{e}");

        let png = encode(&noisy(64, 48), image::ImageFormat::Png);
        let e = decode_rgb8(&png[..png.len() / 2], Path::new("a.png")).unwrap_err().to_string();
        assert!(e.contains("a.png") && e.contains("decode"), "{e}");
        let mut bad = png.clone();
        for b in bad.iter_mut().skip(60).take(200) {
            *b ^= 0x5A;
        }
        assert!(decode_rgb8(&bad, Path::new("a.png")).is_err());

        let bmp = encode(&noisy(16, 16), image::ImageFormat::Bmp);
        assert!(decode_rgb8(&bmp[..bmp.len() / 2], Path::new("a.bmp")).is_err());

        let e = decode_rgb8(b"hello, not an image", Path::new("x.png")).unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("unrecognised"), "{e}");
        let e = read_rgb8("/nonexistent/dir/q.png").unwrap_err().to_string();
        assert!(e.contains("q.png"), "{e}");
    }
}
