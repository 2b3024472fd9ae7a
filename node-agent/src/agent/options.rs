//! What a node agent is told: the command line's options as one struct,
//! with the defaults `flotilla node-agent` documents.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Control-plane servers, `HOST:PORT`; any one will do.
    pub servers: Vec<String>,
    /// A node-join token.
    pub token: String,
    pub name: String,
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Overrides of what the host probes find (tests, simulations).
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub desktop_slots: u32,
    /// Held back for the host itself.
    pub reserve_cpu_millis: u64,
    pub reserve_memory_bytes: u64,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// What each desktop runs under the process runtime.
    pub desktop_command: Vec<String>,
    /// Enumerate GPUs with Vulkan.
    pub gpus: bool,
    /// Run gpud: serve every desktop a virtio-gpu socket on the host's
    /// GPUs (the CPU renders where there are none).
    pub gpud: bool,
    /// The GPU-memory budget of a desktop that asked for none (its
    /// display: scanout, frame, windows).
    pub display_gpu_memory: u64,
    /// The display size gpud offers each desktop.
    pub display_size: (u32, u32),
    /// Run each sandboxed desktop's session (compositor + apps; the
    /// default) instead of `desktop_command`.
    pub desktop_session: bool,
    /// The session's apps (program and arguments, split at spaces).
    pub desktop_apps: Vec<String>,
    /// The desktops' keyboard: xkb layout and variant (empty: us).
    pub desktop_keyboard: (String, String),
    /// Limit each desktop with a cgroup (needs root and cgroup controllers).
    pub cgroups: bool,
    /// Most processes in one desktop.
    pub pids_limit: u64,
    /// Run desktops in namespace sandboxes (needs root); otherwise plain
    /// child processes.
    pub sandbox: bool,
    /// Give sandboxes a network (veth, NAT, egress policies); `None`: each
    /// has loopback only. Empty `control_plane` means the `--join`
    /// addresses' desktop doors (port + 1).
    pub network: Option<crate::sandbox::net::NetworkSettings>,
    /// On shutdown leave sandboxes running for the next run to adopt.
    pub leave_desktops_running: bool,
    /// A directory whose `usr/` is layered over the host's `/usr` in every
    /// sandbox.
    pub base_image: Option<PathBuf>,
    /// Host character devices granted to every desktop.
    pub devices: Vec<PathBuf>,
    /// Keep each destroyed desktop's home and workspace under
    /// `<data>/kept/` instead of removing them.
    pub keep_desktop_files: bool,
    /// On shutdown also remove the desktop bridge and nftables table
    /// (`flotilla dev`, which leaves nothing on the host); a node agent
    /// keeps them for the desktops of its next run.
    pub remove_network_on_exit: bool,
}

impl AgentOptions {
    pub fn new(servers: Vec<String>, token: String, name: String, data_dir: PathBuf) -> Self {
        AgentOptions {
            servers,
            token,
            name,
            data_dir,
            labels: BTreeMap::new(),
            cpu_millis: None,
            memory_bytes: None,
            desktop_slots: 16,
            reserve_cpu_millis: 250,
            reserve_memory_bytes: 1 << 30,
            stop_grace: Duration::from_secs(10),
            desktop_command: vec!["sleep".to_owned(), "infinity".to_owned()],
            gpus: true,
            gpud: true,
            display_gpu_memory: 64 << 20,
            display_size: (1280, 800),
            desktop_session: true,
            desktop_keyboard: (String::new(), String::new()),
            desktop_apps: vec![
                "foot".to_owned(),
                // The sandbox is the desktop's; `--test-type` drops the
                // --no-sandbox warning bar; a blank local start page and no
                // background requests (sync, component updates, the
                // search engine's new-tab page) until someone browses.
                [
                    "chromium --ozone-platform=wayland --no-sandbox --test-type",
                    "--no-first-run --no-default-browser-check --disable-sync",
                    "--disable-background-networking --disable-component-update",
                    "--disable-default-apps --homepage=about:blank about:blank",
                ]
                .join(" "),
            ],
            cgroups: true,
            pids_limit: 4096,
            sandbox: true,
            network: Some(crate::sandbox::net::NetworkSettings::default()),
            leave_desktops_running: false,
            remove_network_on_exit: false,
            base_image: None,
            devices: Vec::new(),
            keep_desktop_files: false,
        }
    }
}
