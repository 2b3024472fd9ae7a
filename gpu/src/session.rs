//! One guest's session with gpud and the ledger every session charges.
//!
//! A [`Session`] holds one desktop's resources, backings and contexts and
//! answers its commands ([`Session::handle`]): the bytes are decoded and
//! checked by [`crate::protocol`], the state here (does the resource exist,
//! is it this desktop's, does the rectangle fit, does the backing cover
//! what is read). Every byte a resource holds is charged to the desktop in
//! the shared [`Ledger`] before it is allocated; past the desktop's budget
//! the command gets `ERR_OUT_OF_MEMORY`. Dropping the session (the guest's
//! socket closed) releases everything it held.
//!
//! With a [`Renderer`] (gpud on a GPU), resources and the scanout's I420
//! frame are GPU buffers and composition and conversion run as compute
//! shaders; without one (no Vulkan device), the same state lives in host
//! memory and the CPU reference renders it. Both execute the same plan and
//! give the same bytes. A buffer is charged what the driver allocates.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::compose::{
    compose_cpu, i420_region_cpu, plan, Box2, CompositionList, FrameLayout, Image,
};
use crate::protocol::{
    self, decode, encode, resp, Command, DisplayMode, Format, Header, MemEntry, Rect, Response,
    MAX_SCANOUTS,
};
use crate::render::{GpuBuffer, Renderer, Step};

/// Our capset: the composition context type (see the crate docs).
pub const CAPSET_COMPOSE: u32 = 0x4643;
pub const CAPSET_COMPOSE_VERSION: u32 = 2;

/// GPU memory charged per desktop, against each desktop's budget.
#[derive(Debug, Default)]
pub struct Ledger {
    desktops: Mutex<BTreeMap<String, Account>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub charged_bytes: u64,
    pub budget_bytes: u64,
}

impl Ledger {
    /// Opens (or re-budgets) desktop `desktop`'s account.
    pub fn open(&self, desktop: &str, budget_bytes: u64) {
        self.desktops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(desktop.to_owned())
            .or_default()
            .budget_bytes = budget_bytes;
    }

    /// Charges `bytes` to `desktop` unless that passes its budget.
    pub fn charge(&self, desktop: &str, bytes: u64) -> bool {
        let mut desktops = self.desktops.lock().unwrap_or_else(|p| p.into_inner());
        let Some(account) = desktops.get_mut(desktop) else {
            return false;
        };
        match account.charged_bytes.checked_add(bytes) {
            Some(total) if total <= account.budget_bytes => {
                account.charged_bytes = total;
                true
            }
            _ => false,
        }
    }

    pub fn release(&self, desktop: &str, bytes: u64) {
        let mut desktops = self.desktops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(account) = desktops.get_mut(desktop) {
            account.charged_bytes = account.charged_bytes.saturating_sub(bytes);
        }
    }

    /// Closes `desktop`'s account (its last session ended).
    pub fn close(&self, desktop: &str) {
        self.desktops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(desktop);
    }

    pub fn accounts(&self) -> BTreeMap<String, Account> {
        self.desktops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn total_charged(&self) -> u64 {
        self.accounts().values().map(|a| a.charged_bytes).sum()
    }
}

/// A guest's memory for a resource: a mapped descriptor range.
struct Backing {
    map: *mut libc::c_void,
    map_len: usize,
    /// Where the entry's bytes start within the mapping.
    start: usize,
    len: usize,
}

// SAFETY: the mapping is private to the session and only read through
// `bytes`; it is unmapped once, on drop.
unsafe impl Send for Backing {}

impl Backing {
    fn bytes(&self) -> &[u8] {
        // SAFETY: [start, start + len) lies within the live mapping (checked
        // when mapped); the guest may change it concurrently, which can
        // only change pixel values we copy, never bounds.
        unsafe { std::slice::from_raw_parts(self.map.cast::<u8>().add(self.start), self.len) }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// Maps `length` bytes at `offset` of `fd`, read-only, after checking the
/// descriptor is a regular file (a memfd or shm pool) that holds them.
fn map_entry(fd: &OwnedFd, entry: &MemEntry) -> Result<Backing, String> {
    // SAFETY: fstat into a zeroed struct on a descriptor we hold.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(format!("fstat: {}", std::io::Error::last_os_error()));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("a backing must be a memfd or shared-memory file".to_owned());
    }
    let size = stat.st_size as u64;
    let end = entry
        .offset
        .checked_add(u64::from(entry.length))
        .filter(|end| *end <= size)
        .ok_or_else(|| {
            format!(
                "{} bytes at offset {} lie outside a {size}-byte file",
                entry.length, entry.offset
            )
        })?;
    if entry.length == 0 {
        return Err("an empty memory entry".to_owned());
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let map_offset = entry.offset / page * page;
    let map_len = (end - map_offset) as usize;
    // SAFETY: a read-only shared mapping of a range checked to lie within
    // the file; the result is checked.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            map_offset as libc::off_t,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    Ok(Backing {
        map,
        map_len,
        start: (entry.offset - map_offset) as usize,
        len: entry.length as usize,
    })
}

/// Where a resource's or frame's bytes live.
enum Storage {
    Host(Vec<u8>),
    Gpu(GpuBuffer),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Host(bytes) => bytes,
            Storage::Gpu(buffer) => buffer.bytes(),
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Storage::Host(bytes) => bytes,
            Storage::Gpu(buffer) => buffer.bytes_mut(),
        }
    }

    fn gpu(&self) -> Option<ash::vk::Buffer> {
        match self {
            Storage::Host(_) => None,
            Storage::Gpu(buffer) => Some(buffer.buffer),
        }
    }
}

struct Resource {
    format: Format,
    width: u32,
    height: u32,
    /// What the guest transfers into and compositions read and write.
    storage: Storage,
    /// What the ledger was charged for it.
    charged: u64,
    backing: Vec<Backing>,
}

impl Resource {
    fn stride(&self) -> usize {
        self.width as usize * Format::BYTES_PER_PIXEL as usize
    }
}

/// The scanout's frame as I420, for the encoder stage. What the guest
/// flushes is converted when somebody reads the frame, not at the flush:
/// a desktop nobody watches costs no conversion at all, and a watched one
/// is converted once per read however many flushes came between.
struct Frame {
    resource_id: u32,
    layout: FrameLayout,
    storage: Storage,
    charged: u64,
    /// Counts flushes of the scanout: a new value is a new frame.
    sequence: u64,
    /// Flushed areas (frame pixels) not converted yet.
    pending: Vec<Box2>,
    /// Conversion jobs run, for tests and statistics.
    conversions: u64,
}

/// Flushed areas kept apart before they are merged into one box.
const MAX_PENDING: usize = 16;

/// One guest (desktop) connected to gpud.
pub struct Session {
    desktop: String,
    ledger: Arc<Ledger>,
    display: (u32, u32),
    resources: HashMap<u32, Resource>,
    contexts: HashMap<u32, String>,
    scanouts: [Option<(u32, Rect)>; MAX_SCANOUTS as usize],
    frame: Option<Frame>,
    renderer: Option<Arc<Renderer>>,
}

/// Most resources one guest may hold.
pub const MAX_RESOURCES: usize = 4096;
/// Most contexts one guest may hold.
pub const MAX_CONTEXTS: usize = 64;

impl Session {
    /// A session for `desktop` with a `budget_bytes` GPU-memory budget and
    /// one display of `width` × `height`.
    pub fn new(
        desktop: &str,
        budget_bytes: u64,
        ledger: Arc<Ledger>,
        width: u32,
        height: u32,
    ) -> Session {
        Session::with_renderer(desktop, budget_bytes, ledger, width, height, None)
    }

    /// As [`Session::new`], rendering on `renderer`'s GPU when given.
    pub fn with_renderer(
        desktop: &str,
        budget_bytes: u64,
        ledger: Arc<Ledger>,
        width: u32,
        height: u32,
        renderer: Option<Arc<Renderer>>,
    ) -> Session {
        ledger.open(desktop, budget_bytes);
        Session {
            desktop: desktop.to_owned(),
            ledger,
            display: (width, height),
            resources: HashMap::new(),
            contexts: HashMap::new(),
            scanouts: [None; MAX_SCANOUTS as usize],
            frame: None,
            renderer,
        }
    }

    /// Whether this session renders on a GPU.
    pub fn on_gpu(&self) -> bool {
        self.renderer.is_some()
    }

    /// `len` zeroed bytes of storage, charged to the desktop first:
    /// `(storage, charged bytes)` or `ERR_OUT_OF_MEMORY`.
    fn allocate(&self, len: u64) -> Result<(Storage, u64), u32> {
        let Some(renderer) = &self.renderer else {
            if !self.ledger.charge(&self.desktop, len) {
                return Err(resp::ERR_OUT_OF_MEMORY);
            }
            return Ok((Storage::Host(vec![0; len as usize]), len));
        };
        let size = renderer
            .allocation_size(len)
            .ok_or(resp::ERR_OUT_OF_MEMORY)?;
        if !self.ledger.charge(&self.desktop, size) {
            return Err(resp::ERR_OUT_OF_MEMORY);
        }
        match renderer.buffer(len) {
            Ok(buffer) if buffer.allocated() == size => Ok((Storage::Gpu(buffer), size)),
            Ok(buffer) => {
                // The driver changed its mind: charge what it allocated.
                let allocated = buffer.allocated();
                self.ledger.release(&self.desktop, size);
                if !self.ledger.charge(&self.desktop, allocated) {
                    return Err(resp::ERR_OUT_OF_MEMORY);
                }
                Ok((Storage::Gpu(buffer), allocated))
            }
            Err(error) => {
                self.ledger.release(&self.desktop, size);
                eprintln!("gpud: {}: {error}", self.desktop);
                Err(resp::ERR_OUT_OF_MEMORY)
            }
        }
    }

    /// Bytes this session has charged (its resources and frame).
    pub fn charged(&self) -> u64 {
        self.resources.values().map(|r| r.charged).sum::<u64>()
            + self.frame.as_ref().map_or(0, |f| f.charged)
    }

    /// A resource's format and size.
    pub fn resource_info(&self, resource_id: u32) -> Option<(Format, u32, u32)> {
        self.resources
            .get(&resource_id)
            .map(|r| (r.format, r.width, r.height))
    }

    /// A resource's pixels (tests and the benchmark).
    pub fn pixels(&self, resource_id: u32) -> Option<&[u8]> {
        self.resources.get(&resource_id).map(|r| r.storage.bytes())
    }

    /// What scanout `index` shows: resource and rectangle.
    pub fn scanout(&self, index: usize) -> Option<(u32, Rect)> {
        self.scanouts.get(index).copied().flatten()
    }

    /// Renders a composition list into its target resource: planned once
    /// (`compose::plan`), then drawn by the GPU's compute shader or, with
    /// no GPU, the CPU reference.
    fn compose(&mut self, list: &CompositionList) -> Result<(), u32> {
        if list
            .draws
            .iter()
            .any(|draw| draw.resource_id == list.target)
        {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        // Composition reads and writes B, G, R(, A) bytes: the wl_shm
        // formats. Others are refused, never misread.
        let bgra = |id: &u32| self.resources.get(id).is_none_or(|r| r.format.is_bgra());
        if !bgra(&list.target) || !list.draws.iter().all(|d| bgra(&d.resource_id)) {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        let mut target = self
            .resources
            .remove(&list.target)
            .ok_or(resp::ERR_INVALID_RESOURCE_ID)?;
        let result = self.compose_into(list, &mut target);
        self.resources.insert(list.target, target);
        result
    }

    fn compose_into(&self, list: &CompositionList, target: &mut Resource) -> Result<(), u32> {
        let resources = &self.resources;
        let Some(renderer) = &self.renderer else {
            return compose_cpu(
                list,
                target.storage.bytes_mut(),
                target.width,
                target.height,
                |id| {
                    resources.get(&id).map(|r| Image {
                        pixels: r.storage.bytes(),
                        width: r.width,
                        height: r.height,
                        opaque: r.format == Format::B8G8R8X8,
                    })
                },
            )
            .map_err(|_| resp::ERR_INVALID_PARAMETER);
        };
        let pieces = plan(list, target.width, target.height, |id| {
            resources.get(&id).map(|r| (r.width, r.height))
        })
        .map_err(|_| resp::ERR_INVALID_PARAMETER)?;
        let target_buffer = target.storage.gpu().ok_or(resp::ERR_UNSPEC)?;
        let mut steps = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let draw = &list.draws[piece.draw];
            let source = &resources[&draw.resource_id];
            steps.push(Step::Compose {
                target: target_buffer,
                target_stride: target.width,
                source: source.storage.gpu().ok_or(resp::ERR_UNSPEC)?,
                source_stride: source.width,
                area: piece.area,
                source_rect: (
                    draw.source.x,
                    draw.source.y,
                    draw.source.width,
                    draw.source.height,
                ),
                at: (draw.x, draw.y),
                size: draw.target_size(),
                opacity: draw.opacity,
                opaque: source.format == Format::B8G8R8X8 || draw.opaque,
            });
        }
        renderer.run(&self.desktop, steps).map_err(|error| {
            eprintln!("gpud: {}: composition failed: {error}", self.desktop);
            resp::ERR_UNSPEC
        })
    }

    /// Points the frame at scanout 0's resource and rectangle (allocating
    /// and charging its I420 planes), or drops it when the scanout is off
    /// or odd-sized.
    fn set_frame(&mut self) -> Result<(), u32> {
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
    fn flushed(&mut self, area: Box2) {
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

    fn drop_frame(&mut self) {
        if let Some(frame) = self.frame.take() {
            self.ledger.release(&self.desktop, frame.charged);
        }
    }

    /// Converts the flushed areas of the scanout to I420, in one job: on
    /// the GPU when the frame's width is a multiple of 8, else on the CPU.
    fn convert(&mut self) -> Result<(), String> {
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

    /// Answers one command (a frame's bytes and descriptors).
    pub fn handle(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) -> Vec<u8> {
        match decode(bytes, fds.len()) {
            Err(error) => protocol::encode_error(&error),
            Ok((header, command)) => {
                let response = match self.execute(&header, command, fds) {
                    Ok(response) => response,
                    Err(code) => Response::Error(code),
                };
                encode(&header, &response)
            }
        }
    }

    fn resource(&mut self, id: u32) -> Result<&mut Resource, u32> {
        self.resources
            .get_mut(&id)
            .ok_or(resp::ERR_INVALID_RESOURCE_ID)
    }

    fn execute(
        &mut self,
        header: &Header,
        command: Command,
        fds: Vec<OwnedFd>,
    ) -> Result<Response, u32> {
        match command {
            Command::GetDisplayInfo => {
                let mut modes = [DisplayMode::default(); MAX_SCANOUTS as usize];
                modes[0] = DisplayMode {
                    rect: Rect {
                        x: 0,
                        y: 0,
                        width: self.display.0,
                        height: self.display.1,
                    },
                    enabled: true,
                    flags: 0,
                };
                Ok(Response::DisplayInfo(Box::new(modes)))
            }
            Command::GetCapsetInfo { capset_index: 0 } => Ok(Response::CapsetInfo {
                capset_id: CAPSET_COMPOSE,
                max_version: CAPSET_COMPOSE_VERSION,
                max_size: 4,
            }),
            Command::GetCapsetInfo { .. } => Err(resp::ERR_INVALID_PARAMETER),
            Command::GetCapset {
                capset_id: CAPSET_COMPOSE,
                capset_version: CAPSET_COMPOSE_VERSION,
            } => Ok(Response::Capset(
                CAPSET_COMPOSE_VERSION.to_le_bytes().to_vec(),
            )),
            Command::GetCapset { .. } => Err(resp::ERR_INVALID_PARAMETER),
            Command::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => {
                if self.resources.contains_key(&resource_id) {
                    return Err(resp::ERR_INVALID_RESOURCE_ID);
                }
                if self.resources.len() >= MAX_RESOURCES {
                    return Err(resp::ERR_OUT_OF_MEMORY);
                }
                let bytes =
                    u64::from(width) * u64::from(height) * u64::from(Format::BYTES_PER_PIXEL);
                let (storage, charged) = self.allocate(bytes)?;
                self.resources.insert(
                    resource_id,
                    Resource {
                        format,
                        width,
                        height,
                        storage,
                        charged,
                        backing: Vec::new(),
                    },
                );
                Ok(Response::NoData)
            }
            Command::ResourceUnref { resource_id } => {
                let resource = self
                    .resources
                    .remove(&resource_id)
                    .ok_or(resp::ERR_INVALID_RESOURCE_ID)?;
                self.ledger.release(&self.desktop, resource.charged);
                for scanout in &mut self.scanouts {
                    if scanout.is_some_and(|(id, _)| id == resource_id) {
                        *scanout = None;
                    }
                }
                if self
                    .frame
                    .as_ref()
                    .is_some_and(|f| f.resource_id == resource_id)
                {
                    self.drop_frame();
                }
                Ok(Response::NoData)
            }
            Command::ResourceAttachBacking {
                resource_id,
                entries,
            } => {
                let resource = self.resource(resource_id)?;
                if !resource.backing.is_empty() {
                    return Err(resp::ERR_INVALID_PARAMETER);
                }
                let backing = entries
                    .iter()
                    .zip(&fds)
                    .map(|(entry, fd)| map_entry(fd, entry))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| resp::ERR_INVALID_PARAMETER)?;
                resource.backing = backing;
                Ok(Response::NoData)
            }
            Command::ResourceDetachBacking { resource_id } => {
                let resource = self.resource(resource_id)?;
                if resource.backing.is_empty() {
                    return Err(resp::ERR_INVALID_PARAMETER);
                }
                resource.backing.clear();
                Ok(Response::NoData)
            }
            Command::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => {
                let resource = self.resource(resource_id)?;
                if !rect.within(resource.width, resource.height) || resource.backing.is_empty() {
                    return Err(resp::ERR_INVALID_PARAMETER);
                }
                transfer(resource, rect, offset)?;
                Ok(Response::NoData)
            }
            Command::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => {
                if scanout_id != 0 {
                    // One display per desktop.
                    return Err(resp::ERR_INVALID_SCANOUT_ID);
                }
                if resource_id == 0 {
                    self.scanouts[0] = None;
                    self.drop_frame();
                    return Ok(Response::NoData);
                }
                let resource = self.resource(resource_id)?;
                if !rect.within(resource.width, resource.height) {
                    return Err(resp::ERR_INVALID_PARAMETER);
                }
                self.scanouts[0] = Some((resource_id, rect));
                // No room for the frame's planes: the scanout stays off.
                if let Err(code) = self.set_frame() {
                    self.scanouts[0] = None;
                    self.drop_frame();
                    return Err(code);
                }
                Ok(Response::NoData)
            }
            Command::ResourceFlush { rect, resource_id } => {
                let resource = self.resource(resource_id)?;
                if !rect.within(resource.width, resource.height) {
                    return Err(resp::ERR_INVALID_PARAMETER);
                }
                // Flushing the scanout's resource makes a new frame of the
                // flushed part.
                if let Some((id, scanout)) = self.scanouts[0] {
                    let (x0, y0) = (rect.x.max(scanout.x), rect.y.max(scanout.y));
                    let x1 = (rect.x + rect.width).min(scanout.x + scanout.width);
                    let y1 = (rect.y + rect.height).min(scanout.y + scanout.height);
                    if id == resource_id && x0 < x1 && y0 < y1 {
                        self.flushed((
                            x0 - scanout.x,
                            y0 - scanout.y,
                            x1 - scanout.x,
                            y1 - scanout.y,
                        ));
                    }
                }
                Ok(Response::NoData)
            }
            Command::CtxCreate {
                debug_name,
                context_init,
            } => {
                // Only our composition context type exists.
                if context_init != CAPSET_COMPOSE {
                    return Err(resp::ERR_INVALID_PARAMETER);
                }
                if self.contexts.contains_key(&header.ctx_id) {
                    return Err(resp::ERR_INVALID_CONTEXT_ID);
                }
                if self.contexts.len() >= MAX_CONTEXTS {
                    return Err(resp::ERR_OUT_OF_MEMORY);
                }
                self.contexts.insert(header.ctx_id, debug_name);
                Ok(Response::NoData)
            }
            Command::CtxDestroy => self
                .contexts
                .remove(&header.ctx_id)
                .map(|_| Response::NoData)
                .ok_or(resp::ERR_INVALID_CONTEXT_ID),
            Command::CtxAttachResource { resource_id }
            | Command::CtxDetachResource { resource_id } => {
                if !self.contexts.contains_key(&header.ctx_id) {
                    return Err(resp::ERR_INVALID_CONTEXT_ID);
                }
                self.resource(resource_id)?;
                Ok(Response::NoData)
            }
            Command::Submit3d { commands } => {
                if !self.contexts.contains_key(&header.ctx_id) {
                    return Err(resp::ERR_INVALID_CONTEXT_ID);
                }
                let list =
                    CompositionList::decode(&commands).map_err(|_| resp::ERR_INVALID_PARAMETER)?;
                self.compose(&list)?;
                Ok(Response::NoData)
            }
            // Not built yet: blob resources (no dma-buf on lavapipe). Said
            // plainly, with the spec's answer.
            Command::ResourceCreateBlob { .. } => Err(resp::ERR_UNSPEC),
        }
    }
}

/// Copies `rect` of the guest's backing (rows of the resource's stride,
/// starting `offset` bytes in) into the resource's host pixels.
fn transfer(resource: &mut Resource, rect: Rect, offset: u64) -> Result<(), u32> {
    let stride = resource.stride();
    let bpp = Format::BYTES_PER_PIXEL as usize;
    let row_bytes = rect.width as usize * bpp;
    // The backing as one logical byte range: entries in order.
    let total: usize = resource.backing.iter().map(|b| b.len).sum();
    for row in 0..rect.height as usize {
        let source = (offset as usize)
            .checked_add(row * stride)
            .ok_or(resp::ERR_INVALID_PARAMETER)?;
        let end = source
            .checked_add(row_bytes)
            .filter(|end| *end <= total)
            .ok_or(resp::ERR_INVALID_PARAMETER)?;
        let target = (rect.y as usize + row) * stride + rect.x as usize * bpp;
        copy_from_backing(
            &resource.backing,
            source,
            &mut resource.storage.bytes_mut()[target..target + (end - source)],
        );
    }
    Ok(())
}

/// Copies `out.len()` bytes starting `start` bytes into the concatenated
/// backing entries (the caller checked the range).
fn copy_from_backing(backing: &[Backing], mut start: usize, out: &mut [u8]) {
    let mut written = 0;
    for entry in backing {
        let bytes = entry.bytes();
        if start >= bytes.len() {
            start -= bytes.len();
            continue;
        }
        let take = (bytes.len() - start).min(out.len() - written);
        out[written..written + take].copy_from_slice(&bytes[start..start + take]);
        written += take;
        start = 0;
        if written == out.len() {
            return;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let held = self.charged();
        self.ledger.release(&self.desktop, held);
        self.resources.clear();
        self.frame = None;
        self.ledger.close(&self.desktop);
    }
}
