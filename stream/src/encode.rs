//! Encoding gpud's I420 frames: H.264 for the live view (openh264, built
//! from source by its crate: baseline profile, so no B-frames; screen
//! content real-time mode; an IDR whenever asked) and JPEG thumbnails for
//! the board's cards.

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, RateControlMode, UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::OpenH264API;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("a {0}×{1} frame: sizes must be even and non-zero")]
    Size(u32, u32),
    #[error("an I420 frame of {width}×{height} is {expected} bytes, got {got}")]
    Length {
        width: u32,
        height: u32,
        expected: usize,
        got: usize,
    },
    #[error("openh264: {0}")]
    H264(String),
    #[error("jpeg: {0}")]
    Jpeg(String),
}

/// What the encoder aims for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub bitrate_bps: u32,
    pub max_fps: f32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bitrate_bps: 4_000_000,
            max_fps: 30.0,
        }
    }
}

/// The bytes of an I420 frame of `width`×`height`.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * (w / 2) * (h / 2)
}

/// Non-zero and even (I420's chroma is half size).
fn even_size(width: u32, height: u32) -> bool {
    width > 0 && height > 0 && width.is_multiple_of(2) && height.is_multiple_of(2)
}

fn check(i420: &[u8], width: u32, height: u32) -> Result<(), EncodeError> {
    if !even_size(width, height) {
        return Err(EncodeError::Size(width, height));
    }
    let expected = i420_len(width, height);
    if i420.len() != expected {
        return Err(EncodeError::Length {
            width,
            height,
            expected,
            got: i420.len(),
        });
    }
    Ok(())
}

fn planes(i420: &[u8], width: u32, height: u32) -> YUVSlices<'_> {
    let (w, h) = (width as usize, height as usize);
    let (y, rest) = i420.split_at(w * h);
    let (u, v) = rest.split_at((w / 2) * (h / 2));
    YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2))
}

/// One desktop's H.264 encoder.
pub struct H264 {
    encoder: Encoder,
    width: u32,
    height: u32,
    settings: Settings,
    /// The next frame must be an IDR.
    keyframe_due: bool,
    /// It encoded a frame (openh264 initialised itself).
    started: bool,
}

/// One encoded access unit.
pub struct Encoded {
    /// Annex B NAL units (start codes included); empty when rate control
    /// skipped the frame.
    pub data: Vec<u8>,
    /// An IDR: a decoder may start here.
    pub keyframe: bool,
}

impl H264 {
    pub fn new(width: u32, height: u32, settings: Settings) -> Result<H264, EncodeError> {
        if !even_size(width, height) {
            return Err(EncodeError::Size(width, height));
        }
        let config = EncoderConfig::new()
            .usage_type(UsageType::ScreenContentRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(settings.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(settings.max_fps))
            // Rate control may skip a frame (no output; nothing refers
            // to it) to hold the bitrate.
            .skip_frames(true)
            // IDRs only when asked (a viewer joined or fell behind).
            .scene_change_detect(false)
            .num_threads(1);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| EncodeError::H264(e.to_string()))?;
        Ok(H264 {
            encoder,
            width,
            height,
            settings,
            keyframe_due: true,
            started: false,
        })
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Changes the target bitrate and frame rate in place: the stream
    /// goes on without a new IDR.
    pub fn set_rate(&mut self, settings: Settings) -> Result<(), EncodeError> {
        if settings == self.settings {
            return Ok(());
        }
        if !self.started {
            // Not initialised yet (openh264 sets up on the first frame):
            // a new encoder with the new settings costs nothing.
            *self = H264::new(self.width, self.height, settings)?;
            return Ok(());
        }
        let mut bitrate = openh264_sys2::SBitrateInfo {
            iLayer: openh264_sys2::SPATIAL_LAYER_ALL,
            iBitrate: i32::try_from(settings.bitrate_bps).unwrap_or(i32::MAX),
        };
        let mut fps = settings.max_fps;
        // SAFETY: the encoder is initialised (it encoded a frame); both
        // options take a pointer to the type passed, which outlives the
        // call. Neither changes the picture size the crate relies on.
        let (a, b) = unsafe {
            let api = self.encoder.raw_api();
            (
                api.set_option(
                    openh264_sys2::ENCODER_OPTION_BITRATE,
                    std::ptr::addr_of_mut!(bitrate).cast(),
                ),
                api.set_option(
                    openh264_sys2::ENCODER_OPTION_FRAME_RATE,
                    std::ptr::addr_of_mut!(fps).cast(),
                ),
            )
        };
        if a != 0 || b != 0 {
            return Err(EncodeError::H264(format!(
                "changing the rate to {} bps at {} fps: error {a}/{b}",
                settings.bitrate_bps, settings.max_fps
            )));
        }
        self.settings = settings;
        Ok(())
    }

    /// The next frame will be an IDR.
    pub fn request_keyframe(&mut self) {
        self.keyframe_due = true;
    }

    /// Encodes one I420 frame of the encoder's size.
    pub fn encode(&mut self, i420: &[u8]) -> Result<Encoded, EncodeError> {
        check(i420, self.width, self.height)?;
        if self.keyframe_due {
            self.encoder.force_intra_frame();
        }
        let source = planes(i420, self.width, self.height);
        debug_assert_eq!(
            source.dimensions(),
            (self.width as usize, self.height as usize)
        );
        let stream = self
            .encoder
            .encode(&source)
            .map_err(|e| EncodeError::H264(e.to_string()))?;
        // Only an IDR resets the decoder's references (a scene-change I
        // frame does not).
        self.started = true;
        let keyframe = matches!(stream.frame_type(), FrameType::IDR);
        let data = stream.to_vec();
        if keyframe {
            self.keyframe_due = false;
        }
        Ok(Encoded { data, keyframe })
    }
}

/// A decoder, for tests and benchmarks that check what viewers get.
pub struct H264Decoder {
    decoder: openh264::decoder::Decoder,
}

impl H264Decoder {
    pub fn new() -> Result<H264Decoder, EncodeError> {
        let decoder =
            openh264::decoder::Decoder::new().map_err(|e| EncodeError::H264(e.to_string()))?;
        Ok(H264Decoder { decoder })
    }

    /// Decodes one access unit into RGB rows: (width, height, pixels).
    pub fn decode_rgb(&mut self, data: &[u8]) -> Result<Option<(u32, u32, Vec<u8>)>, EncodeError> {
        let Some(yuv) = self
            .decoder
            .decode(data)
            .map_err(|e| EncodeError::H264(e.to_string()))?
        else {
            return Ok(None);
        };
        // BT.601 limited range, as encoded (and as browsers decode a
        // stream without colour information); openh264's own converter
        // assumes full range.
        let (w, h) = yuv.dimensions();
        let (sy, su, sv) = yuv.strides();
        let (yp, up, vp) = (yuv.y(), yuv.u(), yuv.v());
        let mut rgb = Vec::with_capacity(w * h * 3);
        for row in 0..h {
            for col in 0..w {
                let y = (i32::from(yp[row * sy + col]) - 16) * 298;
                let u = i32::from(up[(row / 2) * su + col / 2]) - 128;
                let v = i32::from(vp[(row / 2) * sv + col / 2]) - 128;
                let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
                rgb.push(clamp(y + 409 * v));
                rgb.push(clamp(y - 100 * u - 208 * v));
                rgb.push(clamp(y + 516 * u));
            }
        }
        Ok(Some((w as u32, h as u32, rgb)))
    }
}

/// A JPEG of the frame scaled down (box filter) to at most `max_width`
/// pixels wide, keeping its aspect. Returns the JPEG and its size.
pub fn jpeg_thumbnail(
    i420: &[u8],
    width: u32,
    height: u32,
    max_width: u32,
    quality: u8,
) -> Result<(Vec<u8>, u32, u32), EncodeError> {
    check(i420, width, height)?;
    let factor = width.div_ceil(max_width.max(1)).max(1);
    let (tw, th) = ((width / factor).max(1), (height / factor).max(1));
    let (w, h) = (width as usize, height as usize);
    let (y_plane, rest) = i420.split_at(w * h);
    let (u_plane, v_plane) = rest.split_at((w / 2) * (h / 2));
    let f = factor as usize;
    let mut ycbcr = Vec::with_capacity(tw as usize * th as usize * 3);
    // I420 here is BT.601 limited range; JFIF's YCbCr is full range.
    let full_luma = |y: u32| ((y.saturating_sub(16 * 256) * 255 / 219 + 128) / 256).min(255) as u8;
    let full_chroma = |c: u32| {
        let c = (c as i64 - 128 * 256) * 255 / 224 + 128 * 256;
        (c.clamp(0, 255 * 256) / 256) as u8
    };
    for ty in 0..th as usize {
        for tx in 0..tw as usize {
            let (mut ys, mut us, mut vs) = (0u32, 0u32, 0u32);
            for dy in 0..f {
                let row = (ty * f + dy) * w;
                let crow = ((ty * f + dy) / 2) * (w / 2);
                for dx in 0..f {
                    let x = tx * f + dx;
                    ys += u32::from(y_plane[row + x]);
                    us += u32::from(u_plane[crow + x / 2]);
                    vs += u32::from(v_plane[crow + x / 2]);
                }
            }
            let n = (f * f) as u32;
            // ×256 fixed point before the range change.
            ycbcr.push(full_luma(ys * 256 / n));
            ycbcr.push(full_chroma(us * 256 / n));
            ycbcr.push(full_chroma(vs * 256 / n));
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(&ycbcr, tw as u16, th as u16, jpeg_encoder::ColorType::Ycbcr)
        .map_err(|e| EncodeError::Jpeg(e.to_string()))?;
    Ok((out, tw, th))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An I420 frame of flat colour (Y, U, V) with a block of another.
    fn frame(width: u32, height: u32, base: [u8; 3], block: [u8; 3]) -> Vec<u8> {
        let (w, h) = (width as usize, height as usize);
        let mut out = vec![0; i420_len(width, height)];
        for y in 0..h {
            for x in 0..w {
                let inside = x < w / 2 && y < h / 2;
                out[y * w + x] = if inside { block[0] } else { base[0] };
            }
        }
        let (cw, ch) = (w / 2, h / 2);
        for y in 0..ch {
            for x in 0..cw {
                let inside = x < cw / 2 && y < ch / 2;
                let c = if inside { block } else { base };
                out[w * h + y * cw + x] = c[1];
                out[w * h + cw * ch + y * cw + x] = c[2];
            }
        }
        out
    }

    #[test]
    fn frames_decode_to_what_was_encoded_and_keyframes_come_when_asked() {
        // BT.601 limited: a green (Y 145, U 54, V 34) and a red (81, 90, 240).
        let (green, red) = ([145, 54, 34], [81, 90, 240]);
        let mut encoder = H264::new(320, 240, Settings::default()).unwrap();
        let mut decoder = H264Decoder::new().unwrap();
        let first = encoder.encode(&frame(320, 240, green, red)).unwrap();
        assert!(first.keyframe, "the first frame is an IDR");
        // The same picture again: a P frame (a scene change may be an IDR).
        let second = encoder.encode(&frame(320, 240, green, red)).unwrap();
        assert!(!second.keyframe);
        encoder.request_keyframe();
        let third = encoder.encode(&frame(320, 240, red, green)).unwrap();
        assert!(third.keyframe, "an IDR when asked");
        for (encoded, outside, inside) in [
            (&first, [0, 255, 0], [255, 0, 0]),
            (&second, [0, 255, 0], [255, 0, 0]),
            (&third, [255, 0, 0], [0, 255, 0]),
        ] {
            let (w, h, rgb) = decoder
                .decode_rgb(&encoded.data)
                .unwrap()
                .expect("a picture");
            assert_eq!((w, h), (320, 240));
            let at = |x: usize, y: usize| &rgb[(y * 320 + x) * 3..(y * 320 + x) * 3 + 3];
            let near = |p: &[u8], want: [u8; 3]| {
                p.iter()
                    .zip(want)
                    .all(|(&a, b)| (i32::from(a) - i32::from(b)).abs() < 40)
            };
            assert!(near(at(40, 40), inside), "{:?} vs {inside:?}", at(40, 40));
            assert!(
                near(at(300, 200), outside),
                "{:?} vs {outside:?}",
                at(300, 200)
            );
        }
        // A decoder joining at the IDR decodes from there.
        let mut late = H264Decoder::new().unwrap();
        assert!(late.decode_rgb(&third.data).unwrap().is_some());
    }

    /// An I420 frame of random 8×8 grey blocks, half of them new in
    /// each `seed` (a busy screen).
    fn noise(width: u32, height: u32, seed: u32) -> Vec<u8> {
        let block = |bx: u32, by: u32| {
            let fresh = if (bx * 7 + by * 3 + seed).is_multiple_of(2) {
                seed
            } else {
                0
            };
            let mut state = by.wrapping_mul(2_654_435_761) ^ bx ^ fresh.wrapping_mul(40_503);
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let mut out = vec![128; i420_len(width, height)];
        for y in 0..height {
            for x in 0..width {
                out[(y * width + x) as usize] = block(x / 8, y / 8);
            }
        }
        out
    }

    #[test]
    fn the_rate_changes_without_a_keyframe_and_the_bytes_follow() {
        let high = Settings {
            bitrate_bps: 4_000_000,
            max_fps: 30.0,
        };
        let mut encoder = H264::new(320, 240, high).unwrap();
        let mut decoder = H264Decoder::new().unwrap();
        let mut run = |encoder: &mut H264, seeds: std::ops::Range<u32>| {
            let (mut bytes, mut keyframes) = (0, 0);
            for seed in seeds {
                let encoded = encoder.encode(&noise(320, 240, seed)).unwrap();
                if encoded.data.is_empty() {
                    continue;
                }
                bytes += encoded.data.len();
                keyframes += usize::from(encoded.keyframe);
                decoder.decode_rgb(&encoded.data).unwrap();
            }
            (bytes, keyframes)
        };
        run(&mut encoder, 0..5);
        let (at_high, _) = run(&mut encoder, 5..35);
        encoder
            .set_rate(Settings {
                bitrate_bps: 200_000,
                max_fps: 15.0,
            })
            .unwrap();
        assert_eq!(encoder.settings().bitrate_bps, 200_000);
        run(&mut encoder, 35..40);
        let (at_low, keyframes) = run(&mut encoder, 40..70);
        assert_eq!(keyframes, 0, "a rate change is not an IDR");
        // 30 frames at 15 per second are 2 s: 50 kB at 200 kbps.
        assert!(
            at_low < 75_000 && at_low * 2 < at_high,
            "at 200 kbps {at_low} bytes, at 4 Mbps {at_high}"
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(matches!(
            H264::new(321, 240, Settings::default()),
            Err(EncodeError::Size(..))
        ));
        let mut encoder = H264::new(64, 64, Settings::default()).unwrap();
        assert!(matches!(
            encoder.encode(&[0; 10]),
            Err(EncodeError::Length { .. })
        ));
        assert!(jpeg_thumbnail(&[0; 10], 64, 64, 32, 70).is_err());
    }

    #[test]
    fn a_thumbnail_is_a_small_jpeg() {
        let (jpeg, w, h) = jpeg_thumbnail(
            &frame(1280, 800, [145, 54, 34], [81, 90, 240]),
            1280,
            800,
            320,
            70,
        )
        .unwrap();
        assert_eq!((w, h), (320, 200));
        assert_eq!(&jpeg[..2], &[0xff, 0xd8], "a JPEG");
        assert!(jpeg.len() < 20_000, "{} bytes", jpeg.len());
    }
}
