//! gpud as the node agent runs it: every GPU of the host opened once
//! ([`Device`] + [`Renderer`] + a [`Ledger`]), and one socket per desktop
//! ([`GpuService::attach`]) through which that desktop — and only it —
//! reaches its GPU.
//!
//! A host with no usable Vulkan device still serves desktops: its one
//! entry renders with the CPU reference (same protocol, same bytes), and
//! says so in its report.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::device::{Capabilities, Device, Selector};
use crate::enumerate::GpuInfo;
use crate::render::Renderer;
use crate::server::Gpud;
use crate::session::{Account, Session};

/// The socket's name in a desktop's GPU directory.
pub const SOCKET_NAME: &str = "gpu.sock";

/// One GPU gpud serves (or the CPU, on a host without one).
pub struct ServedGpu {
    /// The GPU as enumerated; None for the CPU entry of a GPU-less host.
    pub info: Option<GpuInfo>,
    /// None: it could not be opened, and the CPU reference renders for
    /// the desktops placed on it.
    pub capabilities: Option<Capabilities>,
    pub gpud: Gpud,
}

/// What `flotilla gpu info` shows for one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuReport {
    pub index: u32,
    pub info: Option<GpuInfo>,
    /// None when the CPU renders.
    pub capabilities: Option<Capabilities>,
    /// Every attached desktop: its charge now and its budget.
    pub desktops: Vec<(String, Account)>,
}

/// Attached desktops: GPU index and budget.
type Attached = Arc<Mutex<BTreeMap<String, (u32, u64)>>>;

/// The sessions being served, by desktop.
type Live = Arc<Mutex<BTreeMap<String, Arc<Mutex<Session>>>>>;

/// Counts new frames of any desktop; waiters are woken at each.
type FrameSignal = Arc<(Mutex<u64>, std::sync::Condvar)>;

/// A desktop's current frame as I420.
#[derive(Debug, Clone)]
pub struct I420Frame {
    pub width: u32,
    pub height: u32,
    /// gpud's frame number: a new value is a new picture.
    pub sequence: u64,
    pub data: Vec<u8>,
}

pub struct GpuService {
    gpus: Vec<ServedGpu>,
    attached: Attached,
    live: Live,
    frames: FrameSignal,
}

/// A desktop's door to gpud: its listening socket and the connection it
/// is serving. Dropping it closes both (the session frees everything) and
/// removes the socket file.
pub struct DesktopGpu {
    pub desktop: String,
    pub gpu_index: u32,
    pub socket: PathBuf,
    listener: Arc<OwnedFd>,
    /// The connection being served; None (and no more served) once
    /// closed.
    connection: Arc<Mutex<Connection>>,
    attached: Attached,
    /// The serving thread, joined on drop: what it holds (the session, its
    /// GPU buffers, the renderer) is released before the drop returns.
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Connection {
    current: Option<OwnedFd>,
    closed: bool,
}

impl Drop for DesktopGpu {
    fn drop(&mut self) {
        // SAFETY: shutting down descriptors this value shares ownership
        // of; the serving thread then sees EOF / an accept error and ends.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
            let mut connection = self
                .connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            connection.closed = true;
            if let Some(current) = &connection.current {
                libc::shutdown(current.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        self.attached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.desktop);
    }
}

impl GpuService {
    /// Opens every GPU in `gpus` (the enumeration the agent reported, in
    /// its order, which is how the scheduler numbers them). A GPU that
    /// cannot be opened keeps its place, rendered for by the CPU, with a
    /// warning on stderr. With no GPU at all, one CPU entry serves.
    /// Desktops see `width` × `height`.
    pub fn open(gpus: &[GpuInfo], width: u32, height: u32) -> GpuService {
        let mut served = Vec::new();
        for gpu in gpus {
            let opened = Device::open(&Selector::Uuid(gpu.uuid.clone()))
                .and_then(|device| Renderer::new(Arc::new(device)));
            let (capabilities, renderer) = match opened {
                Ok(renderer) => (
                    Some(renderer.device().capabilities().clone()),
                    Some(Arc::new(renderer)),
                ),
                Err(error) => {
                    eprintln!(
                        "gpud: cannot open GPU {} ({}), the CPU renders for its desktops: {error}",
                        gpu.index, gpu.name
                    );
                    (None, None)
                }
            };
            served.push(ServedGpu {
                info: Some(gpu.clone()),
                capabilities,
                gpud: Gpud::with_renderer(width, height, renderer),
            });
        }
        if served.is_empty() {
            served.push(ServedGpu {
                info: None,
                capabilities: None,
                gpud: Gpud::new(width, height),
            });
        }
        GpuService {
            gpus: served,
            attached: Attached::default(),
            live: Live::default(),
            frames: FrameSignal::default(),
        }
    }

    /// A service that renders on the CPU only.
    pub fn cpu(width: u32, height: u32) -> GpuService {
        GpuService::open(&[], width, height)
    }

    /// Whether any GPU renders (else the CPU reference does).
    pub fn on_gpu(&self) -> bool {
        self.gpus.iter().any(|gpu| gpu.capabilities.is_some())
    }

    pub fn gpus(&self) -> &[ServedGpu] {
        &self.gpus
    }

    /// Serves desktop `desktop` on GPU `gpu_index` (the scheduler's
    /// choice; GPU 0 when it chose none) with a `budget_bytes` budget, at
    /// `dir`/gpu.sock. `dir` is created (mode 0700) and it and the socket
    /// are given to `owner` (host uid, gid), the desktop's user, so that
    /// only the desktop can connect. A socket left by an earlier agent is
    /// replaced. One connection at a time; a new one replaces nothing
    /// until the current one ends.
    pub fn attach(
        &self,
        desktop: &str,
        gpu_index: Option<u32>,
        budget_bytes: u64,
        dir: &Path,
        owner: Option<(u32, u32)>,
    ) -> io::Result<DesktopGpu> {
        let index = gpu_index.unwrap_or(0);
        let served = self.gpus.get(index as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{desktop} was placed on GPU {index}; gpud serves {}",
                    self.gpus.len()
                ),
            )
        })?;
        let listener = bind_socket(dir, owner)?;
        let socket = dir.join(SOCKET_NAME);
        let listener_fd = Arc::new(OwnedFd::from(listener.try_clone()?));
        let connection: Arc<Mutex<Connection>> = Arc::default();
        let gpud = served.gpud.clone();
        let desktop_name = desktop.to_owned();
        let current = connection.clone();
        let live = self.live.clone();
        let frames = self.frames.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gpud-{desktop}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else {
                        return;
                    };
                    let Ok(copy) = stream.try_clone() else {
                        continue;
                    };
                    {
                        let mut connection = current.lock().unwrap_or_else(|p| p.into_inner());
                        if connection.closed {
                            return;
                        }
                        connection.current = Some(copy.into());
                    }
                    let session = Arc::new(Mutex::new(gpud.session(&desktop_name, budget_bytes)));
                    live.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(desktop_name.clone(), session.clone());
                    crate::server::serve_session(&stream, &session, &|| {
                        let (count, woken) = &*frames;
                        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                        woken.notify_all();
                    });
                    live.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&desktop_name);
                    drop(session);
                    current.lock().unwrap_or_else(|p| p.into_inner()).current = None;
                }
            })?;
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(desktop.to_owned(), (index, budget_bytes));
        Ok(DesktopGpu {
            desktop: desktop.to_owned(),
            gpu_index: index,
            socket,
            listener: listener_fd,
            connection,
            attached: self.attached.clone(),
            thread: Some(thread),
        })
    }

    /// What `desktop`'s scanout shows now: width, height and BGRA pixels
    /// (None before its guest set a scanout).
    pub fn scanout(&self, desktop: &str) -> Option<(u32, u32, Vec<u8>)> {
        let session = self.session(desktop)?;
        let session = session.lock().unwrap_or_else(|p| p.into_inner());
        session.scanout_bgra()
    }

    fn session(&self, desktop: &str) -> Option<Arc<Mutex<Session>>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(desktop)
            .cloned()
    }

    /// `desktop`'s current frame as I420 (None before its guest set a
    /// scanout, or for an odd-sized one); its flushed parts are converted
    /// now (see `Session::frame`).
    pub fn frame(&self, desktop: &str) -> Option<I420Frame> {
        let session = self.session(desktop)?;
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, width, height, sequence) = session.frame()?;
        if width % 2 != 0 || height % 2 != 0 {
            return None;
        }
        Some(I420Frame {
            width,
            height,
            sequence,
            data: bytes.to_vec(),
        })
    }

    /// Waits up to `timeout` for `desktop` to show a frame other than
    /// number `after`; returns it (None on timeout or without a frame).
    pub fn next_frame(
        &self,
        desktop: &str,
        after: Option<u64>,
        timeout: std::time::Duration,
    ) -> Option<I420Frame> {
        // Only a new frame is read (and so converted and copied).
        self.wait_for_sequence(desktop, after, timeout, |_| self.frame(desktop))
    }

    /// Waits up to `timeout` for `desktop`'s frame number to be other
    /// than `after` and returns it, reading (converting) nothing: gpud's
    /// frame signal for whoever looks at the scanout instead (tests).
    pub fn wait_for_frame(
        &self,
        desktop: &str,
        after: Option<u64>,
        timeout: std::time::Duration,
    ) -> Option<u64> {
        self.wait_for_sequence(desktop, after, timeout, Some)
    }

    /// Waits on the frame signal until `desktop`'s frame number is other
    /// than `after` and `read` of it gives something, or `timeout` ends.
    fn wait_for_sequence<T>(
        &self,
        desktop: &str,
        after: Option<u64>,
        timeout: std::time::Duration,
        mut read: impl FnMut(u64) -> Option<T>,
    ) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        let (count, woken) = &*self.frames;
        loop {
            let seen = *count.lock().unwrap_or_else(|p| p.into_inner());
            let sequence = self.session(desktop).and_then(|session| {
                session
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .frame_sequence()
            });
            if let Some(sequence) = sequence.filter(|sequence| Some(*sequence) != after) {
                if let Some(value) = read(sequence) {
                    return Some(value);
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let guard = count.lock().unwrap_or_else(|p| p.into_inner());
            if *guard == seen {
                let _ = woken.wait_timeout(guard, deadline - now);
            }
        }
    }

    /// `desktop`'s account: (GPU index, charged now, budget).
    pub fn account(&self, desktop: &str) -> Option<(u32, Account)> {
        let (index, budget_bytes) = *self
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(desktop)?;
        let charged_bytes = self.gpus[index as usize]
            .gpud
            .ledger
            .accounts()
            .get(desktop)
            .map_or(0, |account| account.charged_bytes);
        Some((
            index,
            Account {
                charged_bytes,
                budget_bytes,
            },
        ))
    }

    /// Every GPU with its attached desktops' charges and budgets.
    pub fn report(&self) -> Vec<GpuReport> {
        let attached = self
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.gpus
            .iter()
            .enumerate()
            .map(|(index, gpu)| {
                let accounts = gpu.gpud.ledger.accounts();
                GpuReport {
                    index: index as u32,
                    info: gpu.info.clone(),
                    capabilities: gpu.capabilities.clone(),
                    desktops: attached
                        .iter()
                        .filter(|(_, (gpu, _))| *gpu == index as u32)
                        .map(|(desktop, (_, budget_bytes))| {
                            let charged_bytes =
                                accounts.get(desktop).map_or(0, |a| a.charged_bytes);
                            (
                                desktop.clone(),
                                Account {
                                    charged_bytes,
                                    budget_bytes: *budget_bytes,
                                },
                            )
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// Binds `dir`/gpu.sock for the desktop `owner` (host uid, gid). The
/// desktop can write `dir` (its compositor's socket is there) and may have
/// planted anything at that name, so nothing is done by path inside it: the
/// socket is bound, chmodded and chowned in a root-only staging directory
/// beside `dir`, then renamed over the name (a rename replaces a symlink,
/// it does not follow it). `dir` itself must be a directory, not a link.
fn bind_socket(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<UnixListener> {
    use std::os::unix::fs::{lchown, DirBuilderExt};
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Err(error) => return Err(error),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = dir.with_file_name(format!(".{name}.staging"));
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join(SOCKET_NAME);
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            lchown(&staged, Some(uid), Some(gid))?;
            lchown(dir, Some(uid), Some(gid))?;
        }
        std::fs::rename(&staged, dir.join(SOCKET_NAME))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}
