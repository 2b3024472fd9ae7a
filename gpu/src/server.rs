//! gpud's socket side: one listening Unix socket per desktop (the node
//! agent binds it into that desktop's sandbox), so a guest's identity is
//! the socket it reached, never something it claims. Each connection is a
//! [`Session`]; a frame the wire cannot carry (too long, too many
//! descriptors, cut off) closes the connection, which frees everything the
//! session held. Other desktops are untouched either way.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use crate::render::Renderer;
use crate::session::{Ledger, Session};
use crate::wire::{read_frame, send_frame};

/// What every session on this gpud shares.
#[derive(Clone)]
pub struct Gpud {
    pub ledger: Arc<Ledger>,
    /// The display size guests are offered.
    pub width: u32,
    pub height: u32,
    /// The GPU sessions render on; None renders on the CPU reference.
    pub renderer: Option<Arc<Renderer>>,
}

impl Gpud {
    /// A gpud that renders on the CPU (no Vulkan device).
    pub fn new(width: u32, height: u32) -> Gpud {
        Gpud::with_renderer(width, height, None)
    }

    pub fn with_renderer(width: u32, height: u32, renderer: Option<Arc<Renderer>>) -> Gpud {
        Gpud {
            ledger: Arc::new(Ledger::default()),
            width,
            height,
            renderer,
        }
    }

    /// Serves desktop `desktop` (GPU-memory budget `budget_bytes`) on
    /// `listener`, one connection at a time, on a thread of its own.
    pub fn serve_desktop(
        &self,
        listener: UnixListener,
        desktop: &str,
        budget_bytes: u64,
    ) -> std::thread::JoinHandle<()> {
        let gpud = self.clone();
        let desktop = desktop.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => gpud.serve_connection(&stream, &desktop, budget_bytes),
                    Err(error) => {
                        eprintln!("gpud: accept for {desktop}: {error}");
                        return;
                    }
                }
            }
        })
    }

    /// A new session for `desktop` on this gpud.
    pub fn session(&self, desktop: &str, budget_bytes: u64) -> Session {
        Session::with_renderer(
            desktop,
            budget_bytes,
            self.ledger.clone(),
            self.width,
            self.height,
            self.renderer.clone(),
        )
    }

    /// Runs one guest connection until it closes or breaks the framing.
    pub fn serve_connection(&self, stream: &UnixStream, desktop: &str, budget_bytes: u64) {
        let session = std::sync::Mutex::new(self.session(desktop, budget_bytes));
        serve_session(stream, &session, &|| {});
    }
}

/// Answers `stream`'s commands with `session` (locked per command, so the
/// node agent can read its frames between them) until the guest closes
/// the connection or breaks the framing.
///
/// `on_frame` runs after a command that made a new frame (the encoder's
/// wake-up).
pub fn serve_session(
    stream: &UnixStream,
    session: &std::sync::Mutex<Session>,
    on_frame: &dyn Fn(),
) {
    let mut sequence = None;
    loop {
        let (bytes, fds) = match read_frame(stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(_) => {
                // SAFETY: shutdown on our own connection.
                unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
                return;
            }
        };
        let (answer, now) = {
            let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
            let answer = session.handle(&bytes, fds);
            (answer, session.frame_sequence())
        };
        if now != sequence {
            sequence = now;
            on_frame();
        }
        if send_frame(stream, &answer, &[]).is_err() {
            return;
        }
    }
}
