//! What a file is (its MIME type) and, for a photo, its size in pixels and
//! the small JPEG preview a message carries (at most
//! [`MAX_THUMBNAIL_BYTES`]), made by the sender as WhatsApp's apps do.
//!
//! Photos are JPEG, PNG, GIF or WebP: those are what phones make and send,
//! and the only decoders built in (each one more is build time and attack
//! surface; docs/decisions.md). Anything else is sent without a preview.
//! The work is CPU-bound and synchronous: callers run it on a blocking
//! thread.

use std::io::{BufRead, Seek};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, Rgb, RgbImage};

pub use parley_proto::content::MAX_THUMBNAIL_BYTES;

/// The longer side of a thumbnail, in pixels, when it fits at that size;
/// smaller ones are made when it does not.
pub const THUMBNAIL_SIDE: u32 = 320;
/// Decoding a photo may allocate at most this much: a 50-megapixel RGBA
/// photo is 200 MB; a crafted "image" that claims more is not decoded.
const DECODE_LIMIT_BYTES: u64 = 256 * 1024 * 1024;
/// JPEG qualities tried, best first, before the thumbnail is made smaller.
const QUALITIES: [u8; 4] = [75, 60, 45, 30];

/// A photo's size and preview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    /// The photo's size as it is shown (after its EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// A JPEG of at most [`MAX_THUMBNAIL_BYTES`].
    pub thumbnail: Thumbnail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thumbnail {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Why no preview was made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("cannot read the image: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot decode the image: {0}")]
    Decode(#[from] image::ImageError),
    #[error("no thumbnail fits in {MAX_THUMBNAIL_BYTES} bytes")]
    TooBig,
}

/// The MIME type of a file, from its first bytes for the photo formats and
/// from its extension for the other common ones; else
/// `application/octet-stream`.
pub fn content_type(path: &Path, first_bytes: &[u8]) -> &'static str {
    if let Ok(format) = image::guess_format(first_bytes)
        && let Some(mime) = photo_mime(format)
    {
        return mime;
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "3gp" => "video/3gpp",
        "m4a" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "aac" => "audio/aac",
        "wav" => "audio/wav",
        "amr" => "audio/amr",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

fn photo_mime(format: ImageFormat) -> Option<&'static str> {
    match format {
        ImageFormat::Jpeg => Some("image/jpeg"),
        ImageFormat::Png => Some("image/png"),
        ImageFormat::Gif => Some("image/gif"),
        ImageFormat::WebP => Some("image/webp"),
        _ => None,
    }
}

/// Whether a content type is one this module makes previews of.
pub fn is_photo(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/jpeg" | "image/png" | "image/gif" | "image/webp"
    )
}

/// Decodes the photo at `path` and makes its preview.
pub fn picture(path: &Path) -> Result<Picture, ThumbnailError> {
    let reader = ImageReader::open(path)?;
    picture_from(reader)
}

/// [`picture`] from any reader (tests make photos in memory).
pub fn picture_from<R: BufRead + Seek>(reader: ImageReader<R>) -> Result<Picture, ThumbnailError> {
    let mut reader = reader.with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(DECODE_LIMIT_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder()?;
    // Phones store photos as the sensor saw them and say in EXIF how to
    // turn them; a preview the wrong way up would be a bug report.
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    let thumbnail = thumbnail_of(&image)?;
    Ok(Picture {
        width,
        height,
        thumbnail,
    })
}

/// The best JPEG preview of `image` within [`MAX_THUMBNAIL_BYTES`]: the
/// largest side first at [`THUMBNAIL_SIDE`], then halved, each at falling
/// qualities.
fn thumbnail_of(image: &DynamicImage) -> Result<Thumbnail, ThumbnailError> {
    let mut side = THUMBNAIL_SIDE;
    while side >= 16 {
        // `thumbnail` keeps the aspect ratio; it would also enlarge a
        // photo smaller than the box, which a tiny photo does not need.
        let small = if image.width() <= side && image.height() <= side {
            flatten(image)
        } else {
            flatten(&image.thumbnail(side, side))
        };
        for quality in QUALITIES {
            let mut jpeg = Vec::new();
            JpegEncoder::new_with_quality(&mut jpeg, quality).encode_image(&small)?;
            if jpeg.len() <= MAX_THUMBNAIL_BYTES {
                return Ok(Thumbnail {
                    jpeg,
                    width: small.width(),
                    height: small.height(),
                });
            }
        }
        side /= 2;
    }
    Err(ThumbnailError::TooBig)
}

/// RGB on white: JPEG has no transparency, and a transparent PNG's hidden
/// pixels are often black.
fn flatten(image: &DynamicImage) -> RgbImage {
    let rgba = image.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (x, y, pixel) in rgba.enumerate_pixels() {
        let [r, g, b, a] = pixel.0;
        let over_white = |c: u8| {
            let c = u32::from(c) * u32::from(a) + 255 * (255 - u32::from(a));
            u8::try_from(c / 255).unwrap_or(u8::MAX)
        };
        out.put_pixel(x, y, Rgb([over_white(r), over_white(g), over_white(b)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A noisy photo (noise compresses worst, so it is the hard case for
    /// the size limit), encoded as `format`.
    pub(crate) fn noisy(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
        let mut seed = 0x2545_f491_u32;
        let image = RgbImage::from_fn(width, height, |_, _| {
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed & 0xff) as u8
            };
            Rgb([next(), next(), next()])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image)
            .write_to(&mut out, format)
            .expect("encodes");
        out.into_inner()
    }

    fn picture_of(bytes: Vec<u8>) -> Picture {
        picture_from(ImageReader::new(Cursor::new(bytes))).expect("a picture")
    }

    #[test]
    fn a_noisy_photo_gets_a_small_jpeg_preview() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png] {
            let picture = picture_of(noisy(1200, 800, format));
            assert_eq!((picture.width, picture.height), (1200, 800));
            let thumb = &picture.thumbnail;
            assert!(
                thumb.jpeg.len() <= MAX_THUMBNAIL_BYTES,
                "{}",
                thumb.jpeg.len()
            );
            assert_eq!(
                image::guess_format(&thumb.jpeg).expect("known"),
                ImageFormat::Jpeg
            );
            let decoded = image::load_from_memory(&thumb.jpeg).expect("decodes");
            assert_eq!(
                (decoded.width(), decoded.height()),
                (thumb.width, thumb.height)
            );
            assert!(thumb.width <= THUMBNAIL_SIDE && thumb.height <= THUMBNAIL_SIDE);
            // The aspect ratio is kept (to a pixel).
            assert!(thumb.width.abs_diff(thumb.height * 3 / 2) <= 1, "{thumb:?}");
        }
    }

    #[test]
    fn a_tiny_photo_is_not_enlarged() {
        let picture = picture_of(noisy(10, 5, ImageFormat::Png));
        assert_eq!((picture.thumbnail.width, picture.thumbnail.height), (10, 5));
    }

    #[test]
    fn types_come_from_bytes_then_extension() {
        let png = noisy(2, 2, ImageFormat::Png);
        assert_eq!(content_type(Path::new("x.bin"), &png), "image/png");
        assert_eq!(
            content_type(Path::new("a.PDF"), b"%PDF-1.7"),
            "application/pdf"
        );
        assert_eq!(
            content_type(Path::new("noext"), b"hello"),
            "application/octet-stream"
        );
        assert!(is_photo("image/webp") && !is_photo("image/heic"));
    }

    #[test]
    fn garbage_is_not_a_picture() {
        let err = picture_from(ImageReader::new(Cursor::new(
            b"\x89PNG\r\n\x1a\nnope".to_vec(),
        )))
        .expect_err("not a PNG");
        assert!(matches!(err, ThumbnailError::Decode(_)), "{err:?}");
    }
}
