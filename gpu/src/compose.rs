//! The composition context type (capset `0x4643`, version 1): what a
//! guest's `SUBMIT_3D` stream says, and the CPU reference that renders it
//! and converts the result to I420. The Vulkan path must match the
//! reference pixel for pixel; the benchmark compares the two.
//!
//! # The stream (little-endian)
//! ```text
//! u32 magic "FCMP" (0x504d4346)   u32 version (1)
//! u32 target resource id          u32 draw count (≤ 256)
//! u32 damage count (≤ 64)         damage × rect {u32 x, y, width, height}
//! draws × { u32 resource id; rect source; i32 x; i32 y;
//!           u8 opacity (0-255); u8 flags (0); u16 reserved (0); rect clip }
//! ```
//! Each draw puts its source rectangle of its resource at (x, y) of the
//! target, "over" what is there, its alpha scaled by opacity, limited to
//! its clip rectangle and to the damage (only damaged pixels change). A
//! draw item is 48 bytes; the stream is exactly as long as its counts say.

use crate::protocol::Rect;

pub const MAGIC: u32 = 0x504d_4346;
pub const VERSION: u32 = 1;
pub const MAX_DRAWS: u32 = 256;
pub const MAX_DAMAGE: u32 = 64;
const DRAW_BYTES: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    pub resource_id: u32,
    pub source: Rect,
    pub x: i32,
    pub y: i32,
    pub opacity: u8,
    pub clip: Rect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositionList {
    pub target: u32,
    pub damage: Vec<Rect>,
    pub draws: Vec<Draw>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn rect_at(bytes: &[u8], at: usize) -> Rect {
    Rect {
        x: u32_at(bytes, at),
        y: u32_at(bytes, at + 4),
        width: u32_at(bytes, at + 8),
        height: u32_at(bytes, at + 12),
    }
}

fn fits(rect: &Rect) -> bool {
    rect.x.checked_add(rect.width).is_some() && rect.y.checked_add(rect.height).is_some()
}

impl CompositionList {
    /// Decodes a stream; every count, length, rectangle and field checked.
    pub fn decode(bytes: &[u8]) -> Result<CompositionList, String> {
        if bytes.len() < 20 {
            return Err(format!(
                "{} bytes is shorter than the list's header",
                bytes.len()
            ));
        }
        if u32_at(bytes, 0) != MAGIC {
            return Err("not a composition list (bad magic)".to_owned());
        }
        if u32_at(bytes, 4) != VERSION {
            return Err(format!(
                "composition list version {} (1 is known)",
                u32_at(bytes, 4)
            ));
        }
        let target = u32_at(bytes, 8);
        let draws = u32_at(bytes, 12);
        let damage = u32_at(bytes, 16);
        if target == 0 {
            return Err("target resource 0".to_owned());
        }
        if draws > MAX_DRAWS || damage > MAX_DAMAGE {
            return Err(format!(
                "{draws} draws and {damage} damage rects (at most {MAX_DRAWS} and {MAX_DAMAGE})"
            ));
        }
        let expected = 20 + damage as usize * 16 + draws as usize * DRAW_BYTES;
        if bytes.len() != expected {
            return Err(format!("{} bytes; the counts say {expected}", bytes.len()));
        }
        let damage: Vec<Rect> = (0..damage as usize)
            .map(|i| rect_at(bytes, 20 + i * 16))
            .collect();
        if !damage.iter().all(fits) {
            return Err("a damage rectangle overflows".to_owned());
        }
        let base = 20 + damage.len() * 16;
        let mut list = Vec::with_capacity(draws as usize);
        for i in 0..draws as usize {
            let at = base + i * DRAW_BYTES;
            let draw = Draw {
                resource_id: u32_at(bytes, at),
                source: rect_at(bytes, at + 4),
                x: u32_at(bytes, at + 20) as i32,
                y: u32_at(bytes, at + 24) as i32,
                opacity: bytes[at + 28],
                clip: rect_at(bytes, at + 32),
            };
            if draw.resource_id == 0 {
                return Err(format!("draw {i} names resource 0"));
            }
            if bytes[at + 29] != 0 || bytes[at + 30] != 0 || bytes[at + 31] != 0 {
                return Err(format!("draw {i} has unknown flags"));
            }
            if !fits(&draw.source) || !fits(&draw.clip) {
                return Err(format!("draw {i} has an overflowing rectangle"));
            }
            list.push(draw);
        }
        Ok(CompositionList {
            target,
            damage,
            draws: list,
        })
    }

    /// The stream's bytes (for guests and tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for value in [
            MAGIC,
            VERSION,
            self.target,
            self.draws.len() as u32,
            self.damage.len() as u32,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        let rect = |out: &mut Vec<u8>, r: &Rect| {
            for value in [r.x, r.y, r.width, r.height] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        };
        for damage in &self.damage {
            rect(&mut out, damage);
        }
        for draw in &self.draws {
            out.extend_from_slice(&draw.resource_id.to_le_bytes());
            rect(&mut out, &draw.source);
            out.extend_from_slice(&draw.x.to_le_bytes());
            out.extend_from_slice(&draw.y.to_le_bytes());
            out.extend_from_slice(&[draw.opacity, 0, 0, 0]);
            rect(&mut out, &draw.clip);
        }
        out
    }
}

/// A BGRA image borrowed for composition.
pub struct Image<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
}

/// Intersection of two half-open boxes (x0, y0, x1, y1) in i64.
fn intersect(a: (i64, i64, i64, i64), b: (i64, i64, i64, i64)) -> Option<(i64, i64, i64, i64)> {
    let r = (a.0.max(b.0), a.1.max(b.1), a.2.min(b.2), a.3.min(b.3));
    (r.0 < r.2 && r.1 < r.3).then_some(r)
}

fn bounds(rect: &Rect) -> (i64, i64, i64, i64) {
    (
        i64::from(rect.x),
        i64::from(rect.y),
        i64::from(rect.x) + i64::from(rect.width),
        i64::from(rect.y) + i64::from(rect.height),
    )
}

/// `source` over `dest` with `alpha` (0-255), integer-exact.
fn over(source: u8, dest: u8, alpha: u32) -> u8 {
    ((u32::from(source) * alpha + u32::from(dest) * (255 - alpha) + 127) / 255) as u8
}

/// Renders `list` into `target` (BGRA, `width` × `height`) on the CPU,
/// reading draw sources through `source`. Draws whose resource is unknown
/// are skipped and named in the result.
pub fn compose_cpu<'a>(
    list: &CompositionList,
    target: &mut [u8],
    width: u32,
    height: u32,
    source: impl Fn(u32) -> Option<Image<'a>>,
) -> Result<(), String> {
    let screen = (0, 0, i64::from(width), i64::from(height));
    for (index, draw) in list.draws.iter().enumerate() {
        let image = source(draw.resource_id)
            .ok_or_else(|| format!("draw {index}: no resource {}", draw.resource_id))?;
        if !draw.source.within(image.width, image.height) {
            return Err(format!(
                "draw {index}: its source lies outside resource {}",
                draw.resource_id
            ));
        }
        let placed = (
            i64::from(draw.x),
            i64::from(draw.y),
            i64::from(draw.x) + i64::from(draw.source.width),
            i64::from(draw.y) + i64::from(draw.source.height),
        );
        let Some(area) = intersect(placed, screen).and_then(|a| intersect(a, bounds(&draw.clip)))
        else {
            continue;
        };
        // Damage rectangles may overlap: each pixel is drawn once if any
        // of them covers it.
        let damaged: Vec<(i64, i64, i64, i64)> = list
            .damage
            .iter()
            .filter_map(|damage| intersect(area, bounds(damage)))
            .collect();
        let Some(&first) = damaged.first() else {
            continue;
        };
        let (x0, y0, x1, y1) = damaged.iter().fold(first, |a, b| {
            (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3))
        });
        for y in y0..y1 {
            for x in x0..x1 {
                if !damaged
                    .iter()
                    .any(|d| d.0 <= x && x < d.2 && d.1 <= y && y < d.3)
                {
                    continue;
                }
                let sx = (x - i64::from(draw.x) + i64::from(draw.source.x)) as usize;
                let sy = (y - i64::from(draw.y) + i64::from(draw.source.y)) as usize;
                let s = (sy * image.width as usize + sx) * 4;
                let d = (y as usize * width as usize + x as usize) * 4;
                let alpha = (u32::from(image.pixels[s + 3]) * u32::from(draw.opacity) + 127) / 255;
                for channel in 0..3 {
                    target[d + channel] =
                        over(image.pixels[s + channel], target[d + channel], alpha);
                }
                target[d + 3] = over(255, target[d + 3], alpha);
            }
        }
    }
    Ok(())
}

/// BGRA → I420 (BT.601 limited range, chroma averaged over 2×2), the CPU
/// reference. Width and height must be even.
pub fn i420_cpu(bgra: &[u8], width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut out = vec![0u8; w * h * 3 / 2];
    let (luma, chroma) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(w * h / 4);
    let rgb = |x: usize, y: usize| {
        let p = (y * w + x) * 4;
        (
            i32::from(bgra[p + 2]),
            i32::from(bgra[p + 1]),
            i32::from(bgra[p]),
        )
    };
    for y in 0..h {
        for x in 0..w {
            let (r, g, b) = rgb(x, y);
            luma[y * w + x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        }
    }
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            let mut sum = (0, 0, 0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (r, g, b) = rgb(x + dx, y + dy);
                sum = (sum.0 + r, sum.1 + g, sum.2 + b);
            }
            let (r, g, b) = ((sum.0 + 2) / 4, (sum.1 + 2) / 4, (sum.2 + 2) / 4);
            let at = (y / 2) * (w / 2) + x / 2;
            u_plane[at] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
            v_plane[at] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        }
    }
    out
}
