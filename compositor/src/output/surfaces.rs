//! What one frame shows, surface by surface: each window's surface tree
//! (subsurfaces, popups) with its position, crop and size (wp_viewporter),
//! opacity and damage since its last upload, plus the title bars the
//! compositor draws; and the copies of their pixels into gpud's memfds,
//! every offset checked against the client's pool.

use std::collections::{HashMap, HashSet};

use flotilla_gpu::protocol::{Format, Rect};
use smithay::backend::renderer::utils::RendererSurfaceStateUserData;
use smithay::reexports::wayland_server::protocol::wl_shm;
use smithay::reexports::wayland_server::protocol::{wl_buffer, wl_surface::WlSurface};
use smithay::reexports::wayland_server::Resource;
use smithay::wayland::compositor::{with_surface_tree_downward, TraversalAction};
use smithay::wayland::shell::xdg::ToplevelSurface;
use smithay::wayland::shm::with_buffer_contents;

use crate::decoration;
use crate::gpu_output::SurfaceFrame;
use crate::state::Keys;

/// Keys of title bars: a window's id with the top bit set (surface keys
/// count up from 1 and never get there).
pub(super) const DECORATION_KEY: u64 = 1 << 63;

/// `toplevel`'s title bar above `location` (the window's top left),
/// `width` wide: its damage is all of it when its title, focus or width
/// changed since it was last drawn (then its pixels go to `pixels`),
/// none otherwise.
pub(super) fn title_bar(
    toplevel: &ToplevelSurface,
    key: u64,
    location: (i32, i32),
    width: i32,
    focused: bool,
    bars: &mut HashMap<u64, (String, bool, u32)>,
    pixels: &mut HashMap<u64, (Vec<u8>, u32)>,
) -> Option<SurfaceFrame> {
    let width = u32::try_from(width).ok().filter(|w| *w > 0)?;
    let title = smithay::wayland::compositor::with_states(toplevel.wl_surface(), |states| {
        let data = states
            .data_map
            .get::<smithay::wayland::shell::xdg::XdgToplevelSurfaceData>()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        data.title.clone().or_else(|| data.app_id.clone())
    })
    .unwrap_or_default();
    let height = decoration::TITLE_HEIGHT;
    let now = (title, focused, width);
    let damage = if bars.get(&key) == Some(&now) {
        Vec::new()
    } else {
        pixels.insert(key, (decoration::title_bar(width, &now.0, focused), width));
        bars.insert(key, now);
        vec![Rect {
            x: 0,
            y: 0,
            width,
            height,
        }]
    };
    Some(SurfaceFrame {
        key,
        x: location.0,
        y: location.1 - height as i32,
        width,
        height,
        source: Rect {
            x: 0,
            y: 0,
            width,
            height,
        },
        size: (width, height),
        format: Format::B8G8R8X8,
        opaque: true,
        damage,
    })
}

/// Copies `area` of `pixels` (rows of `width` × 4 bytes) into `out`
/// (rows of the same width).
pub(super) fn copy_rows(pixels: &[u8], width: u32, area: &Rect, out: &mut [u8]) -> bool {
    let stride = width as usize * 4;
    for row in area.y as usize..(area.y + area.height) as usize {
        let start = row * stride + area.x as usize * 4;
        let end = start + area.width as usize * 4;
        if end > pixels.len() || end > out.len() {
            return false;
        }
        out[start..end].copy_from_slice(&pixels[start..end]);
    }
    true
}

/// Adds `root`'s surface tree (placed at `origin`) to `surfaces`, each
/// with its damage since it was last uploaded.
pub(super) fn collect(
    root: &WlSurface,
    origin: (i32, i32),
    keys: &mut Keys,
    live: &mut HashSet<u64>,
    surfaces: &mut Vec<SurfaceFrame>,
    buffers: &mut HashMap<u64, (wl_buffer::WlBuffer, u32)>,
) {
    with_surface_tree_downward(
        root,
        origin,
        |_, states, location| {
            let Some(data) = states.data_map.get::<RendererSurfaceStateUserData>() else {
                return TraversalAction::SkipChildren;
            };
            match data.lock().unwrap_or_else(|p| p.into_inner()).view() {
                Some(view) => TraversalAction::DoChildren((
                    location.0 + view.offset.x,
                    location.1 + view.offset.y,
                )),
                None => TraversalAction::SkipChildren,
            }
        },
        |surface, states, location| {
            let Some(data) = states.data_map.get::<RendererSurfaceStateUserData>() else {
                return;
            };
            let data = data.lock().unwrap_or_else(|p| p.into_inner());
            let (Some(view), Some(buffer)) = (data.view(), data.buffer()) else {
                return;
            };
            let buffer: &wl_buffer::WlBuffer = buffer;
            let Ok((width, height, format)) =
                with_buffer_contents(buffer, |_, _, info| (info.width, info.height, info.format))
            else {
                return;
            };
            let format = match format {
                wl_shm::Format::Argb8888 => Format::B8G8R8A8,
                wl_shm::Format::Xrgb8888 => Format::B8G8R8X8,
                _ => return,
            };
            if width <= 0 || height <= 0 {
                return;
            }
            let id = surface.id();
            let next = &mut keys.next;
            let key = *keys.keys.entry(id).or_insert_with(|| {
                *next += 1;
                *next
            });
            live.insert(key);
            let commit = data.current_commit();
            let damage = match keys.uploaded.get(&key) {
                Some(seen) if *seen == commit => Vec::new(),
                seen => data
                    .damage_since(seen.copied())
                    .iter()
                    .filter_map(|r| {
                        let x = r.loc.x.max(0);
                        let y = r.loc.y.max(0);
                        let w = (r.loc.x + r.size.w).min(width) - x;
                        let h = (r.loc.y + r.size.h).min(height) - y;
                        (w > 0 && h > 0).then_some(Rect {
                            x: x as u32,
                            y: y as u32,
                            width: w as u32,
                            height: h as u32,
                        })
                    })
                    .collect(),
            };
            keys.uploaded.insert(key, commit);
            buffers.insert(key, (buffer.clone(), width as u32));
            // wp_viewporter: the crop (buffer pixels: buffer scale 1, no
            // transform) and the size on the output.
            let source = {
                let x = view.src.loc.x.max(0.0).round() as u32;
                let y = view.src.loc.y.max(0.0).round() as u32;
                Rect {
                    x,
                    y,
                    width: (view.src.size.w.round() as u32)
                        .clamp(1, (width as u32).saturating_sub(x).max(1)),
                    height: (view.src.size.h.round() as u32)
                        .clamp(1, (height as u32).saturating_sub(y).max(1)),
                }
            };
            let size = (view.dst.w.max(1) as u32, view.dst.h.max(1) as u32);
            // Opaque when the client says all of it is (foot does, with an
            // ARGB buffer): what is beneath is not drawn.
            let opaque = states
                .cached_state
                .get::<smithay::wayland::compositor::SurfaceAttributes>()
                .current()
                .opaque_region
                .as_ref()
                .is_some_and(|region| {
                    use smithay::wayland::compositor::RectangleKind;
                    let whole = smithay::utils::Rectangle::<i32, smithay::utils::Logical>::new(
                        (0, 0).into(),
                        view.dst,
                    );
                    region
                        .rects
                        .iter()
                        .all(|(kind, _)| matches!(kind, RectangleKind::Add))
                        && region
                            .rects
                            .iter()
                            .any(|(_, rect)| rect.contains_rect(whole))
                });
            surfaces.push(SurfaceFrame {
                opaque,
                key,
                x: location.0 + view.offset.x,
                y: location.1 + view.offset.y,
                width: width as u32,
                height: height as u32,
                source,
                size,
                format,
                damage,
            });
        },
        |_, _, _| true,
    );
}

/// Copies `area` of a client's shm buffer into `out` (rows of `width` × 4
/// bytes), every offset checked against the pool: a client that lies
/// about its buffer gets nothing copied.
pub(super) fn copy_area(
    buffer: &wl_buffer::WlBuffer,
    width: u32,
    area: &Rect,
    out: &mut [u8],
) -> bool {
    with_buffer_contents(buffer, |pointer, len, info| {
        let stride = info.stride.max(0) as usize;
        let row_bytes = area.width as usize * 4;
        for row in area.y as usize..(area.y + area.height) as usize {
            let Some(start) = (info.offset.max(0) as usize)
                .checked_add(row * stride)
                .and_then(|s| s.checked_add(area.x as usize * 4))
            else {
                return false;
            };
            let target = row * width as usize * 4 + area.x as usize * 4;
            if start + row_bytes > len || target + row_bytes > out.len() {
                return false;
            }
            // SAFETY: [start, start + row_bytes) lies within the client's
            // mapped pool of `len` bytes (checked above); the client may
            // change it concurrently, which changes only pixel values.
            let source = unsafe { std::slice::from_raw_parts(pointer.add(start), row_bytes) };
            out[target..target + row_bytes].copy_from_slice(source);
        }
        true
    })
    .unwrap_or(false)
}
