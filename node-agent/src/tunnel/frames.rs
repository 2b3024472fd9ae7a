//! `screenshot` and `thumbnail` sessions: the desktop's current frame
//! from gpud, as a PNG or as one JPEG frame message.

use flotilla_proto::node as pb;
use tokio::sync::mpsc;

use super::{desktop_dir, send_stdout, TunnelError, TunnelSettings};

/// Widest thumbnail.
const MAX_THUMBNAIL: u32 = 1280;

/// BGRA rows to a PNG (opaque RGB).
pub fn png(width: u32, height: u32, bgra: &[u8]) -> Result<Vec<u8>, TunnelError> {
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for pixel in bgra.chunks_exact(4) {
        rgb.extend_from_slice(&[pixel[2], pixel[1], pixel[0]]);
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

/// The desktop's current frame, from gpud, as a PNG.
pub(super) async fn send_screenshot(
    settings: &TunnelSettings,
    session: u64,
    request: pb::ScreenshotRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, TunnelError> {
    desktop_dir(settings, &request.desktop_id, request.generation)?;
    let gpu = settings.gpu.clone().ok_or(TunnelError::NoGpud("show"))?;
    let id = request.desktop_id.clone();
    let png = tokio::task::spawn_blocking(move || {
        let (width, height, pixels) = gpu
            .scanout(&id)
            .ok_or_else(|| TunnelError::NoDisplay(id.clone()))?;
        png(width, height, &pixels)
    })
    .await??;
    send_stdout(settings, session, &png, up).await?;
    Ok(0)
}

/// A JPEG of the desktop's current frame (one frame message).
pub(super) async fn send_thumbnail(
    settings: &TunnelSettings,
    session: u64,
    request: pb::ThumbnailRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, TunnelError> {
    use flotilla_stream::frame::{now_us, Header, Kind};
    desktop_dir(settings, &request.desktop_id, request.generation)?;
    let gpu = settings.gpu.clone().ok_or(TunnelError::NoGpud("show"))?;
    let id = request.desktop_id.clone();
    let max_width = match request.max_width {
        0 => 320,
        width => width.clamp(16, MAX_THUMBNAIL),
    };
    let message = tokio::task::spawn_blocking(move || {
        let frame = gpu
            .frame(&id)
            .ok_or_else(|| TunnelError::NoDisplay(id.clone()))?;
        let captured_us = now_us();
        let (jpeg, width, height) = flotilla_stream::encode::jpeg_thumbnail(
            &frame.data,
            frame.width,
            frame.height,
            max_width,
            75,
        )?;
        Ok::<_, TunnelError>(
            Header {
                kind: Kind::Jpeg,
                keyframe: true,
                width,
                height,
                sequence: frame.sequence,
                captured_us,
            }
            .message(&jpeg),
        )
    })
    .await??;
    // One message, whatever its size (the control plane reads it whole).
    if up
        .send(pb::TunnelUp {
            node_id: settings.node_id.clone(),
            session,
            event: Some(pb::tunnel_up::Event::Stdout(message)),
        })
        .await
        .is_err()
    {
        return Err(TunnelError::TunnelClosed);
    }
    Ok(0)
}
