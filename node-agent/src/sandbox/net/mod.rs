//! Desktop networking: each sandbox gets its own network namespace with
//! loopback and one veth (`eth0`) to a host bridge, NAT for egress, and an
//! egress policy enforced on the host by one nftables table.
//!
//! - **Addresses say the policy.** The node's desktop subnet (a /16,
//!   default `10.88.0.0/16`) is cut into ranges: `none` desktops get
//!   addresses from the first /18, `control-plane` from the second, `open`
//!   from the third. The nftables rules match those ranges, so starting a
//!   desktop changes no rule at all. A desktop cannot change its address:
//!   its network namespace belongs to the host's user namespace, where the
//!   sandbox has no capability.
//! - **Desktops never reach each other**: their bridge ports are isolated
//!   (no frame between two desktops) and the forward chain drops anything
//!   new towards the bridge.
//! - **A pool of ready namespaces.** Creating a network namespace and its
//!   veth is the costly part of a start, so a thread keeps a few ready
//!   (`pool_size`); starting a desktop takes one and gives it an address
//!   and a default route.
//! - **Nothing to leak.** A namespace lives only as long as something holds
//!   it: the pool's file descriptor, then the sandbox's processes. When the
//!   last one goes, the kernel removes the namespace and with it both ends
//!   of its veth. Destroying a desktop deletes the host end as well, which
//!   takes the namespace's interface down at once.
//!
//! The rules are loaded with the `nft` tool (one atomic transaction at
//! start); links, addresses and routes go over rtnetlink ([`super::netlink`]).

//!
//! [`settings`] is the layout and rules (pure), [`pool`] the namespace
//! pool's thread; this module sets the host side up and hands out and
//! releases desktops' networks.

mod pool;
mod settings;

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

use super::netlink::Netlink;
use pool::{make_ready, pool_thread, PoolState, Ready, Shared};
use settings::RANGE_SIZE;

pub use settings::{resolvers, NetworkSettings, OPEN_REFUSED};

/// What a desktop may reach on the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    /// Nothing beyond its own loopback.
    None,
    /// Only the control plane's endpoints that desktops use.
    #[default]
    ControlPlane,
    /// Anything outside the node, through NAT (never other desktops).
    Open,
}

impl Egress {
    pub const ALL: [Egress; 3] = [Egress::None, Egress::ControlPlane, Egress::Open];

    pub fn as_str(self) -> &'static str {
        match self {
            Egress::None => "none",
            Egress::ControlPlane => "control-plane",
            Egress::Open => "open",
        }
    }

    /// Which /18 of the desktop subnet this policy's addresses come from.
    fn range(self) -> u32 {
        match self {
            Egress::None => 0,
            Egress::ControlPlane => 1,
            Egress::Open => 2,
        }
    }
}

/// An egress policy name that is none of ours (from an assignment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown egress policy {0:?} (expected none, control-plane or open)")]
pub struct UnknownEgress(pub String);

impl std::str::FromStr for Egress {
    type Err = UnknownEgress;

    fn from_str(text: &str) -> Result<Egress, UnknownEgress> {
        match text {
            "none" => Ok(Egress::None),
            "control-plane" | "" => Ok(Egress::ControlPlane),
            "open" => Ok(Egress::Open),
            other => Err(UnknownEgress(other.to_owned())),
        }
    }
}

/// Why the desktop network (or one desktop's part of it) could not be set
/// up. Whatever the failing step had made is undone first.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("bridge name {0:?} must be 1–15 bytes")]
    BridgeName(String),
    #[error("veth prefix {0:?} must be 1–5 bytes")]
    VethPrefix(String),
    #[error("bridge, veth prefix and nft table names take [A-Za-z0-9_-]")]
    BadName,
    #[error("desktop subnet {0} must be a /16")]
    Subnet(Ipv4Addr),
    #[error("cannot run nft ({source}): install nftables (apt-get install -y nftables)")]
    NftMissing {
        #[source]
        source: std::io::Error,
    },
    #[error("write to nft: {source}")]
    NftWrite {
        #[source]
        source: std::io::Error,
    },
    #[error("wait for nft: {source}")]
    NftWait {
        #[source]
        source: std::io::Error,
    },
    #[error("nft refused the rules: {stderr}")]
    NftRefused { stderr: String },
    /// An rtnetlink step on the host or inside a namespace (`create bridge
    /// flotilla0`, `find lo`, `wire veth flv3`, ...), named in the message.
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Sysctl {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Namespace {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("start the {thread}: {source}")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the namespace thread panicked")]
    ThreadPanicked,
    #[error("no free desktop address")]
    NoFreeAddress,
}

/// A failed rtnetlink step, named.
fn netlink(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let step = step.into();
    move |source| NetworkError::Netlink { step, source }
}

fn nft(script: &str) -> Result<(), NetworkError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetworkError::NftMissing { source })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|source| NetworkError::NftWrite { source })?;
    let output = child
        .wait_with_output()
        .map_err(|source| NetworkError::NftWait { source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::NftRefused {
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

/// One desktop's network, handed to its sandbox.
#[derive(Debug)]
pub struct DesktopNet {
    /// The namespace; the sandbox enters it. Dropped after the sandbox
    /// started (its processes hold it from then on).
    pub netns: Option<OwnedFd>,
    pub host_veth: String,
    pub address: Ipv4Addr,
    pub egress: Egress,
}

/// What a desktop's network is, as written to its state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    pub host_veth: String,
    pub address: Ipv4Addr,
    pub egress: Egress,
}

impl DesktopNet {
    pub fn record(&self) -> NetRecord {
        NetRecord {
            host_veth: self.host_veth.clone(),
            address: self.address,
            egress: self.egress,
        }
    }
}

/// Addresses in use, per policy range; shared with the release thread,
/// which frees an address only once its veth is gone.
type Used = Arc<Mutex<[BTreeSet<u32>; 3]>>;

/// The node's desktop network: bridge, rules, namespace pool, addresses.
pub struct Network {
    settings: NetworkSettings,
    bridge_index: i32,
    shared: Arc<Shared>,
    pool: Option<std::thread::JoinHandle<()>>,
    used: Used,
    /// Veths to delete. Deleting one waits for the kernel's RTNL lock and
    /// an RCU grace period (~30 ms measured), so it happens on a thread of
    /// its own, never on the reconcile path.
    releases: Option<std::sync::mpsc::Sender<Release>>,
    releaser: Option<std::thread::JoinHandle<()>>,
}

/// A veth to delete, and the address to free once it is gone.
struct Release {
    host_veth: String,
    address: Option<(Egress, u32)>,
}

fn release_thread(releases: std::sync::mpsc::Receiver<Release>, used: Used) {
    let mut host = match Netlink::open() {
        Ok(host) => Some(host),
        Err(error) => {
            tracing::warn!(%error, "cannot open rtnetlink to delete veths: the kernel removes each with its namespace");
            None
        }
    };
    for release in releases {
        if let Some(host) = &mut host {
            if let Err(error) = host.delete(&release.host_veth) {
                tracing::warn!(veth = %release.host_veth, %error, "cannot delete a desktop's veth");
            }
        }
        if let Some((egress, n)) = release.address {
            used.lock().unwrap()[egress.range() as usize].remove(&n);
        }
    }
}

impl Network {
    /// Sets the host side up (bridge with the gateway address, forwarding,
    /// the nftables table) and starts the pool. `keep` lists the networks
    /// of desktops re-adopted after a restart; every other veth with the
    /// node's prefix is deleted.
    pub fn start(settings: NetworkSettings, keep: &[NetRecord]) -> Result<Network, NetworkError> {
        settings.validate()?;
        let mut host = Netlink::open().map_err(netlink("open rtnetlink"))?;
        host.create_bridge(&settings.bridge)
            .map_err(netlink(format!("create bridge {}", settings.bridge)))?;
        let bridge_index = host
            .index(&settings.bridge)
            .map_err(netlink(format!("find bridge {}", settings.bridge)))?;
        host.add_address(bridge_index, settings.gateway(), 16)
            .map_err(netlink(format!("address bridge {}", settings.bridge)))?;
        host.set_up(bridge_index)
            .map_err(netlink(format!("bring bridge {} up", settings.bridge)))?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
            NetworkError::Sysctl {
                step: "enable IPv4 forwarding",
                source,
            }
        })?;
        if settings
            .control_plane
            .iter()
            .any(|endpoint| endpoint.ip().is_loopback())
        {
            write_sysctl(
                &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", settings.bridge),
                "1",
            )
            .map_err(|source| NetworkError::Sysctl {
                step: "let desktops reach the loopback control plane",
                source,
            })?;
        }
        nft(&settings.ruleset())?;
        let kept: BTreeSet<&str> = keep.iter().map(|r| r.host_veth.as_str()).collect();
        let mut highest = 0;
        for name in Netlink::links_with_prefix(&settings.veth_prefix) {
            let Ok(n) = name[settings.veth_prefix.len()..].parse::<u32>() else {
                continue;
            };
            if kept.contains(name.as_str()) {
                highest = highest.max(n);
            } else if let Err(error) = host.delete(&name) {
                tracing::warn!(veth = %name, %error, "cannot delete a leftover veth");
            }
        }
        let used: Used = Arc::default();
        for record in keep {
            if let Some((egress, n)) = settings.address_slot(record.address) {
                used.lock().unwrap()[egress.range() as usize].insert(n);
            }
        }
        let (releases, received) = std::sync::mpsc::channel();
        let releaser = {
            let used = Arc::clone(&used);
            std::thread::Builder::new()
                .name("veth-release".to_owned())
                .spawn(move || release_thread(received, used))
                .map_err(|source| NetworkError::Thread {
                    thread: "veth release thread",
                    source,
                })?
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(PoolState {
                ready: VecDeque::new(),
                stop: false,
            }),
            changed: Condvar::new(),
            next_veth: std::sync::atomic::AtomicU32::new(highest + 1),
        });
        let pool = if settings.pool_size > 0 {
            let shared = Arc::clone(&shared);
            let settings = settings.clone();
            Some(
                std::thread::Builder::new()
                    .name("netns-pool".to_owned())
                    .spawn(move || pool_thread(&settings, bridge_index, &shared))
                    .map_err(|source| NetworkError::Thread {
                        thread: "namespace pool",
                        source,
                    })?,
            )
        } else {
            None
        };
        Ok(Network {
            settings,
            bridge_index,
            shared,
            pool,
            used,
            releases: Some(releases),
            releaser: Some(releaser),
        })
    }

    pub fn settings(&self) -> &NetworkSettings {
        &self.settings
    }

    /// A network for a new desktop: a pooled namespace (or a fresh one when
    /// the pool is empty) with an address from `egress`'s range.
    pub fn take(&mut self, egress: Egress) -> Result<DesktopNet, NetworkError> {
        // Reserved now, given back if anything below fails.
        let n = {
            let mut used = self.used.lock().unwrap();
            let used = &mut used[egress.range() as usize];
            let n = (0..RANGE_SIZE - 4)
                .find(|n| !used.contains(n))
                .ok_or(NetworkError::NoFreeAddress)?;
            used.insert(n);
            n
        };
        match self.configure(egress, n) {
            Ok(net) => Ok(net),
            Err(error) => {
                self.used.lock().unwrap()[egress.range() as usize].remove(&n);
                Err(error)
            }
        }
    }

    /// A ready namespace with the `n`th address of `egress`'s range.
    fn configure(&mut self, egress: Egress, n: u32) -> Result<DesktopNet, NetworkError> {
        let pooled = {
            let mut state = self.shared.state.lock().unwrap();
            let ready = state.ready.pop_front();
            self.shared.changed.notify_all();
            ready
        };
        let mut ready = match pooled {
            Some(ready) => ready,
            None => {
                let settings = self.settings.clone();
                let bridge = self.bridge_index;
                let shared = Arc::clone(&self.shared);
                // A thread of its own: making a namespace moves the thread
                // that makes it into it.
                std::thread::spawn(move || {
                    let mut host = Netlink::open().map_err(netlink("open rtnetlink"))?;
                    make_ready(&settings, &mut host, bridge, &shared)
                })
                .join()
                .map_err(|_| NetworkError::ThreadPanicked)??
            }
        };
        let address = self.settings.address(egress, n);
        let configured = ready
            .inside
            .add_address(ready.eth0, address, 16)
            .and_then(|_| ready.inside.add_default_route(self.settings.gateway()));
        if let Err(source) = configured {
            self.send_release(ready.host_veth, None);
            return Err(netlink("address the desktop's eth0")(source));
        }
        Ok(DesktopNet {
            netns: Some(ready.netns),
            host_veth: ready.host_veth,
            address,
            egress,
        })
    }

    /// Releases a desktop's network: its veth is deleted (if the kernel
    /// has not already) and then its address freed, on the release thread.
    pub fn release(&mut self, record: &NetRecord) {
        let address = self.settings.address_slot(record.address);
        self.send_release(record.host_veth.clone(), address);
    }

    fn send_release(&self, host_veth: String, address: Option<(Egress, u32)>) {
        if let Some(releases) = &self.releases {
            // The thread lives as long as the sender; a send cannot fail
            // before drop.
            let _ = releases.send(Release { host_veth, address });
        }
    }

    /// Removes what [`Network::start`] set up on the host: the table and the
    /// bridge (for tests and `flotilla dev`; a node agent keeps them so that
    /// re-adopted desktops stay connected).
    pub fn remove_host_setup(settings: &NetworkSettings) -> Result<(), NetworkError> {
        nft(&format!(
            "add table inet {0}\ndelete table inet {0}\n",
            settings.nft_table
        ))?;
        let mut host = Netlink::open().map_err(netlink("open rtnetlink"))?;
        host.delete(&settings.bridge)
            .map_err(netlink(format!("delete bridge {}", settings.bridge)))?;
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock().unwrap();
            state.stop = true;
            self.shared.changed.notify_all();
        }
        if let Some(pool) = self.pool.take() {
            let _ = pool.join();
        }
        let ready: Vec<Ready> = self.shared.state.lock().unwrap().ready.drain(..).collect();
        for entry in ready {
            self.send_release(entry.host_veth, None);
        }
        // Every release sent so far is done when the thread ends.
        self.releases = None;
        if let Some(releaser) = self.releaser.take() {
            let _ = releaser.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn addresses_map_to_policies_and_back() {
        let settings = NetworkSettings::default();
        assert_eq!(settings.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(
            settings.address(Egress::None, 0),
            Ipv4Addr::new(10, 88, 0, 2)
        );
        assert_eq!(
            settings.address(Egress::ControlPlane, 0),
            Ipv4Addr::new(10, 88, 64, 2)
        );
        assert_eq!(
            settings.address(Egress::Open, 300),
            Ipv4Addr::new(10, 88, 129, 46)
        );
        for egress in Egress::ALL {
            for n in [0, 1, 5000, RANGE_SIZE - 5] {
                assert_eq!(
                    settings.address_slot(settings.address(egress, n)),
                    Some((egress, n))
                );
            }
        }
        assert_eq!(settings.address_slot(settings.gateway()), None);
        assert_eq!(settings.address_slot(Ipv4Addr::new(10, 89, 0, 2)), None);
    }

    #[test]
    fn settings_are_validated() {
        let mut settings = NetworkSettings::default();
        assert!(settings.validate().is_ok());
        settings.subnet = Ipv4Addr::new(10, 88, 1, 0);
        assert!(settings.validate().is_err());
        let settings = NetworkSettings {
            bridge: "a-bridge-name-too-long".to_owned(),
            ..NetworkSettings::default()
        };
        assert!(settings.validate().is_err());
        let settings = NetworkSettings {
            nft_table: "x; flush ruleset".to_owned(),
            ..NetworkSettings::default()
        };
        assert!(settings.validate().is_err());
    }

    #[test]
    fn the_ruleset_names_every_policy_range_and_endpoint() {
        let settings = NetworkSettings {
            control_plane: vec![
                "127.0.0.1:7000".parse().unwrap(),
                "10.1.2.3:7443".parse().unwrap(),
            ],
            egress_allow: vec!["192.168.7.9/24".parse().unwrap()],
            resolvers: super::resolvers("# x\nnameserver 10.0.0.2\nnameserver ::1\n"),
            ..NetworkSettings::default()
        };
        let rules = settings.ruleset();
        assert!(rules.contains("elements = { 127.0.0.1 . 7000, 10.1.2.3 . 7443 }"));
        // open: allowed ranges (as networks) and resolvers before the refused ones.
        assert!(rules.contains("elements = { 192.168.7.0/24 }"), "{rules}");
        assert!(rules.contains("elements = { 10.0.0.2 }"), "{rules}");
        assert!(rules.contains("169.254.0.0/16"));
        let order = |needle: &str| rules.find(needle).unwrap_or(usize::MAX);
        assert!(order("@open_allowed accept") < order("@open_refused drop"));
        assert!(order("@resolvers udp dport 53 accept") < order("@open_refused drop"));
        assert!(order("@open_refused drop") < order("ip daddr != 10.88.0.0/16 accept"));
        assert!(rules.contains("ip saddr 10.88.0.0/18 drop"));
        assert!(rules.contains("ip saddr 10.88.128.0/18 ip daddr != 10.88.0.0/16 accept"));
        assert!(rules.contains("ip daddr 10.88.0.1 tcp dport 7000 dnat ip to 127.0.0.1:7000"));
        assert!(!rules.contains("dport 7443 dnat"));
        assert_eq!(
            settings.desktop_endpoints(),
            vec![
                "10.88.0.1:7000".parse::<SocketAddr>().unwrap(),
                "10.1.2.3:7443".parse().unwrap()
            ]
        );
        assert_eq!("open".parse::<Egress>(), Ok(Egress::Open));
        assert!("everything".parse::<Egress>().is_err());
    }
}
