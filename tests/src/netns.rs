//! Test hosts made of network namespaces: a bridge in this namespace and
//! one namespace per node, each joined to the bridge by a veth pair. Only
//! the test's own private addresses are used. Everything is removed on
//! drop, also after a failed assertion.

use std::process::Command;

use anyhow::{bail, Context};

/// Whether this process may create namespaces and links (root with `ip`).
/// Without it the namespace tests say so and skip, unless
/// `FLOTILLA_REQUIRE_NETNS` is set (CI sets it), in which case they fail.
pub fn available() -> anyhow::Result<bool> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return Ok(true);
    }
    if std::env::var_os("FLOTILLA_REQUIRE_NETNS").is_some() {
        bail!("FLOTILLA_REQUIRE_NETNS is set but this is not root with iproute2 (root: {root}, ip: {ip})");
    }
    eprintln!("skipping: network-namespace tests need root and iproute2 (set FLOTILLA_REQUIRE_NETNS=1 to fail instead)");
    Ok(false)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("run ip")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A bridge with `hosts` namespaces on a private /24.
pub struct TestNetwork {
    prefix: String,
    bridge: String,
    subnet: String,
    pub hosts: Vec<TestHost>,
}

pub struct TestHost {
    /// Network namespace name (for `ip netns exec`).
    pub namespace: String,
    /// The veth end in this namespace; down = the host is cut off.
    pub host_side: String,
    pub address: String,
}

impl TestNetwork {
    pub fn create(hosts: usize) -> anyhow::Result<TestNetwork> {
        let id = std::process::id() % 10_000;
        let prefix = format!("fl{id}");
        let subnet = format!("10.213.{}", id % 250 + 1);
        let mut network = TestNetwork {
            bridge: format!("{prefix}br"),
            prefix,
            subnet,
            hosts: Vec::new(),
        };
        // Leftovers of an earlier run with the same pid go first.
        network.remove();
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", network.subnet),
            "dev",
            &network.bridge,
        ])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        for index in 1..=hosts {
            let namespace = format!("{}n{index}", network.prefix);
            let host_side = format!("{}h{index}", network.prefix);
            let inside = format!("{}i{index}", network.prefix);
            let address = format!("{}.{}", network.subnet, 10 + index);
            ip(&["netns", "add", &namespace])?;
            network.hosts.push(TestHost {
                namespace: namespace.clone(),
                host_side: host_side.clone(),
                address: address.clone(),
            });
            ip(&[
                "link", "add", &host_side, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &namespace])?;
            ip(&["link", "set", &host_side, "master", &network.bridge])?;
            ip(&["link", "set", &host_side, "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &namespace, "link", "set", &inside, "up"])?;
        }
        Ok(network)
    }

    /// The address servers listen on: the bridge's.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Cuts host `index` (0-based) off the network, or reconnects it.
    pub fn set_link(&self, index: usize, up: bool) -> anyhow::Result<()> {
        ip(&[
            "link",
            "set",
            &self.hosts[index].host_side,
            if up { "up" } else { "down" },
        ])
    }

    fn remove(&self) {
        for index in 1..=16 {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}n{index}", self.prefix)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}h{index}", self.prefix)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        self.remove();
    }
}
