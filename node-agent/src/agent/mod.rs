//! The node agent: it joins the cluster, then runs three loops —
//! heartbeats (which hold the lease), the assignment watch, and the
//! reconciler that makes the runtime match the assignments — plus the
//! operator tunnel, until shutdown stops them and the desktops.
//!
//! Safety rule: desktops run only while the lease is valid — `ttl / 2`
//! after the *sending* of the last heartbeat the leader acknowledged — and
//! only from assignments at least as new as the heartbeat that (re)granted
//! the lease. The leader marks the node down only `ttl` after *receiving*
//! that heartbeat, so by the time a desktop is placed elsewhere this node
//! has stopped it.
//!
//! By phase: [`options`] (what it is told), [`setup`] (the host and the
//! runtime, including re-adoption of sandboxes), [`register`] (joining),
//! [`heartbeat`], [`watch`], [`reconcile`], [`tunnel_loop`]; this module
//! starts them and shuts them down. The loops share [`Shared`] and
//! nothing else; [`servers`] says which server to talk to.

mod heartbeat;
mod options;
mod reconcile;
mod register;
mod servers;
mod setup;
mod tunnel_loop;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_proto::node as pb;
use tokio::sync::Notify;

pub use heartbeat::LEASE_FILE;
pub use options::AgentOptions;
pub use reconcile::Reconciler;

use crate::host::DataDir;
use servers::Servers;

/// How long a failed call waits before it is tried again.
const RETRY: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Lease {
    /// Desktops may run until then.
    until: Option<Instant>,
    /// Assignments older than this revision predate the lease.
    required_revision: u64,
}

struct Received {
    revision: u64,
    desktops: Vec<pb::Assignment>,
}

struct Shared {
    /// Where sandboxes read the lease's deadline (when sandboxed).
    lease_file: Option<PathBuf>,
    node_id: String,
    servers: Servers,
    lease: Mutex<Lease>,
    assignments: Mutex<Option<Received>>,
    report: Mutex<Vec<pb::DesktopStatus>>,
    reconcile_now: Notify,
    heartbeat_now: Notify,
    rewatch: Notify,
}

/// Runs the agent until `shutdown` resolves; then stops every desktop.
pub async fn run(
    options: AgentOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if options.servers.is_empty() {
        bail!("--join needs at least one control-plane address");
    }
    if let Some(image) = &options.base_image {
        crate::sandbox::validate_base_image(image).map_err(anyhow::Error::msg)?;
    }
    for device in &options.devices {
        crate::sandbox::validate_device(device).map_err(anyhow::Error::msg)?;
    }
    // Root sandboxes (host uids of their own) must reach their roots under
    // it: refused here, before anything is made, when they could not.
    let root_sandboxes = options.sandbox && rustix::process::geteuid().is_root();
    crate::preflight::prepare_data_dir(&options.data_dir, root_sandboxes)?;
    let data_dir = DataDir::open(&options.data_dir)?;
    let identity = data_dir.identity(&options.name)?;
    let gpus = setup::enumerate_gpus(&options);
    // gpud: every GPU opened once, shared by this node's desktops.
    let gpu_service = options.gpud.then(|| {
        let (width, height) = options.display_size;
        let service = flotilla_gpu::service::GpuService::open(&gpus, width, height);
        if service.on_gpu() {
            tracing::info!(
                gpus = service.gpus().len(),
                "gpud serves desktops on the host's GPUs"
            );
        } else {
            tracing::warn!("gpud renders on the CPU: no GPU could be opened");
        }
        Arc::new(service)
    });
    let registration = register::registration(
        &options,
        &identity.node_id,
        &data_dir,
        &gpus,
        gpu_service.as_deref(),
    )?;
    tracing::info!(
        node_id = %identity.node_id,
        name = %identity.name,
        cpu_millis = registration.capacity.as_ref().map_or(0, |c| c.cpu_millis),
        memory_bytes = registration.capacity.as_ref().map_or(0, |c| c.memory_bytes),
        gpus = registration.gpus.len(),
        "node agent starting"
    );
    let setup::DesktopSetup {
        runtime,
        sandboxed,
        lease_file,
        network: network_set_up,
    } = setup::desktop_runtime(&options, &data_dir, gpu_service.as_ref())?;
    let shared = Arc::new(Shared {
        lease_file: sandboxed.then(|| lease_file.clone()),
        node_id: identity.node_id.clone(),
        servers: Servers::new(options.servers.clone(), options.token.clone()),
        lease: Mutex::new(Lease::default()),
        assignments: Mutex::new(None),
        report: Mutex::new(Vec::new()),
        reconcile_now: Notify::new(),
        heartbeat_now: Notify::new(),
        rewatch: Notify::new(),
    });
    register::register(&shared, &registration).await?;

    let heartbeats = tokio::spawn(heartbeat::heartbeat_loop(shared.clone(), registration));
    let watch = tokio::spawn(watch::watch_loop(shared.clone()));
    let operator = crate::tunnel::TunnelSettings {
        node_id: identity.node_id.clone(),
        exe: std::env::current_exe().context("find the flotilla binary for sandbox-exec")?,
        desktops_dir: sandboxed.then(|| data_dir.path.join("desktops")),
        gpu: gpu_service.clone(),
    };
    let tunnel = tokio::spawn(tunnel_loop::tunnel_loop(shared.clone(), Arc::new(operator)));
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel();
    let reconciler = tokio::spawn(reconcile::reconcile_loop(
        shared.clone(),
        Box::new(runtime),
        options.stop_grace,
        stop_receiver,
        options.leave_desktops_running,
    ));
    shutdown.await;
    tracing::info!("shutting down: stopping desktops");
    heartbeats.abort();
    watch.abort();
    tunnel.abort();
    let _ = stop_sender.send(());
    let _ = reconciler.await;
    if let (Some(settings), true, false) = (
        &network_set_up,
        options.remove_network_on_exit,
        options.leave_desktops_running,
    ) {
        match crate::sandbox::net::Network::remove_host_setup(settings) {
            Ok(()) => {
                tracing::info!(bridge = %settings.bridge, "removed the desktop bridge and rules")
            }
            Err(error) => tracing::warn!(%error, "cannot remove the desktop bridge and rules"),
        }
    }
    drop(data_dir);
    Ok(())
}
