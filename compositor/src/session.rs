//! The desktop session (`flotilla desktop-session`), the command a
//! desktop's sandbox runs: it starts the compositor, waits for its Wayland
//! socket, then starts the desktop's apps (a terminal, a browser, an
//! editor) and restarts any that exit, with a back-off. If the compositor
//! ends, the desktop ends, saying why on its log's last `sandbox:` line
//! (what the node agent reports). SIGTERM ends everything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The compositor's Wayland socket in `$XDG_RUNTIME_DIR` (the apps'
/// `WAYLAND_DISPLAY`).
pub const WAYLAND_SOCKET: &str = "wayland-1";

pub struct SessionOptions {
    /// The `flotilla` binary (it runs the compositor).
    pub exe: PathBuf,
    /// gpud's socket; the control socket goes beside it.
    pub gpu_socket: PathBuf,
    /// Each app's program and arguments.
    pub apps: Vec<Vec<String>>,
    /// The compositor's `--layout`.
    pub layout: &'static str,
    /// The compositor's `--keyboard-layout` and `--keyboard-variant`.
    pub keyboard_layout: String,
    pub keyboard_variant: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct App {
    argv: Vec<String>,
    child: Option<Child>,
    /// When to start it (again).
    start_at: Instant,
    started: Instant,
    backoff: Duration,
}

fn in_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs the session; returns the process's exit status.
pub fn run(options: &SessionOptions) -> i32 {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let Some(runtime_dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) else {
        println!("sandbox: XDG_RUNTIME_DIR is not set; the desktop cannot start");
        return 1;
    };
    let control = options
        .gpu_socket
        .parent()
        .unwrap_or(Path::new("/run/flotilla"))
        .join("control.sock");
    let mut keyboard = Vec::new();
    for (flag, value) in [
        ("--keyboard-layout", &options.keyboard_layout),
        ("--keyboard-variant", &options.keyboard_variant),
    ] {
        if !value.is_empty() {
            keyboard.extend([flag, value.as_str()]);
        }
    }
    let mut compositor = match Command::new(&options.exe)
        .args([
            "compositor",
            "--socket-name",
            WAYLAND_SOCKET,
            "--gpu-socket",
        ])
        .arg(&options.gpu_socket)
        .arg("--control")
        .arg(&control)
        .args(["--layout", options.layout])
        .args(&keyboard)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            println!("sandbox: cannot start the compositor: {error}");
            return 1;
        }
    };
    let socket = runtime_dir.join(WAYLAND_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Ok(Some(status)) = compositor.try_wait() {
            println!("sandbox: the compositor failed to start ({status})");
            return 1;
        }
        if Instant::now() > deadline || STOP.load(Ordering::SeqCst) {
            let _ = compositor.kill();
            println!("sandbox: the compositor did not open its socket in 20 s");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let now = Instant::now();
    let mut apps: Vec<App> = options
        .apps
        .iter()
        .filter(|argv| !argv.is_empty())
        .filter(|argv| {
            let found = in_path(&argv[0]);
            if !found {
                println!("session: {} is not installed; skipped", argv[0]);
            }
            found
        })
        .map(|argv| App {
            argv: argv.clone(),
            child: None,
            start_at: now,
            started: now,
            backoff: Duration::from_secs(1),
        })
        .collect();
    let status = loop {
        if STOP.load(Ordering::SeqCst) {
            break 0;
        }
        if let Ok(Some(status)) = compositor.try_wait() {
            println!("sandbox: the compositor ended ({status}); the desktop stops");
            break 1;
        }
        let now = Instant::now();
        for app in &mut apps {
            if let Some(child) = &mut app.child {
                if let Ok(Some(status)) = child.try_wait() {
                    // Ran a while: start again soon; crashed at once: wait longer.
                    if now - app.started > Duration::from_secs(30) {
                        app.backoff = Duration::from_secs(1);
                    }
                    println!(
                        "session: {} exited ({status}); starting it again in {} s",
                        app.argv[0],
                        app.backoff.as_secs()
                    );
                    app.child = None;
                    app.start_at = now + app.backoff;
                    app.backoff = (app.backoff * 2).min(Duration::from_secs(30));
                }
            }
            if app.child.is_none() && now >= app.start_at {
                let mut command = Command::new(&app.argv[0]);
                if std::env::var_os("LANG").is_none() {
                    command.env("LANG", "C.UTF-8");
                }
                match command
                    .args(&app.argv[1..])
                    .env("WAYLAND_DISPLAY", WAYLAND_SOCKET)
                    .env_remove("DISPLAY")
                    .stdin(Stdio::null())
                    .spawn()
                {
                    Ok(child) => {
                        app.child = Some(child);
                        app.started = now;
                    }
                    Err(error) => {
                        println!("session: cannot start {}: {error}", app.argv[0]);
                        app.start_at = now + app.backoff;
                        app.backoff = (app.backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for app in &mut apps {
        if let Some(child) = &mut app.child {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(compositor.id() as libc::pid_t, libc::SIGTERM) };
    for app in &mut apps {
        if let Some(child) = &mut app.child {
            let _ = child.wait();
        }
    }
    let _ = compositor.wait();
    status
}
