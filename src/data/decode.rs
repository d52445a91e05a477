//! Image decoding: JPEG (zune-jpeg) and PNG (png), recognised by their signature, into 8-bit
//! HWC pixels: RGB for color images, one channel for gray ones (alpha dropped). PNGs of 16 bits
//! are reduced to 8, palettes expanded.

use std::io::Cursor;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// A decoded image: `h`×`w`×`c` bytes, HWC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// Pixels, row by row.
    pub data: Vec<u8>,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels: 1 (gray) or 3 (RGB).
    pub c: usize,
}

/// Decodes a JPEG or PNG file's bytes into `out` (its buffer is reused).
pub fn decode(bytes: &[u8], out: &mut Image) -> Result<(), String> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes, out)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, out)
    } else {
        Err("not a JPEG or PNG image".into())
    }
}

fn decode_jpeg(bytes: &[u8], out: &mut Image) -> Result<(), String> {
    let mut dec = JpegDecoder::new(ZCursor::new(bytes));
    dec.decode_headers().map_err(|e| format!("JPEG: {e:?}"))?;
    let gray = dec.input_colorspace() == Some(ColorSpace::Luma);
    let space = if gray {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    dec.set_options(DecoderOptions::default().jpeg_set_out_colorspace(space));
    let info = dec.info().ok_or("JPEG: no header")?;
    let size = dec.output_buffer_size().ok_or("JPEG: image too large")?;
    out.data.resize(size, 0);
    dec.decode_into(&mut out.data)
        .map_err(|e| format!("JPEG: {e:?}"))?;
    out.h = usize::from(info.height);
    out.w = usize::from(info.width);
    out.c = if gray { 1 } else { 3 };
    Ok(())
}

fn decode_png(bytes: &[u8], out: &mut Image) -> Result<(), String> {
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|e| format!("PNG: {e}"))?;
    let size = reader.output_buffer_size().ok_or("PNG: image too large")?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG: {e}"))?;
    let (h, w) = (frame.height as usize, frame.width as usize);
    let (src_c, c) = match frame.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => return Err("PNG: palette not expanded".into()),
    };
    let stride = frame.line_size;
    out.data.clear();
    out.data.reserve(h * w * c);
    for row in buf.chunks(stride).take(h) {
        for px in row[..w * src_c].chunks_exact(src_c) {
            out.data.extend_from_slice(&px[..c]);
        }
    }
    (out.h, out.w, out.c) = (h, w, c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x3 RGBA PNG encoded with the png crate decodes to RGB with alpha dropped.
    #[test]
    fn png_rgba_to_rgb() {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, 3, 2);
            enc.set_color(png::ColorType::Rgba);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            let px: Vec<u8> = (0..24).collect();
            w.write_image_data(&px).unwrap();
        }
        let mut img = Image::default();
        decode(&bytes, &mut img).unwrap();
        assert_eq!((img.h, img.w, img.c), (2, 3, 3));
        assert_eq!(&img.data[..6], &[0, 1, 2, 4, 5, 6]);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut img = Image::default();
        assert!(decode(b"hello", &mut img)
            .unwrap_err()
            .contains("not a JPEG"));
        assert!(decode(&[0xFF, 0xD8, 0, 0], &mut img)
            .unwrap_err()
            .starts_with("JPEG"));
    }
}
