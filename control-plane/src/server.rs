//! One control-plane server process: open (or create) the data directory,
//! join or bootstrap the cluster, run Raft, and serve gRPC and HTTP on one
//! port until asked to stop.
//!
//! Start-up, top to bottom:
//! 1. open the data directory, refusing foreign or other nodes' directories;
//! 2. bind the listeners (fail fast if a port is taken): the client port
//!    (gRPC and HTTP) and the desktop door;
//! 3. a new directory becomes a member: `--bootstrap` makes a cluster id,
//!    cluster secret and tokens; `--join` asks the cluster with a server-join
//!    token and receives the cluster id and secret;
//! 4. open the redb log and state machine, start openraft;
//! 5. serve; a bootstrapping server records its token hashes in the state,
//!    a joining server asks to be promoted to voter until it is one.
//!
//! Shutdown (SIGINT/SIGTERM, or the future passed to [`run`]): stop accepting
//! connections, drain in-flight requests, stop Raft, flush the log.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use flotilla_proto::cluster::JoinRequest;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;

use crate::auth::{generate_token, random_hex, sha256_hex, with_bearer};
use crate::control::{cluster_client, ControlPlane};
use crate::datadir::{
    write_secret_file, DataDir, Identity, LOG_FILE, NODE_JOIN_TOKEN_FILE, OPERATOR_TOKEN_FILE,
    SERVER_JOIN_TOKEN_FILE, STATE_FILE,
};
use crate::error::ErrorKind;
use crate::fleet::{Fleet, FleetOptions};
use crate::raft::network::NetworkFactory;
use crate::raft::{LogStore, StateMachineStore};
use crate::tunnel::Tunnels;
use crate::types::{Command, NodeId, TokenKind, TokenRecord};

/// How this server becomes (or stays) a cluster member.
#[derive(Debug, Clone)]
pub enum StartMode {
    /// Start a new single-server cluster (no-op on an initialised directory).
    Bootstrap,
    /// Join the cluster reachable at `seed` with a server-join token.
    Join { seed: String, token: String },
    /// Restart an existing member.
    Existing,
}

/// How long open requests get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Raft timing and compaction.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for lagging followers.
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> RaftTuning {
        RaftTuning {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_every: 20_000,
            keep_logs: 5_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address other servers and clients reach this one at; defaults to the
    /// bound listen address.
    pub advertise: Option<String>,
    /// The desktop door's listener (desktop tokens only); `None`: none.
    pub desktop_listen: Option<SocketAddr>,
    pub start: StartMode,
    pub tuning: RaftTuning,
    pub fleet: FleetOptions,
}

/// A running server: its control plane and bound address.
pub struct RunningServer {
    pub control: Arc<ControlPlane>,
    pub local_addr: SocketAddr,
    /// The desktop door's bound address, if it has one.
    pub desktop_addr: Option<SocketAddr>,
    /// The board's one-time sign-in codes (`flotilla dev` prints one).
    pub logins: Arc<crate::api::http::session::LoginCodes>,
}

/// Where the desktop door listens unless told: the client port + 1 (as
/// Nomad's HTTP, RPC and Serf ports sit side by side).
pub fn default_desktop_listen(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    match listen.port() {
        0 => Ok(SocketAddr::new(listen.ip(), 0)),
        u16::MAX => bail!(
            "--listen {listen} leaves no next port for the desktop door: pass --desktop-listen"
        ),
        port => Ok(SocketAddr::new(listen.ip(), port + 1)),
    }
}

/// Runs a server until `shutdown` resolves. `on_ready` is called once the
/// port is served.
pub async fn run(
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&RunningServer) + Send,
) -> anyhow::Result<()> {
    if options.node_id == 0 {
        bail!("--node-id must be at least 1");
    }
    let mut data_dir =
        DataDir::open(&options.data_dir, options.node_id).context("open the data directory")?;
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listen on {}", options.listen))?;
    let local_addr = listener.local_addr().context("read the bound address")?;
    let desktop_listener =
        match options.desktop_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("listen on {addr} (the desktop door, --desktop-listen)")
            })?),
            None => None,
        };
    let desktop_addr = match &desktop_listener {
        Some(listener) => Some(
            listener
                .local_addr()
                .context("read the desktop door's address")?,
        ),
        None => None,
    };
    let advertise = match &options.advertise {
        Some(advertise) => advertise.clone(),
        None if local_addr.ip().is_unspecified() => {
            bail!("listening on {local_addr} needs --advertise HOST:PORT so other servers can reach this one")
        }
        None => local_addr.to_string(),
    };

    let fresh = data_dir.identity.is_none();
    if fresh {
        let identity = match &options.start {
            StartMode::Bootstrap => {
                write_bootstrap_tokens(&data_dir)?;
                Identity {
                    node_id: options.node_id,
                    cluster_id: uuid::Uuid::new_v4().to_string(),
                    cluster_secret: random_hex(32),
                }
            }
            StartMode::Join { seed, token } => {
                join_cluster(options.node_id, &advertise, seed, token).await?
            }
            StartMode::Existing => bail!(
                "{} is empty: pass --bootstrap to start a new cluster or --join HOST:PORT to join one",
                options.data_dir.display()
            ),
        };
        data_dir
            .initialize(identity)
            .context("initialise the data directory")?;
    }
    let identity = data_dir
        .identity
        .clone()
        .expect("the directory was initialised above");

    let log_store = LogStore::open(&data_dir.file(LOG_FILE)).context("open the raft log")?;
    let state_machine =
        StateMachineStore::open(&data_dir.file(STATE_FILE)).context("open the state machine")?;
    let shared_state = state_machine.shared();
    let config = Config {
        cluster_name: identity.cluster_id.clone(),
        heartbeat_interval: options.tuning.heartbeat_ms,
        election_timeout_min: options.tuning.election_timeout_min_ms,
        election_timeout_max: options.tuning.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(options.tuning.snapshot_every),
        max_in_snapshot_log_to_keep: options.tuning.keep_logs,
        install_snapshot_timeout: 2_000,
        // openraft times an AppendEntries out after one heartbeat interval;
        // a lagging follower must be fed in pieces that fit in it (an entry
        // is at most ~1,024 commands, see the proposer).
        max_payload_entries: 4,
        ..Config::default()
    }
    .validate()
    .context("raft timing options are inconsistent")?;
    let network = NetworkFactory {
        cluster_secret: identity.cluster_secret.clone(),
    };
    let raft = openraft::Raft::new(
        options.node_id,
        Arc::new(config),
        network,
        log_store,
        state_machine,
    )
    .await
    .context("start raft")?;

    if matches!(options.start, StartMode::Bootstrap)
        && !raft.is_initialized().await.context("read raft state")?
    {
        let members = BTreeMap::from([(options.node_id, BasicNode::new(&advertise))]);
        raft.initialize(members)
            .await
            .context("initialise the new cluster")?;
        tracing::info!(cluster_id = %identity.cluster_id, "bootstrapped a new cluster");
    }

    let control = Arc::new(ControlPlane::new(
        options.node_id,
        advertise.clone(),
        identity.cluster_id.clone(),
        identity.cluster_secret.clone(),
        raft.clone(),
        shared_state,
    ));
    let fleet = Arc::new(Fleet::new(
        options.fleet.clone(),
        Duration::from_millis(options.tuning.election_timeout_min_ms),
    ));
    // Node agents' tunnels, shared by the node door (agents open them) and
    // the HTTP door (operators' exec, logs, streams ride them).
    let tunnels = Arc::new(Tunnels::default());

    let mut background = vec![tokio::spawn(crate::fleet::driver::run_leader_loop(
        control.clone(),
        fleet.clone(),
    ))];
    if data_dir.file(OPERATOR_TOKEN_FILE).exists() {
        background.push(tokio::spawn(record_bootstrap_tokens(
            control.clone(),
            data_dir.clone(),
        )));
    }
    if matches!(options.start, StartMode::Join { .. }) {
        background.push(tokio::spawn(promote_until_voter(control.clone())));
    }

    // Hosted git: this server's bare copies follow the committed refs.
    let hosting = crate::hosting::Hosting::start(control.clone(), data_dir.path())
        .await
        .context("start hosted git")?;
    background.push(tokio::spawn(hosting.sync.clone().run()));
    background.push(tokio::spawn(hosting.upstreams.clone().run()));

    let http = crate::api::http::HttpState::new(
        control.clone(),
        fleet.clone(),
        tunnels.clone(),
        hosting.pulls.clone(),
        hosting.upstreams.clone(),
    );
    let app = tonic::service::Routes::new(crate::api::grpc::cluster::raft_service(control.clone()))
        .add_service(crate::api::grpc::cluster::cluster_service(control.clone()))
        .add_service(crate::api::grpc::node::node_service(
            control.clone(),
            fleet.clone(),
            tunnels.clone(),
        ))
        .into_axum_router()
        .merge(crate::api::http::router(http.clone()))
        .merge(hosting.router())
        .fallback(crate::api::http::not_found);

    if let Some(listener) = desktop_listener {
        let gateway = crate::gateway::Gateway::start(
            control.clone(),
            crate::gateway::DEFAULT_CALLS_PER_DESKTOP,
        );
        let door = crate::api::desktop::router(&hosting, &gateway);
        let stopped = control.stopped();
        // Streamed answers go out chunk by chunk, not after Nagle's wait.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        background.push(tokio::spawn(async move {
            let serve = axum::serve(listener, door).with_graceful_shutdown(stopped);
            if let Err(error) = serve.await {
                tracing::error!(%error, "the desktop door stopped serving");
            }
        }));
    }

    let running = RunningServer {
        control: control.clone(),
        local_addr,
        desktop_addr,
        logins: http.logins.clone(),
    };
    tracing::info!(node_id = options.node_id, %local_addr, %advertise, desktop_door = ?desktop_addr, "serving gRPC and HTTP");
    on_ready(&running);
    // Small request/response frames (Raft RPCs, API answers) must not wait
    // on Nagle's algorithm for the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let stopping = control.clone();
    let graceful = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    // Connection info lets the node API record where an agent connects from.
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(graceful);
    let stopped = control.stopped();
    tokio::select! {
        served = serve => served.context("serve")?,
        _ = async {
            stopped.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after shutdown began; closing them"),
    }

    tracing::info!("shutting down");
    for task in background {
        task.abort();
    }
    raft.shutdown()
        .await
        .map_err(|error| anyhow::anyhow!("stop raft: {error}"))?;
    Ok(())
}

/// Creates the bootstrap tokens once (kept if already there).
fn write_bootstrap_tokens(data_dir: &DataDir) -> anyhow::Result<()> {
    for (file, kind) in [
        (OPERATOR_TOKEN_FILE, TokenKind::Operator),
        (SERVER_JOIN_TOKEN_FILE, TokenKind::ServerJoin),
        (NODE_JOIN_TOKEN_FILE, TokenKind::NodeJoin),
    ] {
        let path = data_dir.file(file);
        if !path.exists() {
            write_secret_file(&path, &generate_token(kind))
                .with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(())
}

/// Makes sure the hashes of the tokens in this directory are in the state.
/// Request ids derive from the hash, so repeating this is harmless.
async fn record_bootstrap_tokens(control: Arc<ControlPlane>, data_dir: DataDir) {
    for (file, kind) in [
        (OPERATOR_TOKEN_FILE, TokenKind::Operator),
        (SERVER_JOIN_TOKEN_FILE, TokenKind::ServerJoin),
        (NODE_JOIN_TOKEN_FILE, TokenKind::NodeJoin),
    ] {
        let path = data_dir.file(file);
        let token = match std::fs::read_to_string(&path) {
            Ok(token) => token.trim().to_owned(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read token file");
                continue;
            }
        };
        let sha256_hex = sha256_hex(&token);
        if control
            .state
            .with_state(|state| state.token_kind(&sha256_hex).is_some())
        {
            continue;
        }
        let command = Command::PutToken {
            token: TokenRecord {
                name: file.trim_end_matches(".token").to_owned(),
                kind,
                sha256_hex: sha256_hex.clone(),
            },
        };
        loop {
            let request = control.request(command.clone(), Some(format!("token-{sha256_hex}")));
            match control.write(request).await {
                Ok(_) => break,
                Err(error) => {
                    tracing::debug!(%error, "recording token; will retry");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    tracing::info!("access tokens are recorded in the cluster state");
}

/// Asks the leader for a server-join, answering with the cluster identity.
async fn join_cluster(
    node_id: NodeId,
    advertise: &str,
    seed: &str,
    token: &str,
) -> anyhow::Result<Identity> {
    let mut client = cluster_client(seed).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut last_error = String::new();
    for _ in 0..50 {
        let request = with_bearer(
            JoinRequest {
                node_id,
                addr: advertise.to_owned(),
            },
            token,
        );
        match client.join(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                tracing::info!(cluster_id = %reply.cluster_id, %seed, "joined as a learner");
                return Ok(Identity {
                    node_id,
                    cluster_id: reply.cluster_id,
                    cluster_secret: reply.cluster_secret,
                });
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                ) =>
            {
                last_error = status.message().to_owned();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => bail!(
                "the cluster at {seed} refused to add this server: {}",
                status.message()
            ),
        }
    }
    bail!("could not reach the cluster at {seed} to join it: {last_error}")
}

/// Asks to become a voter until this server is one (or was removed).
async fn promote_until_voter(control: Arc<ControlPlane>) {
    loop {
        match control.promote(control.node_id).await {
            Ok(status) => {
                let is_voter = status
                    .members
                    .iter()
                    .any(|member| member.id == control.node_id && member.role == "voter");
                if is_voter {
                    tracing::info!("promoted to voter");
                    return;
                }
            }
            Err(error) if error.kind == ErrorKind::NotFound => {
                tracing::warn!(%error, "not a member of the cluster; not asking for promotion");
                return;
            }
            Err(error) => tracing::debug!(%error, "not promoted yet"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
