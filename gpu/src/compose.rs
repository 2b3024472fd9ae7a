//! The composition context type (capset `0x4643`, version 2): what a
//! guest's `SUBMIT_3D` stream says, and the CPU reference that renders it
//! and converts the result to I420. The Vulkan path must match the
//! reference pixel for pixel; the benchmark compares the two.
//!
//! # The stream (little-endian)
//! ```text
//! u32 magic "FCMP" (0x504d4346)   u32 version (1 or 2)
//! u32 target resource id          u32 draw count (≤ 256)
//! u32 damage count (≤ 64)         damage × rect {u32 x, y, width, height}
//! draws × { u32 resource id; rect source; i32 x; i32 y;
//!           u8 opacity (0-255); u8 flags; u16 reserved (0); rect clip;
//!           version 2 only: u32 width; u32 height }
//! ```
//! Each draw puts its source rectangle of its resource at (x, y) of the
//! target, "over" what is there, its alpha (255 for a B8G8R8X8 source,
//! whose fourth byte is padding, or for a draw flagged opaque) scaled by
//! opacity, limited to
//! its clip rectangle and to the damage (only damaged pixels change).
//! Version 2 gives the draw's size on the target (0 × 0: the source's
//! size, as version 1): a source of another size is scaled to it, each
//! target pixel taking the source pixel under its centre (nearest, as
//! wp_viewporter's clients expect of a compositor that does not filter).
//! A draw item is 48 bytes in version 1, 56 in version 2; the stream is
//! exactly as long as its counts say.
//!
//! Flags: bit 0 ([`FLAG_OPAQUE`]), the source is opaque whatever its
//! format says: its fourth byte is padding. A compositor sets it for a
//! surface whose Wayland opaque region covers it, as other compositors
//! then skip blending; an opaque draw at full opacity is a plain copy.
//! Other bits are refused.

use crate::protocol::Rect;

/// Why a composition list was refused, decoding it or planning it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("{len} bytes is shorter than the list's header")]
    Short { len: usize },
    #[error("not a composition list (bad magic)")]
    Magic,
    #[error("composition list version {version} (1 and 2 are known)")]
    Version { version: u32 },
    #[error("target resource 0")]
    TargetZero,
    #[error("{draws} draws and {damage} damage rects (at most {MAX_DRAWS} and {MAX_DAMAGE})")]
    Counts { draws: u32, damage: u32 },
    #[error("{len} bytes; the counts say {expected}")]
    Length { len: usize, expected: usize },
    #[error("a damage rectangle overflows")]
    DamageOverflows,
    #[error("draw {index} is {width}×{height} on the target (1-{MAX_DRAW_SIZE} each, or 0×0)")]
    DrawSize {
        index: usize,
        width: u32,
        height: u32,
    },
    #[error("draw {index} names resource 0")]
    DrawResourceZero { index: usize },
    #[error("draw {index} has unknown flags")]
    DrawFlags { index: usize },
    #[error("draw {index} has an overflowing rectangle")]
    DrawOverflows { index: usize },
    #[error("draw {index}: no resource {resource_id}")]
    NoResource { index: usize, resource_id: u32 },
    #[error("draw {index}: its source lies outside resource {resource_id}")]
    SourceOutside { index: usize, resource_id: u32 },
    #[error("draw {index}: an empty source cannot be scaled")]
    EmptyScaledSource { index: usize },
}

pub const MAGIC: u32 = 0x504d_4346;
/// The version [`CompositionList::encode`] writes; 1 is read too.
pub const VERSION: u32 = 2;
pub const MAX_DRAWS: u32 = 256;
pub const MAX_DAMAGE: u32 = 64;
/// The largest size a draw may be scaled to.
pub const MAX_DRAW_SIZE: u32 = 16384;
const DRAW_BYTES_V1: usize = 48;
const DRAW_BYTES: usize = 56;
/// A draw's flag: its source's fourth byte is padding, every pixel opaque.
pub const FLAG_OPAQUE: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    pub resource_id: u32,
    pub source: Rect,
    pub x: i32,
    pub y: i32,
    pub opacity: u8,
    pub clip: Rect,
    /// Its size on the target, when the source is scaled (None: the
    /// source's size).
    pub size: Option<(u32, u32)>,
    /// The source is opaque whatever its format ([`FLAG_OPAQUE`]).
    pub opaque: bool,
}

impl Draw {
    /// Its width and height on the target.
    pub fn target_size(&self) -> (u32, u32) {
        self.size.unwrap_or((self.source.width, self.source.height))
    }

    /// Whether the source is scaled.
    pub fn scaled(&self) -> bool {
        self.target_size() != (self.source.width, self.source.height)
    }

    /// The source column (or row) for target column `offset` from the
    /// draw's left (top): the source pixel under the target pixel's
    /// centre.
    pub fn source_at(source_start: u32, source_len: u32, target_len: u32, offset: u32) -> u32 {
        source_start
            + ((2 * u64::from(offset) + 1) * u64::from(source_len) / (2 * u64::from(target_len)))
                as u32
    }
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
    pub fn decode(bytes: &[u8]) -> Result<CompositionList, ComposeError> {
        if bytes.len() < 20 {
            return Err(ComposeError::Short { len: bytes.len() });
        }
        if u32_at(bytes, 0) != MAGIC {
            return Err(ComposeError::Magic);
        }
        let version = u32_at(bytes, 4);
        let draw_bytes = match version {
            1 => DRAW_BYTES_V1,
            2 => DRAW_BYTES,
            other => return Err(ComposeError::Version { version: other }),
        };
        let target = u32_at(bytes, 8);
        let draws = u32_at(bytes, 12);
        let damage = u32_at(bytes, 16);
        if target == 0 {
            return Err(ComposeError::TargetZero);
        }
        if draws > MAX_DRAWS || damage > MAX_DAMAGE {
            return Err(ComposeError::Counts { draws, damage });
        }
        let expected = 20 + damage as usize * 16 + draws as usize * draw_bytes;
        if bytes.len() != expected {
            return Err(ComposeError::Length {
                len: bytes.len(),
                expected,
            });
        }
        let damage: Vec<Rect> = (0..damage as usize)
            .map(|i| rect_at(bytes, 20 + i * 16))
            .collect();
        if !damage.iter().all(fits) {
            return Err(ComposeError::DamageOverflows);
        }
        let base = 20 + damage.len() * 16;
        let mut list = Vec::with_capacity(draws as usize);
        for i in 0..draws as usize {
            let at = base + i * draw_bytes;
            let size = match version {
                1 => (0, 0),
                _ => (u32_at(bytes, at + 48), u32_at(bytes, at + 52)),
            };
            let draw = Draw {
                resource_id: u32_at(bytes, at),
                source: rect_at(bytes, at + 4),
                x: u32_at(bytes, at + 20) as i32,
                y: u32_at(bytes, at + 24) as i32,
                opacity: bytes[at + 28],
                clip: rect_at(bytes, at + 32),
                size: (size != (0, 0)).then_some(size),
                opaque: bytes[at + 29] & FLAG_OPAQUE != 0,
            };
            if let Some((width, height)) = draw.size {
                if width == 0 || height == 0 || width > MAX_DRAW_SIZE || height > MAX_DRAW_SIZE {
                    return Err(ComposeError::DrawSize {
                        index: i,
                        width,
                        height,
                    });
                }
            }
            if draw.resource_id == 0 {
                return Err(ComposeError::DrawResourceZero { index: i });
            }
            if bytes[at + 29] & !FLAG_OPAQUE != 0 || bytes[at + 30] != 0 || bytes[at + 31] != 0 {
                return Err(ComposeError::DrawFlags { index: i });
            }
            if !fits(&draw.source) || !fits(&draw.clip) {
                return Err(ComposeError::DrawOverflows { index: i });
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
            let flags = if draw.opaque { FLAG_OPAQUE } else { 0 };
            out.extend_from_slice(&[draw.opacity, flags, 0, 0]);
            rect(&mut out, &draw.clip);
            let (width, height) = draw.size.unwrap_or((0, 0));
            out.extend_from_slice(&width.to_le_bytes());
            out.extend_from_slice(&height.to_le_bytes());
        }
        out
    }
}

/// A BGRA image borrowed for composition.
pub struct Image<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// The fourth byte is padding (B8G8R8X8): every pixel is opaque.
    pub opaque: bool,
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
/// A half-open box (x0, y0, x1, y1) of target pixels.
pub type Box2 = (u32, u32, u32, u32);

/// One piece of a composition: draw `draw` over the pixels of `area`.
/// The pieces of one draw never overlap, so each pixel is drawn once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub draw: usize,
    pub area: Box2,
}

/// `a` minus `b`: up to four boxes covering what `a` has outside `b`.
fn subtract(a: Box2, b: Box2, out: &mut Vec<Box2>) {
    let (ix0, iy0, ix1, iy1) = (a.0.max(b.0), a.1.max(b.1), a.2.min(b.2), a.3.min(b.3));
    if ix0 >= ix1 || iy0 >= iy1 {
        out.push(a);
        return;
    }
    if a.1 < iy0 {
        out.push((a.0, a.1, a.2, iy0));
    }
    if iy1 < a.3 {
        out.push((a.0, iy1, a.2, a.3));
    }
    if a.0 < ix0 {
        out.push((a.0, iy0, ix0, iy1));
    }
    if ix1 < a.2 {
        out.push((ix1, iy0, a.2, iy1));
    }
}

/// The damage as disjoint boxes within a `width` × `height` target.
pub fn disjoint_damage(damage: &[Rect], width: u32, height: u32) -> Vec<Box2> {
    let mut boxes: Vec<Box2> = Vec::new();
    for rect in damage {
        let clipped = intersect(bounds(rect), (0, 0, i64::from(width), i64::from(height)));
        let Some((x0, y0, x1, y1)) = clipped else {
            continue;
        };
        // What this rect adds beyond the boxes so far.
        let mut fresh = vec![(x0 as u32, y0 as u32, x1 as u32, y1 as u32)];
        for existing in &boxes {
            let mut next = Vec::with_capacity(fresh.len());
            for piece in fresh {
                subtract(piece, *existing, &mut next);
            }
            fresh = next;
        }
        boxes.extend(fresh);
    }
    boxes
}

/// Plans `list` on a `width` × `height` target: checks every draw's
/// resource (`size` gives a resource's width and height) and source
/// rectangle, and gives the pieces to draw in order. Both the CPU
/// reference and the Vulkan path execute exactly these pieces.
pub fn plan(
    list: &CompositionList,
    width: u32,
    height: u32,
    size: impl Fn(u32) -> Option<(u32, u32)>,
) -> Result<Vec<Piece>, ComposeError> {
    let screen = (0, 0, i64::from(width), i64::from(height));
    let damage = disjoint_damage(&list.damage, width, height);
    let mut pieces = Vec::new();
    for (index, draw) in list.draws.iter().enumerate() {
        let (source_width, source_height) =
            size(draw.resource_id).ok_or(ComposeError::NoResource {
                index,
                resource_id: draw.resource_id,
            })?;
        if !draw.source.within(source_width, source_height) {
            return Err(ComposeError::SourceOutside {
                index,
                resource_id: draw.resource_id,
            });
        }
        if draw.scaled() && (draw.source.width == 0 || draw.source.height == 0) {
            return Err(ComposeError::EmptyScaledSource { index });
        }
        let (target_width, target_height) = draw.target_size();
        let placed = (
            i64::from(draw.x),
            i64::from(draw.y),
            i64::from(draw.x) + i64::from(target_width),
            i64::from(draw.y) + i64::from(target_height),
        );
        let Some(area) = intersect(placed, screen).and_then(|a| intersect(a, bounds(&draw.clip)))
        else {
            continue;
        };
        for damaged in &damage {
            let boxed = (
                i64::from(damaged.0),
                i64::from(damaged.1),
                i64::from(damaged.2),
                i64::from(damaged.3),
            );
            if let Some((x0, y0, x1, y1)) = intersect(area, boxed) {
                pieces.push(Piece {
                    draw: index,
                    area: (x0 as u32, y0 as u32, x1 as u32, y1 as u32),
                });
            }
        }
    }
    Ok(pieces)
}

/// Renders `list` into `target` (BGRA, `width` × `height`) on the CPU,
/// reading draw sources through `source`. A draw whose resource is
/// unknown or too small fails the list before any pixel changes.
pub fn compose_cpu<'a>(
    list: &CompositionList,
    target: &mut [u8],
    width: u32,
    height: u32,
    source: impl Fn(u32) -> Option<Image<'a>>,
) -> Result<(), ComposeError> {
    let pieces = plan(list, width, height, |id| {
        source(id).map(|image| (image.width, image.height))
    })?;
    for piece in pieces {
        let draw = &list.draws[piece.draw];
        let image = source(draw.resource_id).expect("planned");
        compose_piece(draw, &piece, &image, target, width);
    }
    Ok(())
}

/// Draws one planned piece on the CPU.
fn compose_piece(draw: &Draw, piece: &Piece, image: &Image, target: &mut [u8], width: u32) {
    if draw.scaled() {
        return compose_scaled(draw, piece, image, target, width);
    }
    let (x0, y0, x1, y1) = piece.area;
    let dx = i64::from(draw.source.x) - i64::from(draw.x);
    let dy = i64::from(draw.source.y) - i64::from(draw.y);
    let opacity = u32::from(draw.opacity);
    let opaque = image.opaque || draw.opaque;
    let row_bytes = (x1 - x0) as usize * 4;
    for y in y0..y1 {
        let sy = (i64::from(y) + dy) as usize;
        let sx = (i64::from(x0) + dx) as usize;
        let s = (sy * image.width as usize + sx) * 4;
        let d = (y as usize * width as usize + x0 as usize) * 4;
        let source = &image.pixels[s..s + row_bytes];
        let dest = &mut target[d..d + row_bytes];
        if opaque && opacity == 255 {
            // Every pixel replaces what is there, its padding byte too
            // (the target's fourth byte is not read as alpha; the GPU
            // copies the same bytes: `render::copy_regions`).
            dest.copy_from_slice(source);
            continue;
        }
        for (s, d) in source.chunks_exact(4).zip(dest.chunks_exact_mut(4)) {
            over(s, d, opaque, opacity);
        }
    }
}

/// Source pixel `s` "over" target pixel `d` (BGRA), its alpha (255 when
/// `opaque`) scaled by `opacity`; integer-exact, as the shader.
fn over(s: &[u8], d: &mut [u8], opaque: bool, opacity: u32) {
    let alpha = if opaque {
        opacity
    } else {
        div255(u32::from(s[3]) * opacity + 127)
    };
    // The blend below gives the source at 255 and the dest at 0 exactly;
    // those two are just faster.
    match alpha {
        0 => {}
        255 => {
            d[..3].copy_from_slice(&s[..3]);
            d[3] = 255;
        }
        _ => {
            let keep = 255 - alpha;
            for c in 0..3 {
                d[c] = div255(u32::from(s[c]) * alpha + u32::from(d[c]) * keep + 127) as u8;
            }
            d[3] = div255(255 * alpha + u32::from(d[3]) * keep + 127) as u8;
        }
    }
}

/// Draws one planned piece of a scaled draw on the CPU, pixel by pixel.
fn compose_scaled(draw: &Draw, piece: &Piece, image: &Image, target: &mut [u8], width: u32) {
    let (x0, y0, x1, y1) = piece.area;
    let (target_width, target_height) = draw.target_size();
    let opacity = u32::from(draw.opacity);
    for y in y0..y1 {
        let row = (i64::from(y) - i64::from(draw.y)) as u32;
        let sy = Draw::source_at(draw.source.y, draw.source.height, target_height, row);
        for x in x0..x1 {
            let column = (i64::from(x) - i64::from(draw.x)) as u32;
            let sx = Draw::source_at(draw.source.x, draw.source.width, target_width, column);
            let s = (sy as usize * image.width as usize + sx as usize) * 4;
            let d = (y as usize * width as usize + x as usize) * 4;
            over(
                &image.pixels[s..s + 4],
                &mut target[d..d + 4],
                image.opaque || draw.opaque,
                opacity,
            );
        }
    }
}

/// `x / 255` for `x` ≤ 65,534 (everything "over" computes), without a
/// division.
fn div255(x: u32) -> u32 {
    (x + 1 + (x >> 8)) >> 8
}

/// Where a frame lies in its source image, for [`i420_region_cpu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// The source image's row length in pixels.
    pub stride: u32,
    /// The frame's top-left pixel in the source image.
    pub origin_x: u32,
    pub origin_y: u32,
    /// The frame's size (both even).
    pub width: u32,
    pub height: u32,
}

impl FrameLayout {
    /// The I420 bytes of a frame this size.
    pub fn i420_len(&self) -> usize {
        self.width as usize * self.height as usize * 3 / 2
    }

    /// `area` (frame pixels) widened to whole `align_x` × 2 blocks and
    /// clipped to the frame; None when nothing is left.
    pub fn aligned(&self, area: Box2, align_x: u32) -> Option<Box2> {
        let x0 = area.0 - area.0 % align_x;
        let y0 = area.1 - area.1 % 2;
        let x1 = area.2.min(self.width).div_ceil(align_x) * align_x;
        let y1 = area.3.min(self.height).div_ceil(2) * 2;
        let x1 = x1.min(self.width);
        (x0 < x1 && y0 < y1).then_some((x0, y0, x1, y1))
    }
}

/// Converts `area` of a frame (even bounds, frame coordinates) of `bgra`
/// to I420 in `out` (the whole frame's planes): the CPU reference of the
/// GPU's region conversion. Pixels outside `area` are left as they were.
pub fn i420_region_cpu(bgra: &[u8], layout: &FrameLayout, area: Box2, out: &mut [u8]) {
    let (w, h) = (layout.width as usize, layout.height as usize);
    let (luma, chroma) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(w * h / 4);
    let stride = layout.stride as usize;
    let (ox, oy) = (layout.origin_x as usize, layout.origin_y as usize);
    let rgb = |x: usize, y: usize| {
        let p = ((oy + y) * stride + ox + x) * 4;
        (
            i32::from(bgra[p + 2]),
            i32::from(bgra[p + 1]),
            i32::from(bgra[p]),
        )
    };
    let (x0, y0, x1, y1) = (
        area.0 as usize,
        area.1 as usize,
        area.2 as usize,
        area.3 as usize,
    );
    for y in y0..y1 {
        for x in x0..x1 {
            let (r, g, b) = rgb(x, y);
            luma[y * w + x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        }
    }
    for y in (y0..y1).step_by(2) {
        for x in (x0..x1).step_by(2) {
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
}

/// BGRA → I420 (BT.601 limited range, chroma averaged over 2×2), the CPU
/// reference. Width and height must be even.
pub fn i420_cpu(bgra: &[u8], width: u32, height: u32) -> Vec<u8> {
    let layout = FrameLayout {
        stride: width,
        origin_x: 0,
        origin_y: 0,
        width,
        height,
    };
    let mut out = vec![0u8; layout.i420_len()];
    i420_region_cpu(bgra, &layout, (0, 0, width, height), &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn div255_is_exact_wherever_over_uses_it() {
        for x in 0..=65_534u32 {
            assert_eq!(super::div255(x), x / 255, "{x}");
        }
    }
}
