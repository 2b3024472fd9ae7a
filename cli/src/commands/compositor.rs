//! `flotilla compositor` and the hidden `flotilla desktop-session`: what
//! runs inside a desktop's sandbox. Both run their own single-threaded event
//! loops, so `main` calls them before any async runtime exists, and they
//! answer with an exit code rather than an error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct CompositorArgs {
    /// gpud's socket for this desktop.
    #[arg(long, env = "FLOTILLA_GPU_SOCKET")]
    gpu_socket: PathBuf,
    /// The Wayland socket's name in $XDG_RUNTIME_DIR (WAYLAND_DISPLAY).
    #[arg(long, default_value = "wayland-1")]
    socket_name: String,
    /// Output refresh rate in Hz.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=240))]
    refresh: u32,
    /// The control socket (input, windows, focus) for the node agent.
    #[arg(long)]
    control: Option<PathBuf>,
    /// How toplevels share the output.
    #[arg(long, value_enum, default_value_t = LayoutArg::Maximized)]
    layout: LayoutArg,
    /// The keyboard's xkb layout (us, de, fr, ...; empty: us).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_layout: String,
    /// The xkb layout's variant (dvorak, nodeadkeys, ...; empty: none).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_variant: String,
}

#[derive(Args)]
pub struct DesktopSessionArgs {
    /// gpud's socket for this desktop.
    #[arg(long, env = "FLOTILLA_GPU_SOCKET")]
    gpu_socket: PathBuf,
    /// An app to run (program and arguments, split at spaces); repeatable.
    #[arg(long = "app")]
    apps: Vec<String>,
    /// How the apps' windows share the output.
    #[arg(long, value_enum, default_value_t = LayoutArg::Tiled)]
    layout: LayoutArg,
    /// The keyboard's xkb layout (us, de, fr, ...; empty: us).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_layout: String,
    /// The xkb layout's variant (dvorak, nodeadkeys, ...; empty: none).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_variant: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LayoutArg {
    /// Every window fills the output.
    Maximized,
    /// Side by side when there are two (the oldest on the left).
    Tiled,
}

impl From<LayoutArg> for flotilla_compositor::Layout {
    fn from(layout: LayoutArg) -> Self {
        match layout {
            LayoutArg::Maximized => flotilla_compositor::Layout::Maximized,
            LayoutArg::Tiled => flotilla_compositor::Layout::Tiled,
        }
    }
}

/// `flotilla compositor`: 2 for bad arguments, 1 when the compositor fails.
pub fn run_compositor(args: &CompositorArgs) -> ExitCode {
    if args.socket_name.is_empty() || args.socket_name.contains('/') || args.socket_name.len() > 64
    {
        eprintln!("error: --socket-name must be a plain name (e.g. wayland-1)");
        return ExitCode::from(2);
    }
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        eprintln!("error: XDG_RUNTIME_DIR is not set (the Wayland socket lives there)");
        return ExitCode::from(2);
    }
    let options = flotilla_compositor::Options {
        socket_name: args.socket_name.clone(),
        gpu_socket: args.gpu_socket.clone(),
        refresh_mhz: args.refresh * 1000,
        control: args.control.clone(),
        layout: args.layout.into(),
        keyboard_layout: args.keyboard_layout.clone(),
        keyboard_variant: args.keyboard_variant.clone(),
    };
    match flotilla_compositor::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("compositor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `flotilla desktop-session`: the session's own exit status.
pub fn run_desktop_session(args: &DesktopSessionArgs) -> ExitCode {
    let options = flotilla_compositor::session::SessionOptions {
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("flotilla")),
        gpu_socket: args.gpu_socket.clone(),
        apps: args
            .apps
            .iter()
            .map(|app| app.split_whitespace().map(str::to_owned).collect())
            .collect(),
        layout: match args.layout {
            LayoutArg::Maximized => "maximized",
            LayoutArg::Tiled => "tiled",
        },
        keyboard_layout: args.keyboard_layout.clone(),
        keyboard_variant: args.keyboard_variant.clone(),
    };
    let status = flotilla_compositor::session::run(&options);
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
