//! Reading training images (PNG, JPEG, BMP) into 8-bit RGB, whatever their stored colour type.
//!
//! Conversions: grayscale is replicated to R = G = B; 16-bit channels are rounded to 8 bits
//! (`v16 / 257`); alpha is composited onto black (`rgb * a`). Compositing instead of dropping
//! alpha because the colour of fully transparent pixels is undefined (often leftover or white)
//! and would otherwise appear as content; black reads as "no data".
//!
//! Orientation: an EXIF orientation tag (phone JPEGs, some PNGs) is applied, so pixels come out
//! upright as image viewers, OpenCV's `imread` and most landmark tools show them, and landmark
//! files made on the displayed image line up with them.

use crate::error::{Error, Result};
use image::{DynamicImage, ImageDecoder, RgbImage};
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
    let cannot = |e: image::ImageError| Error::format(origin, format!("cannot decode {format:?} image: {e}"));
    let mut decoder = reader.into_decoder().map_err(cannot)?;
    // `ImageReader::decode`'s allocation check (512 MiB by default), which `into_decoder` skips.
    image::Limits::default().reserve(decoder.total_bytes()).map_err(cannot)?;
    // A malformed EXIF block is no reason to refuse pixels that decode: it reads as upright.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::format(origin, "image has zero width or height"));
    }
    Ok(to_rgb8(&img))
}

/// Whether the JPEG's own end-of-image marker (FF D9) is there, found by walking its marker
/// segments (skipped by their lengths, so an EOI inside an EXIF thumbnail does not count) and
/// entropy-coded scans (where FF is stuffed as FF 00, so FF D9 is a marker). Data after the EOI
/// is ignored: phones append trailers (metadata, the video of a "motion photo") that a search of
/// the last bytes would take for truncation. Only data that ends before the EOI is `false`; a
/// structure this walk cannot follow is left to the decoder to judge (`true`).
fn jpeg_has_end_marker(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    let mut in_scan = false;
    while i + 1 < b.len() {
        if in_scan {
            if b[i] != 0xFF {
                i += 1;
                continue;
            }
            match b[i + 1] {
                0x00 | 0xD0..=0xD7 => {
                    i += 2; // stuffed byte or restart marker: still in the scan
                    continue;
                }
                0xFF => {
                    i += 1; // fill byte before a marker
                    continue;
                }
                _ => in_scan = false, // a marker ends the scan; handled below
            }
        }
        if b[i] != 0xFF {
            return true;
        }
        match b[i + 1] {
            0xD9 => return true,
            0xFF => i += 1,
            0x01 | 0xD0..=0xD8 => i += 2, // markers without a length
            m => {
                let Some(len) = b.get(i + 2..i + 4).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
                    return false;
                };
                if len < 2 {
                    return true;
                }
                i += 2 + len;
                in_scan = m == 0xDA;
            }
        }
    }
    false
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

    /// A JPEG written with `exif` (a TIFF block) as its APP1 segment.
    fn jpeg_with_exif(img: &DynamicImage, exif: Vec<u8>) -> Vec<u8> {
        use image::ImageEncoder;
        let mut buf = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95);
        enc.set_exif_metadata(exif).unwrap();
        let rgb = img.to_rgb8();
        enc.write_image(rgb.as_raw(), rgb.width(), rgb.height(), image::ExtendedColorType::Rgb8).unwrap();
        buf
    }

    /// A little-endian TIFF block with one IFD entry: Orientation (0x0112) = `value`, followed
    /// by `extra` bytes.
    fn exif_orientation(value: u16, extra: &[u8]) -> Vec<u8> {
        let mut t = b"II*\0".to_vec();
        t.extend(8u32.to_le_bytes()); // offset of the first IFD
        t.extend(1u16.to_le_bytes()); // one entry
        t.extend(0x0112u16.to_le_bytes());
        t.extend(3u16.to_le_bytes()); // SHORT
        t.extend(1u32.to_le_bytes()); // count
        t.extend(value.to_le_bytes());
        t.extend([0, 0]);
        t.extend(0u32.to_le_bytes()); // no next IFD
        t.extend_from_slice(extra);
        t
    }

    /// A phone photo stored sideways with orientation 6 ("rotate 90° clockwise to display")
    /// comes out upright: the stored 64x32 becomes 32x64, and the stored top-left corner's
    /// colour lands at the top right.
    #[test]
    fn exif_orientation_is_applied() {
        let stored = DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 32, |x, y| {
            if x < 16 && y < 16 { Rgb([250, 20, 20]) } else { Rgb([20, 20, 250]) }
        }));
        let p = Path::new("phone.jpg");
        let plain = decode_rgb8(&jpeg_with_exif(&stored, exif_orientation(1, &[])), p).unwrap();
        assert_eq!(plain.dimensions(), (64, 32));
        assert!(plain.get_pixel(4, 4)[0] > 200);
        let out = decode_rgb8(&jpeg_with_exif(&stored, exif_orientation(6, &[])), p).unwrap();
        assert_eq!(out.dimensions(), (32, 64));
        assert!(out.get_pixel(27, 4)[0] > 200, "{:?}", out.get_pixel(27, 4));
        assert!(out.get_pixel(4, 4)[2] > 200, "{:?}", out.get_pixel(4, 4));
    }

    /// Data after the end-of-image marker (a phone's trailer) is not truncation; an EOI inside
    /// the EXIF block (a thumbnail's) does not hide a main image cut short.
    #[test]
    fn jpeg_end_marker_is_the_images_own() {
        let p = Path::new("t.jpg");
        let img = noisy(48, 40);
        let mut with_trailer = encode(&img, image::ImageFormat::Jpeg);
        with_trailer.extend((0..20_000u32).map(|k| (k * 7 % 251) as u8 & 0xFE)); // no FF in it
        assert_eq!(decode_rgb8(&with_trailer, p).unwrap().dimensions(), (48, 40));

        let thumb_eoi = jpeg_with_exif(&img, exif_orientation(1, &[0xFF, 0xD8, 0x12, 0xFF, 0xD9]));
        assert_eq!(decode_rgb8(&thumb_eoi, p).unwrap().dimensions(), (48, 40));
        let e = decode_rgb8(&thumb_eoi[..thumb_eoi.len() * 2 / 3], p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
