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
//!
//! Children by concern: `ledger` (the charge), `dispatch` (each
//! command checked and executed), `backing` (guest memory and transfers),
//! `draw` (SUBMIT_3D's compositions), `frame` (the scanout's I420).

mod backing;
mod dispatch;
mod draw;
mod frame;
mod ledger;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use backing::Backing;
use frame::Frame;
pub use ledger::{Account, Ledger};

use crate::protocol::{self, decode, encode, resp, Format, Rect, Response, MAX_SCANOUTS};
use crate::render::{GpuBuffer, Renderer};

/// Our capset: the composition context type (see the crate docs).
pub const CAPSET_COMPOSE: u32 = 0x4643;
pub const CAPSET_COMPOSE_VERSION: u32 = 2;

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
/// Most backing entries (each its own mapping in the node agent) one guest
/// may have mapped at once, over all its resources: the agent's
/// `vm.max_map_count` (65,530 by default) is shared by every desktop.
pub const MAX_MAPPINGS: usize = 1024;

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
