//! The layout of a node's desktop network: bridge, veth and table names,
//! the /16 cut into one /18 per egress policy (the address says the
//! policy), the control-plane endpoints desktops may reach, and the one
//! nftables table that enforces it all. Pure: no IO.
//!
//! `open` is the internet, not the node's neighbourhood: private, shared,
//! link-local (cloud metadata at 169.254.169.254), loopback, multicast and
//! reserved ranges are refused unless an operator allows a range
//! (`egress_allow`); the host's resolvers stay reachable on port 53.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use ipnet::Ipv4Net;

use super::{Egress, NetworkError};
use crate::sandbox::netlink::MAX_IFNAME;

/// How a node's desktop network is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// The host bridge every desktop's veth is a port of.
    pub bridge: String,
    /// Host ends of the veths are called `<prefix><n>`.
    pub veth_prefix: String,
    /// The nftables table (family `inet`) holding the node's rules.
    pub nft_table: String,
    /// First address of the desktop /16; the bridge is its `.0.1`.
    pub subnet: Ipv4Addr,
    /// The control plane's endpoints that `control-plane` (and `open`)
    /// desktops may reach. Loopback endpoints are reached at the bridge's
    /// address and forwarded to the host's loopback.
    pub control_plane: Vec<SocketAddr>,
    /// Ready namespaces kept by the pool.
    pub pool_size: usize,
    /// Ranges `open` desktops may reach although [`OPEN_REFUSED`] covers
    /// them (an internal package mirror, a LAN service).
    pub egress_allow: Vec<Ipv4Net>,
    /// The resolvers desktops' `/etc/resolv.conf` names (the host's), which
    /// `open` desktops reach on port 53 whatever their range.
    pub resolvers: Vec<Ipv4Addr>,
}

/// What `open` egress does not reach unless allowed: "this network",
/// private (RFC 1918), shared (CGNAT), loopback, link-local (cloud metadata),
/// IETF protocol assignments, benchmarking, multicast and reserved.
pub const OPEN_REFUSED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The `nameserver` lines of a resolv.conf that are IPv4 addresses.
pub fn resolvers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

impl Default for NetworkSettings {
    fn default() -> NetworkSettings {
        NetworkSettings {
            bridge: "flotilla0".to_owned(),
            veth_prefix: "flv".to_owned(),
            nft_table: "flotilla".to_owned(),
            subnet: Ipv4Addr::new(10, 88, 0, 0),
            control_plane: Vec::new(),
            pool_size: 4,
            egress_allow: Vec::new(),
            resolvers: Vec::new(),
        }
    }
}

/// Addresses per policy range (a /18), less the first two.
pub(super) const RANGE_SIZE: u32 = 1 << 14;

impl NetworkSettings {
    /// Checks names and the subnet.
    pub fn validate(&self) -> Result<(), NetworkError> {
        if self.bridge.is_empty() || self.bridge.len() > MAX_IFNAME {
            return Err(NetworkError::BridgeName(self.bridge.clone()));
        }
        if self.veth_prefix.is_empty() || self.veth_prefix.len() > 5 {
            return Err(NetworkError::VethPrefix(self.veth_prefix.clone()));
        }
        let valid = |name: &str| {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !valid(&self.bridge) || !valid(&self.veth_prefix) || !valid(&self.nft_table) {
            return Err(NetworkError::BadName);
        }
        if u32::from(self.subnet) & 0xFFFF != 0 {
            return Err(NetworkError::Subnet(self.subnet));
        }
        Ok(())
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    pub(super) fn range_cidr(&self, egress: Egress) -> String {
        let start = u32::from(self.subnet) + egress.range() * RANGE_SIZE;
        format!("{}/18", Ipv4Addr::from(start))
    }

    /// The `n`th address (from 0) of `egress`'s range.
    pub(super) fn address(&self, egress: Egress, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + egress.range() * RANGE_SIZE + 2 + n)
    }

    /// Which policy an address in the subnet belongs to, and its number.
    pub(super) fn address_slot(&self, address: Ipv4Addr) -> Option<(Egress, u32)> {
        let offset = u32::from(address).checked_sub(u32::from(self.subnet))?;
        let egress = Egress::ALL
            .into_iter()
            .find(|e| e.range() == offset / RANGE_SIZE)?;
        let n = (offset % RANGE_SIZE).checked_sub(2)?;
        Some((egress, n))
    }

    /// The addresses desktops use for the control plane (loopback ones
    /// become the bridge's address).
    pub fn desktop_endpoints(&self) -> Vec<SocketAddr> {
        self.control_plane
            .iter()
            .filter(|endpoint| endpoint.is_ipv4())
            .map(|endpoint| {
                if endpoint.ip().is_loopback() {
                    SocketAddr::V4(SocketAddrV4::new(self.gateway(), endpoint.port()))
                } else {
                    *endpoint
                }
            })
            .collect()
    }

    /// The nftables transaction that (re)creates the node's table.
    pub fn ruleset(&self) -> String {
        let table = &self.nft_table;
        let bridge = &self.bridge;
        let gateway = self.gateway();
        let endpoints: Vec<String> = self
            .control_plane
            .iter()
            .filter_map(|endpoint| match endpoint {
                SocketAddr::V4(v4) => Some(format!("{} . {}", v4.ip(), v4.port())),
                SocketAddr::V6(_) => None,
            })
            .collect();
        let elements = if endpoints.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", endpoints.join(", "))
        };
        let dnat: String = self
            .control_plane
            .iter()
            .filter(|endpoint| endpoint.is_ipv4() && endpoint.ip().is_loopback())
            .map(|endpoint| {
                format!(
                    "    iifname \"{bridge}\" ip daddr {gateway} tcp dport {port} dnat ip to {ip}:{port}\n",
                    port = endpoint.port(),
                    ip = endpoint.ip()
                )
            })
            .collect();
        let none = self.range_cidr(Egress::None);
        let control_plane = self.range_cidr(Egress::ControlPlane);
        let open = self.range_cidr(Egress::Open);
        let subnet = format!("{}/16", self.subnet);
        let set = |items: Vec<String>| {
            if items.is_empty() {
                String::new()
            } else {
                format!("elements = {{ {} }}", items.join(", "))
            }
        };
        let refused = set(OPEN_REFUSED.iter().map(|r| (*r).to_owned()).collect());
        let allowed = set(self
            .egress_allow
            .iter()
            .map(|net| net.trunc().to_string())
            .collect());
        let resolvers = set(self.resolvers.iter().map(Ipv4Addr::to_string).collect());
        format!(
            "add table inet {table}
delete table inet {table}
table inet {table} {{
  set control_plane {{
    type ipv4_addr . inet_service
    {elements}
  }}
  set open_refused {{
    type ipv4_addr; flags interval; auto-merge
    {refused}
  }}
  set open_allowed {{
    type ipv4_addr; flags interval; auto-merge
    {allowed}
  }}
  set resolvers {{
    type ipv4_addr
    {resolvers}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{dnat}  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    oifname \"{bridge}\" ct state established,related accept
    oifname \"{bridge}\" drop
    iifname \"{bridge}\" meta nfproto != ipv4 drop
    iifname \"{bridge}\" ip saddr {none} drop
    iifname \"{bridge}\" ip saddr {control_plane} ip daddr . tcp dport @control_plane accept
    iifname \"{bridge}\" ip saddr {open} ip daddr . tcp dport @control_plane accept
    iifname \"{bridge}\" ip saddr {open} ip daddr @resolvers udp dport 53 accept
    iifname \"{bridge}\" ip saddr {open} ip daddr @resolvers tcp dport 53 accept
    iifname \"{bridge}\" ip saddr {open} ip daddr @open_allowed accept
    iifname \"{bridge}\" ip saddr {open} ip daddr @open_refused drop
    iifname \"{bridge}\" ip saddr {open} ip daddr != {subnet} accept
    iifname \"{bridge}\" drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"{bridge}\" ct state established,related accept
    iifname \"{bridge}\" ip saddr {control_plane} ip daddr . tcp dport @control_plane accept
    iifname \"{bridge}\" ip saddr {open} ip daddr . tcp dport @control_plane accept
    iifname \"{bridge}\" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != \"{bridge}\" masquerade
  }}
}}
"
        )
    }
}
