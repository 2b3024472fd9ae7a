//! The scanout's frame as I420, for the encoder: pointed at scanout 0
//! (its planes allocated and charged), flushed areas recorded (up to
//! [`MAX_PENDING`], then merged) and converted only when somebody reads
//! the frame — on the GPU when its width is a multiple of 8, else on the
//! CPU, in the same 8×2 blocks so both leave the same bytes.

use super::{Session, Storage};
use crate::compose::{i420_region_cpu, Box2, FrameLayout};
use crate::render::{RenderError, Step};

/// The scanout's frame as I420, for the encoder stage. What the guest
/// flushes is converted when somebody reads the frame, not at the flush:
/// a desktop nobody watches costs no conversion at all, and a watched one
/// is converted once per read however many flushes came between.
pub(super) struct Frame {
    pub(super) resource_id: u32,
    layout: FrameLayout,
    storage: Storage,
    pub(super) charged: u64,
    /// Counts flushes of the scanout: a new value is a new frame.
    pub(super) sequence: u64,
    /// Flushed areas (frame pixels) not converted yet.
    pending: Vec<Box2>,
    /// Conversion jobs run, for tests and statistics.
    pub(super) conversions: u64,
}

/// Flushed areas kept apart before they are merged into one box.
const MAX_PENDING: usize = 16;

impl Session {
    /// Points the frame at scanout 0's resource and rectangle (allocating
    /// and charging its I420 planes), or drops it when the scanout is off
    /// or odd-sized.
    pub(super) fn set_frame(&mut self) -> Result<(), u32> {
        let Some((resource_id, rect)) = self.scanouts[0] else {
            self.drop_frame();
            return Ok(());
        };
        let resource = &self.resources[&resource_id];
        let stride = resource.width;
        if !resource.format.is_bgra()
            || rect.width == 0
            || rect.height == 0
            || !rect.width.is_multiple_of(2)
            || !rect.height.is_multiple_of(2)
        {
            self.drop_frame();
            return Ok(());
        }
        let layout = FrameLayout {
            stride,
            origin_x: rect.x,
            origin_y: rect.y,
            width: rect.width,
            height: rect.height,
        };
        match &mut self.frame {
            Some(frame)
                if frame.layout.width == layout.width && frame.layout.height == layout.height =>
            {
                frame.resource_id = resource_id;
                frame.layout = layout;
                frame.pending.clear();
            }
            _ => {
                self.drop_frame();
                let (storage, charged) = self.allocate(layout.i420_len() as u64)?;
                self.frame = Some(Frame {
                    resource_id,
                    layout,
                    storage,
                    charged,
                    sequence: 0,
                    pending: Vec::new(),
                    conversions: 0,
                });
            }
        }
        self.flushed((0, 0, layout.width, layout.height));
        Ok(())
    }

    /// `area` (frame pixels) of the scanout changed: a new frame, to be
    /// converted when read.
    pub(super) fn flushed(&mut self, area: Box2) {
        let Some(frame) = &mut self.frame else {
            return;
        };
        frame.sequence += 1;
        if frame.pending.len() >= MAX_PENDING {
            let all = frame.pending.drain(..).fold(area, |a, b| {
                (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3))
            });
            frame.pending.push(all);
        } else {
            frame.pending.push(area);
        }
    }

    pub(super) fn drop_frame(&mut self) {
        if let Some(frame) = self.frame.take() {
            self.ledger.release(&self.desktop, frame.charged);
        }
    }

    /// Converts the flushed areas of the scanout to I420, in one job: on
    /// the GPU when the frame's width is a multiple of 8, else on the CPU.
    fn convert(&mut self) -> Result<(), RenderError> {
        let Some(frame) = &mut self.frame else {
            return Ok(());
        };
        if frame.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut frame.pending);
        frame.conversions += 1;
        let resource = &self.resources[&frame.resource_id];
        let gpu = match (&self.renderer, resource.storage.gpu(), frame.storage.gpu()) {
            (Some(renderer), Some(input), Some(output)) if frame.layout.width.is_multiple_of(8) => {
                Some((renderer, input, output))
            }
            _ => None,
        };
        // The GPU converts 8×2 blocks; the CPU converts the same blocks
        // wherever the GPU could (a frame a multiple of 8 wide), so both
        // leave the same bytes even where a flush left composed pixels
        // unconverted beside the region.
        let align = if frame.layout.width.is_multiple_of(8) {
            8
        } else {
            2
        };
        let areas = pending
            .into_iter()
            .filter_map(|area| frame.layout.aligned(area, align));
        match gpu {
            Some((renderer, input, output)) => {
                let layout = frame.layout;
                let steps = areas
                    .map(|area| Step::I420 {
                        input,
                        stride: layout.stride,
                        origin_x: layout.origin_x,
                        origin_y: layout.origin_y,
                        width: layout.width,
                        height: layout.height,
                        area,
                        output,
                    })
                    .collect();
                renderer.run(&self.desktop, steps)?;
            }
            None => {
                for area in areas {
                    i420_region_cpu(
                        resource.storage.bytes(),
                        &frame.layout,
                        area,
                        frame.storage.bytes_mut(),
                    );
                }
            }
        }
        Ok(())
    }

    /// The scanout's current frame as I420 (even-sized scanouts), for the
    /// encoder stage.
    pub fn scanout_i420(&mut self) -> Option<Vec<u8>> {
        self.frame().map(|f| f.0.to_vec())
    }

    /// Scanout 0's pixels (BGRA rows of its rectangle): what the desktop
    /// shows, for screenshots.
    pub fn scanout_bgra(&self) -> Option<(u32, u32, Vec<u8>)> {
        let (id, rect) = self.scanouts[0]?;
        let resource = self.resources.get(&id)?;
        let stride = resource.stride();
        let bytes = resource.storage.bytes();
        let mut out = Vec::with_capacity(rect.width as usize * rect.height as usize * 4);
        for row in rect.y..rect.y + rect.height {
            let start = row as usize * stride + rect.x as usize * 4;
            out.extend_from_slice(&bytes[start..start + rect.width as usize * 4]);
        }
        Some((rect.width, rect.height, out))
    }

    /// The current frame's I420 bytes, size and sequence number, its
    /// flushed areas converted first. A conversion that fails leaves the
    /// last frame's bytes (and says so on stderr).
    pub fn frame(&mut self) -> Option<(&[u8], u32, u32, u64)> {
        if let Err(error) = self.convert() {
            eprintln!("gpud: {}: conversion failed: {error}", self.desktop);
        }
        self.frame.as_ref().map(|f| {
            (
                f.storage.bytes(),
                f.layout.width,
                f.layout.height,
                f.sequence,
            )
        })
    }

    /// The current frame's sequence number, without converting anything.
    pub fn frame_sequence(&self) -> Option<u64> {
        self.frame.as_ref().map(|f| f.sequence)
    }

    /// How many conversion jobs this session ran.
    pub fn conversions(&self) -> u64 {
        self.frame.as_ref().map_or(0, |f| f.conversions)
    }
}
