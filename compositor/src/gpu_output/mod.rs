//! The compositor's output: a gpud guest. Each client surface with an shm
//! buffer becomes a gpud resource; its damage is copied into the
//! resource's backing (a memfd shared with gpud) and transferred; each
//! frame is one composition list (background, then every surface back to
//! front) and a RESOURCE_FLUSH of the damage. Nothing is drawn when
//! nothing changed.
//!
//! The copy: damaged rows are copied once into the surface's own memfd
//! (which gpud maps), never the client's pool handed to gpud: a client
//! can shrink its unsealed pool under gpud, and the SIGBUS would take the
//! node agent, and every desktop on it, down (ARCHITECTURE.md).
//!
//! A surface that is opaque (XRGB, or its opaque region covers it) is
//! flagged so in the composition list: gpud copies it instead of
//! blending it. The memfds it shares with gpud are `staging`'s.

mod staging;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use flotilla_gpu::compose::{CompositionList, Draw, MAX_DAMAGE, MAX_DRAWS};
use flotilla_gpu::guest::{answer_type, Guest};
use flotilla_gpu::protocol::{build, resp, Format, MemEntry, Rect};
use flotilla_gpu::session::CAPSET_COMPOSE;
use staging::Staging;

const SCANOUT: u32 = 1;
const BACKGROUND: u32 = 2;
const CONTEXT: u32 = 1;
/// The largest spare backing made at start (a 4K screen is 33 MB).
const MAX_SPARE: usize = 64 << 20;
/// The desktop's background, B G R X.
pub const BACKGROUND_BGRX: [u8; 4] = [0x30, 0x28, 0x20, 0xff];

/// One surface's resource on gpud.
struct SurfaceResource {
    id: u32,
    width: u32,
    height: u32,
    format: Format,
    staging: Staging,
}

/// What a surface shows this frame.
pub struct SurfaceFrame {
    /// A key for the surface (its protocol id), stable while it lives.
    pub key: u64,
    /// Where it is on the output.
    pub x: i32,
    pub y: i32,
    /// The buffer's size.
    pub width: u32,
    pub height: u32,
    /// The part of the buffer shown (wp_viewporter's crop; all of it
    /// without one) and its size on the output (the viewport's
    /// destination; the source's size without one).
    pub source: Rect,
    pub size: (u32, u32),
    pub format: Format,
    /// Every pixel opaque (an X8 format, or the client's opaque region
    /// covers it): nothing beneath it is drawn.
    pub opaque: bool,
    /// Rectangles (buffer coordinates) whose pixels are new; `copy` fills
    /// them.
    pub damage: Vec<Rect>,
}

/// Where a surface (by key) or a resource (by id) is drawn: at (x, y),
/// its source rectangle at the given size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    id: u64,
    x: i32,
    y: i32,
    source: Rect,
    size: (u32, u32),
    /// Every pixel opaque (B8G8R8X8): what is beneath it is not drawn.
    opaque: bool,
}

/// Copies `rect` of the client's buffer into `out` (rows of `width` × 4).
pub type CopyFn<'a> = dyn FnMut(u64, &Rect, &mut [u8]) -> bool + 'a;

/// gpud's set-up (context, screen, the background shown), done on a
/// thread while the compositor already serves its clients.
type Setup = std::thread::JoinHandle<anyhow::Result<(Guest, Staging)>>;

pub struct GpuOutput {
    /// None while [`setup`](Self::setup) holds the connection.
    guest: Option<Guest>,
    setup: Option<Setup>,
    /// A duplicate of the connection, to watch (see [`watch`](Self::watch)).
    watched: std::os::unix::net::UnixStream,
    pub width: u32,
    pub height: u32,
    next_id: u32,
    surfaces: HashMap<u64, SurfaceResource>,
    /// Last frame's layout, back to front.
    layout: Vec<Placed>,
    _background: Option<Staging>,
    /// A screen-sized backing made ready at start, for the first surface
    /// (the first app's window, whose first frame is waited for).
    spare: Option<Staging>,
    spare_making: Option<std::thread::JoinHandle<anyhow::Result<Staging>>>,
}

fn call(guest: &mut Guest, command: &[u8], fds: &[i32], what: &str) -> anyhow::Result<()> {
    let answer = guest
        .call(command, fds)
        .with_context(|| format!("gpud: {what}"))?;
    let kind = answer_type(&answer);
    if kind >= resp::ERR_UNSPEC {
        bail!("gpud refused {what}: {kind:#x}");
    }
    Ok(())
}

/// Makes the scanout and the background (filled, uploaded and composed) at
/// `width`×`height` and points scanout 0 at it; returns the background's
/// backing.
fn screen(guest: &mut Guest, width: u32, height: u32) -> anyhow::Result<Staging> {
    let len = width as usize * height as usize * 4;
    let mut background = Staging::new(len)?;
    for pixel in background.bytes().chunks_exact_mut(4) {
        pixel.copy_from_slice(&BACKGROUND_BGRX);
    }
    let entry = [MemEntry {
        offset: 0,
        length: len as u32,
    }];
    let screen = rect(0, 0, width, height);
    call(
        guest,
        &build::resource_create_2d(SCANOUT, Format::B8G8R8A8, width, height),
        &[],
        "create the scanout",
    )?;
    call(
        guest,
        &build::resource_create_2d(BACKGROUND, Format::B8G8R8X8, width, height),
        &[],
        "create the background",
    )?;
    call(
        guest,
        &build::attach_backing(BACKGROUND, &entry),
        &[background.fd.as_raw_fd()],
        "back the background",
    )?;
    call(
        guest,
        &build::transfer_to_host_2d(screen, 0, BACKGROUND),
        &[],
        "upload the background",
    )?;
    // The background composed into the scanout before it is shown:
    // setting the scanout converts the frame once (composing after it
    // would convert it a second time, CPU work a starting desktop's first
    // client competes with on a GPU-less host).
    let list = CompositionList {
        target: SCANOUT,
        damage: vec![screen],
        draws: vec![Draw {
            size: None,
            resource_id: BACKGROUND,
            source: screen,
            x: 0,
            y: 0,
            opacity: 255,
            clip: screen,
            opaque: true,
        }],
    };
    call(
        guest,
        &build::submit_3d(CONTEXT, None, &list.encode()),
        &[],
        "compose the background",
    )?;
    call(
        guest,
        &build::set_scanout(screen, 0, SCANOUT),
        &[],
        "set the scanout",
    )?;
    Ok(background)
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

impl GpuOutput {
    /// Connects to gpud at `socket` and takes the display size it offers;
    /// the rest of the set-up (the composition context, the screen, the
    /// background shown) goes on on a thread, and the first call that
    /// needs gpud waits for it. The compositor serves its clients
    /// meanwhile: on lavapipe that set-up is 10–25 ms (two 4 MB resources
    /// zeroed, the background uploaded and copied) that an app's own
    /// start-up hides.
    pub fn connect(socket: &Path) -> anyhow::Result<GpuOutput> {
        let mut guest = Guest::connect(socket)
            .with_context(|| format!("connect to gpud at {}", socket.display()))?;
        let info = guest.call(&build::get_display_info(), &[])?;
        if answer_type(&info) != resp::OK_DISPLAY_INFO || info.len() < 48 {
            bail!("gpud did not describe its display");
        }
        let width = u32::from_le_bytes(info[32..36].try_into()?);
        let height = u32::from_le_bytes(info[36..40].try_into()?);
        let watched = guest.stream().try_clone()?;
        let setup = std::thread::Builder::new()
            .name("gpud-setup".to_owned())
            .spawn(move || {
                call(
                    &mut guest,
                    &build::ctx_create(CONTEXT, CAPSET_COMPOSE, "compositor"),
                    &[],
                    "create the composition context",
                )?;
                let background = screen(&mut guest, width, height)?;
                Ok((guest, background))
            })
            .context("start gpud's set-up")?;
        Ok(GpuOutput {
            guest: None,
            setup: Some(setup),
            watched,
            width,
            height,
            next_id: 16,
            surfaces: HashMap::new(),
            layout: Vec::new(),
            _background: None,
            spare: None,
            spare_making: Some(width as usize * height as usize * 4)
                .filter(|len| *len <= MAX_SPARE)
                .and_then(|len| {
                    std::thread::Builder::new()
                        .name("gpud-spare".to_owned())
                        .spawn(move || Staging::populated(len))
                        .ok()
                }),
        })
    }

    /// Whether gpud's set-up is still going on.
    pub fn setting_up(&self) -> bool {
        self.setup
            .as_ref()
            .is_some_and(|setup| !setup.is_finished())
    }

    /// Waits for gpud's set-up; its error if it failed.
    pub fn ready(&mut self) -> anyhow::Result<()> {
        self.guest().map(|_| ())
    }

    /// The connection, once the set-up is done (waiting for it if needed).
    fn guest(&mut self) -> anyhow::Result<&mut Guest> {
        if let Some(setup) = self.setup.take() {
            let (guest, background) = setup
                .join()
                .map_err(|_| anyhow::anyhow!("gpud's set-up panicked"))??;
            self.guest = Some(guest);
            self._background = Some(background);
        }
        self.guest
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("gpud's set-up failed before"))
    }

    /// A duplicate of the connection to gpud, to watch: between calls
    /// nothing arrives, so readable means gpud closed it.
    pub fn watch(&self) -> std::io::Result<std::os::unix::net::UnixStream> {
        self.watched.try_clone()
    }

    /// Remakes the scanout and background at `width`×`height` and shows
    /// the background; the next [`render`](Self::render) redraws all.
    pub fn resize(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        // Unreferencing the scanout's resource turns the scanout off.
        // After a failed resize either may be gone already: the answer
        // does not matter, only that gpud is still there.
        for id in [SCANOUT, BACKGROUND] {
            self.guest()?
                .call(&build::resource_unref(id), &[])
                .context("gpud: unref the old screen")?;
        }
        self._background = Some(screen(self.guest()?, width, height)?);
        self.width = width;
        self.height = height;
        // The next frame redraws every window.
        self.layout.clear();
        Ok(())
    }

    /// The resource for `surface`, made (or remade at a new size or
    /// format) as needed. Returns whether it is new (all of it must be
    /// uploaded).
    fn resource(&mut self, surface: &SurfaceFrame) -> anyhow::Result<bool> {
        if let Some(existing) = self.surfaces.get(&surface.key) {
            if existing.width == surface.width
                && existing.height == surface.height
                && existing.format == surface.format
            {
                return Ok(false);
            }
            let id = existing.id;
            self.surfaces.remove(&surface.key);
            call(
                self.guest()?,
                &build::resource_unref(id),
                &[],
                "unref a surface",
            )?;
        }
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(16);
        let len = surface.width as usize * surface.height as usize * 4;
        // The spare goes to a window-sized surface (not a title bar),
        // larger than needed being fine: gpud maps `len` bytes of it.
        let fits = |spare: usize| len <= spare && len >= spare / 2;
        let staging = match self.spare.take_if(|spare| fits(spare.len)) {
            Some(spare) => spare,
            None => Staging::new(len)?,
        };
        call(
            self.guest()?,
            &build::resource_create_2d(id, surface.format, surface.width, surface.height),
            &[],
            "create a surface",
        )?;
        call(
            self.guest()?,
            &build::attach_backing(
                id,
                &[MemEntry {
                    offset: 0,
                    length: len as u32,
                }],
            ),
            &[staging.fd.as_raw_fd()],
            "back a surface",
        )?;
        self.surfaces.insert(
            surface.key,
            SurfaceResource {
                id,
                width: surface.width,
                height: surface.height,
                format: surface.format,
                staging,
            },
        );
        Ok(true)
    }

    /// Shows `surfaces` (back to front): uploads their damage, composes
    /// what changed. Returns whether a frame was made.
    pub fn render(
        &mut self,
        surfaces: &mut [SurfaceFrame],
        copy: &mut CopyFn,
    ) -> anyhow::Result<bool> {
        self.guest()?;
        // The spare serves the first frame that shows surfaces, or nobody.
        let first = !surfaces.is_empty() && self.spare_making.is_some();
        if first {
            self.spare = self
                .spare_making
                .take()
                .and_then(|making| making.join().ok()?.ok());
        }
        let shown = self.show(surfaces, copy);
        if first {
            self.spare = None;
        }
        shown
    }

    fn show(&mut self, surfaces: &mut [SurfaceFrame], copy: &mut CopyFn) -> anyhow::Result<bool> {
        let mut damage: Vec<Rect> = Vec::new();
        for surface in surfaces.iter_mut() {
            if surface.width == 0 || surface.height == 0 {
                continue;
            }
            if self.resource(surface)? {
                surface.damage = vec![rect(0, 0, surface.width, surface.height)];
            }
            let resource = self.surfaces.get_mut(&surface.key).expect("made above");
            let stride = resource.width as usize * 4;
            for area in &surface.damage {
                let Some(area) = clip(area, resource.width, resource.height) else {
                    continue;
                };
                let bytes = resource.staging.bytes();
                if !copy(surface.key, &area, bytes) {
                    continue;
                }
                let offset = area.y as u64 * stride as u64 + area.x as u64 * 4;
                // Disjoint from `self.surfaces` (borrowed above).
                let guest = self.guest.as_mut().context("gpud's set-up failed")?;
                call(
                    guest,
                    &build::transfer_to_host_2d(area, offset, resource.id),
                    &[],
                    "upload damage",
                )?;
                let scaled = surface.size != (surface.source.width, surface.source.height);
                // Damage on the output: the buffer's, moved by the crop;
                // a scaled surface's, all of it.
                let (x, y, width, height) = if scaled {
                    (surface.x, surface.y, surface.size.0, surface.size.1)
                } else {
                    (
                        surface.x + area.x as i32 - surface.source.x as i32,
                        surface.y + area.y as i32 - surface.source.y as i32,
                        area.width,
                        area.height,
                    )
                };
                if let Some(on_screen) = clip_signed(x, y, width, height, self.width, self.height) {
                    damage.push(on_screen);
                }
            }
        }
        // Windows that appeared, went or moved: redraw all.
        let layout: Vec<_> = surfaces
            .iter()
            .filter(|s| s.width > 0 && s.height > 0)
            .map(|s| Placed {
                id: s.key,
                x: s.x,
                y: s.y,
                source: s.source,
                size: s.size,
                opaque: s.opaque || s.format == Format::B8G8R8X8,
            })
            .collect();
        if layout != self.layout {
            damage = vec![rect(0, 0, self.width, self.height)];
            self.layout = layout;
        }
        let live: std::collections::HashSet<u64> = surfaces.iter().map(|s| s.key).collect();
        let gone: Vec<u64> = self
            .surfaces
            .keys()
            .filter(|key| !live.contains(key))
            .copied()
            .collect();
        for key in gone {
            if let Some(resource) = self.surfaces.remove(&key) {
                call(
                    self.guest()?,
                    &build::resource_unref(resource.id),
                    &[],
                    "unref a surface",
                )?;
            }
        }
        if damage.is_empty() {
            return Ok(false);
        }
        let draws: Vec<Placed> = surfaces
            .iter()
            .filter_map(|s| {
                let resource = self.surfaces.get(&s.key)?;
                // The crop within the buffer (a client's viewport is
                // checked by smithay; this keeps gpud's check from ever
                // failing a frame).
                let source = clip(&s.source, resource.width, resource.height)?;
                Some(Placed {
                    id: u64::from(resource.id),
                    x: s.x,
                    y: s.y,
                    source,
                    size: s.size,
                    opaque: s.opaque || resource.format == Format::B8G8R8X8,
                })
            })
            .collect();
        self.compose(&draws, damage)?;
        Ok(true)
    }

    fn compose(&mut self, surfaces: &[Placed], damage: Vec<Rect>) -> anyhow::Result<()> {
        let screen = rect(0, 0, self.width, self.height);
        compose_list(self.guest()?, screen, surfaces, damage)
    }
}

/// One frame: the background and `surfaces` (by resource id; back to
/// front) composed into the scanout where `damage` says,
/// then flushed.
fn compose_list(
    guest: &mut Guest,
    screen: Rect,
    surfaces: &[Placed],
    mut damage: Vec<Rect>,
) -> anyhow::Result<()> {
    if damage.len() > MAX_DAMAGE as usize {
        damage = vec![bounding(&damage)];
    }
    let background = Placed {
        id: u64::from(BACKGROUND),
        x: 0,
        y: 0,
        source: screen,
        size: (screen.width, screen.height),
        opaque: true,
    };
    let layers: Vec<&Placed> = std::iter::once(&background)
        .chain(surfaces.iter().take(MAX_DRAWS as usize - 1))
        .collect();
    let on_screen = |placed: &Placed| {
        clip_signed(
            placed.x,
            placed.y,
            placed.size.0,
            placed.size.1,
            screen.width,
            screen.height,
        )
    };
    let mut draws = Vec::with_capacity(layers.len());
    for (index, placed) in layers.iter().enumerate() {
        // Hidden under opaque surfaces above it (the background under a
        // maximised terminal, windows under the one on top): not drawn.
        let Some(area) = on_screen(placed) else {
            continue;
        };
        let above: Vec<Rect> = layers[index + 1..]
            .iter()
            .filter(|above| above.opaque)
            .filter_map(|above| on_screen(above))
            .collect();
        if covered(area, &above) {
            continue;
        }
        let unscaled = placed.size == (placed.source.width, placed.source.height);
        draws.push(Draw {
            size: (!unscaled).then_some(placed.size),
            resource_id: placed.id as u32,
            source: placed.source,
            x: placed.x,
            y: placed.y,
            opacity: 255,
            clip: screen,
            // Its opaque region covers it (or it has no alpha): drawn
            // as a copy, not blended.
            opaque: placed.opaque,
        });
    }
    let flush = bounding(&damage);
    let list = CompositionList {
        target: SCANOUT,
        damage,
        draws,
    };
    call(
        guest,
        &build::submit_3d(CONTEXT, None, &list.encode()),
        &[],
        "compose",
    )?;
    call(guest, &build::resource_flush(flush, SCANOUT), &[], "flush")
}

/// Whether `rects` together cover all of `area`.
fn covered(area: Rect, rects: &[Rect]) -> bool {
    // What of `area` no rectangle has covered yet, as disjoint pieces.
    let mut left = vec![area];
    for cover in rects {
        let mut next = Vec::with_capacity(left.len());
        for piece in left {
            let (x0, y0) = (piece.x.max(cover.x), piece.y.max(cover.y));
            let x1 = (piece.x + piece.width).min(cover.x + cover.width);
            let y1 = (piece.y + piece.height).min(cover.y + cover.height);
            if x0 >= x1 || y0 >= y1 {
                next.push(piece);
                continue;
            }
            let (px1, py1) = (piece.x + piece.width, piece.y + piece.height);
            if piece.y < y0 {
                next.push(rect(piece.x, piece.y, piece.width, y0 - piece.y));
            }
            if y1 < py1 {
                next.push(rect(piece.x, y1, piece.width, py1 - y1));
            }
            if piece.x < x0 {
                next.push(rect(piece.x, y0, x0 - piece.x, y1 - y0));
            }
            if x1 < px1 {
                next.push(rect(x1, y0, px1 - x1, y1 - y0));
            }
        }
        left = next;
        if left.is_empty() {
            return true;
        }
    }
    left.is_empty()
}

fn clip(area: &Rect, width: u32, height: u32) -> Option<Rect> {
    let x1 = area.x.saturating_add(area.width).min(width);
    let y1 = area.y.saturating_add(area.height).min(height);
    (area.x < x1 && area.y < y1).then(|| rect(area.x, area.y, x1 - area.x, y1 - area.y))
}

fn clip_signed(x: i32, y: i32, width: u32, height: u32, max_w: u32, max_h: u32) -> Option<Rect> {
    let x0 = i64::from(x).max(0);
    let y0 = i64::from(y).max(0);
    let x1 = (i64::from(x) + i64::from(width)).min(i64::from(max_w));
    let y1 = (i64::from(y) + i64::from(height)).min(i64::from(max_h));
    (x0 < x1 && y0 < y1).then(|| rect(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32))
}

fn bounding(rects: &[Rect]) -> Rect {
    let x0 = rects.iter().map(|r| r.x).min().unwrap_or(0);
    let y0 = rects.iter().map(|r| r.y).min().unwrap_or(0);
    let x1 = rects.iter().map(|r| r.x + r.width).max().unwrap_or(0);
    let y1 = rects.iter().map(|r| r.y + r.height).max().unwrap_or(0);
    rect(x0, y0, x1 - x0, y1 - y0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rectangle_is_covered_only_by_what_covers_all_of_it() {
        let screen = rect(0, 0, 640, 480);
        assert!(covered(screen, &[screen]));
        // A title bar and the window under it.
        assert!(covered(
            screen,
            &[rect(0, 0, 640, 24), rect(0, 24, 640, 456)]
        ));
        // Two tiles side by side, overlapping a little.
        assert!(covered(
            screen,
            &[rect(0, 0, 330, 480), rect(320, 0, 320, 480)]
        ));
        // A one-pixel gap, or nothing at all: not covered.
        assert!(!covered(
            screen,
            &[rect(0, 0, 320, 480), rect(321, 0, 319, 480)]
        ));
        assert!(!covered(screen, &[]));
        assert!(!covered(screen, &[rect(0, 0, 640, 479)]));
    }
}
