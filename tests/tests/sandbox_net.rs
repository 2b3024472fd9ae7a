//! Desktop networking and re-adoption, as root (CI runs these):
//! - each egress policy holds against listeners in a network namespace the
//!   test made to stand in for "outside" (open reaches a public address,
//!   not a private or link-local one unless allowed);
//! - two desktops cannot reach each other;
//! - a restarted runtime adopts sandboxes that still run, cleans up those
//!   that died, and a sandbox ends itself when the node's lease passes;
//! - nothing is left: no process, veth, nft table, bridge or directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_node_agent::runtime::{DesktopRuntime, DesktopSpec, ProcessRuntime, SandboxSettings};
use flotilla_node_agent::sandbox::net::{Egress, NetworkSettings};
use flotilla_tests::{flotilla_bin, netns, wait_phase};

fn traversable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// Names and a subnet of this test process's own.
fn settings(tag: u32, control_plane: Vec<SocketAddr>) -> NetworkSettings {
    let id = (std::process::id() + tag) % 10_000;
    NetworkSettings {
        bridge: format!("fd{id}"),
        veth_prefix: format!("e{id}"),
        nft_table: format!("flotilla_test_{id}"),
        subnet: Ipv4Addr::new(10, 100 + (id % 50) as u8, 0, 0),
        control_plane,
        pool_size: 2,
        egress_allow: Vec::new(),
        resolvers: Vec::new(),
    }
}

/// Addresses of the outside namespace that are not on its /24: routed to it
/// from the node for the test's length (never beyond the namespace).
struct Routes(Vec<String>);

impl Routes {
    fn add(namespace: &str, via: &str, addresses: &[&str]) -> anyhow::Result<Routes> {
        let routes = Routes(addresses.iter().map(|a| format!("{a}/32")).collect());
        for address in addresses {
            let inside = Command::new("ip")
                .args([
                    "-n",
                    namespace,
                    "addr",
                    "add",
                    &format!("{address}/32"),
                    "dev",
                    "lo",
                ])
                .status()?;
            anyhow::ensure!(inside.success(), "add {address} in {namespace}");
        }
        for route in &routes.0 {
            if route.starts_with("10.") {
                continue;
            }
            let added = Command::new("ip")
                .args(["route", "replace", route, "via", via])
                .status()?;
            anyhow::ensure!(added.success(), "route {route} via {via}");
        }
        Ok(routes)
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for route in &self.0 {
            if !route.starts_with("10.") {
                let _ = Command::new("ip").args(["route", "del", route]).status();
            }
        }
    }
}

/// Removes a test's bridge and nft table when dropped, also after a failed
/// assertion.
struct HostSetup(NetworkSettings);

impl Drop for HostSetup {
    fn drop(&mut self) {
        let _ = flotilla_node_agent::sandbox::net::Network::remove_host_setup(&self.0);
    }
}

fn desktop(id: &str, egress: Egress) -> DesktopSpec {
    DesktopSpec {
        token: String::new(),
        repository: String::new(),
        egress,
        ..flotilla_tests::desktop_spec(id, 1)
    }
}

/// A TCP listener inside network namespace `namespace` that answers each
/// connection with `reply`.
fn listen_in(namespace: &str, address: &str, port: u16, reply: &'static str) {
    let path = format!("/var/run/netns/{namespace}");
    let address: SocketAddr = format!("{address}:{port}").parse().unwrap();
    let (ready_send, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        use std::os::fd::AsRawFd;
        // SAFETY: setns of this thread only, with a namespace descriptor.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
        let listener = TcpListener::bind(address).expect("bind the outside listener");
        ready_send.send(()).unwrap();
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    ready.recv().unwrap();
}

/// What a desktop's probe script wrote, once it has finished.
fn results(dir: &Path) -> BTreeMap<String, String> {
    let path = dir.join("workspace/results");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if text.contains("done=1") {
                return text
                    .lines()
                    .filter_map(|line| line.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no results in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nft_has_table(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .is_ok_and(|output| output.status.success())
}

fn links_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

fn runtime_with_network(
    data: &Path,
    command: &str,
    first_slot: u32,
    settings: &NetworkSettings,
    lease_file: Option<PathBuf>,
) -> ProcessRuntime {
    let command = vec!["bash".to_owned(), "-c".to_owned(), command.to_owned()];
    let mut runtime = ProcessRuntime::new("net", data, command, Duration::from_secs(2))
        .unwrap()
        .with_sandbox(SandboxSettings {
            exe: flotilla_bin(),
            desktops_dir: data.join("desktops"),
            first_slot,
            lease_file,
            base_image: None,
            devices: Vec::new(),
            kept_dir: None,
            zygote: true,
            fail_at_step: None,
            session_exe: None,
            etc_binds: Vec::new(),
        })
        .unwrap();
    runtime.add_network(settings.clone()).unwrap();
    runtime
}

/// Each desktop listens on 8000, waits for the test's go, then probes.
/// Each probe: `name=ok:<reply>` or `name=blocked`.
const PROBES: &str = r#"
probe() {
  reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3 && head -c 16 <&3" 2>/dev/null)
  if [ -n "$reply" ]; then echo "$1=ok:$reply"; else echo "$1=blocked"; fi
}
perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 8000, Listen => 5, ReuseAddr => 1) or die; while ($c = $s->accept) { print $c "desk\n"; close $c }' &
until [ -e /workspace/go ]; do sleep 0.05; done
case "$FLOTILLA_DESKTOP_ADDRESS" in
  "$CP") NEIGHBOUR=$OPEN ;;
  *) NEIGHBOUR=$CP ;;
esac
{
  echo "address=$FLOTILLA_DESKTOP_ADDRESS"
  echo "egress=$FLOTILLA_EGRESS"
  echo "links=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')"
  probe self "$FLOTILLA_DESKTOP_ADDRESS" 8000
  probe control_plane "$OUTSIDE" 7000
  probe other_port "$OUTSIDE" 7001
  probe private_other "$PRIVATE" 7001
  probe link_local "$LINK_LOCAL" 7001
  probe public "$PUBLIC" 7001
  probe neighbour "$NEIGHBOUR" 8000
  probe host_service "$GATEWAY" "$HOST_PORT"
  probe loopback_control_plane "$GATEWAY" "$LOOPBACK_PORT"
  echo "done=1"
} > /workspace/results.tmp
mv /workspace/results.tmp /workspace/results
exec sleep 1000
"#;

/// Connects to `address` and reads one line.
fn reach(address: SocketAddr) -> Option<String> {
    let stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim().to_owned())
}

#[test]
fn egress_policies_hold_and_desktops_cannot_reach_each_other() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    // "Outside": a namespace with a control-plane port and another port.
    let outside = netns::TestNetwork::create(1)?;
    let host = &outside.hosts[0];
    listen_in(&host.namespace, &host.address, 7000, "control\n");
    listen_in(&host.namespace, &host.address, 7001, "other\n");
    // Beside the outside host: another private address (its /24), a
    // link-local one (as cloud metadata is), and a public one (TEST-NET-3),
    // the last two routed to the namespace from the node.
    let private = format!(
        "{}.99",
        host.address.rsplit_once('.').map_or("", |(net, _)| net)
    );
    let (link_local, public) = ("169.254.77.77", "203.0.113.7");
    let _routes = Routes::add(
        &host.namespace,
        &host.address,
        &[&private, link_local, public],
    )?;
    listen_in(&host.namespace, &private, 7001, "private\n");
    listen_in(&host.namespace, link_local, 7001, "meta\n");
    listen_in(&host.namespace, public, 7001, "public\n");
    // A service on the node itself, which no desktop may reach.
    let host_service = TcpListener::bind("0.0.0.0:0")?;
    let host_port = host_service.local_addr()?.port();
    std::thread::spawn(move || {
        for mut stream in host_service.incoming().flatten() {
            let _ = stream.write_all(b"host\n");
        }
    });
    // A control plane on the node's loopback (as `flotilla dev` runs it):
    // desktops reach it at the bridge's address.
    let loopback_service = TcpListener::bind("127.0.0.1:0")?;
    let loopback = loopback_service.local_addr()?;
    std::thread::spawn(move || {
        for mut stream in loopback_service.incoming().flatten() {
            let _ = stream.write_all(b"loopback\n");
        }
    });
    let control_plane: SocketAddr = format!("{}:7000", host.address).parse()?;
    let mut settings = settings(0, vec![control_plane, loopback]);
    // `open` may reach the outside host's one address, explicitly.
    settings.egress_allow = vec![format!("{}/32", host.address).parse()?];
    let _cleanup = HostSetup(settings.clone());
    let base = u32::from(settings.subnet);
    // The first address of each policy's range (see sandbox::net).
    let first = |range: u32| Ipv4Addr::from(base + range * (1 << 14) + 2);
    let (none_ip, cp_ip, open_ip) = (first(0), first(1), first(2));
    let command = format!(
        "OUTSIDE={outside} PRIVATE={private} LINK_LOCAL={link_local} PUBLIC={public} GATEWAY={gateway} HOST_PORT={host_port} LOOPBACK_PORT={loopback_port} CP={cp_ip} OPEN={open_ip}\n{PROBES}",
        loopback_port = loopback.port(),
        outside = host.address,
        gateway = settings.gateway(),
    );
    let data = traversable_tempdir();
    let mut runtime = runtime_with_network(data.path(), &command, 300, &settings, None);
    let desktops = [
        ("dt-none", Egress::None, none_ip),
        ("dt-cp", Egress::ControlPlane, cp_ip),
        ("dt-open", Egress::Open, open_ip),
    ];
    for (id, egress, _) in desktops {
        runtime
            .start(&desktop(id, egress))
            .map_err(anyhow::Error::msg)?;
    }
    for (id, _, address) in desktops {
        wait_phase(&mut runtime, id, "running");
        // The node reaches every desktop's listener: they are all up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while reach(SocketAddr::from((address, 8000))).as_deref() != Some("desk") {
            assert!(Instant::now() < deadline, "{id} never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(
        reach(SocketAddr::from((settings.gateway(), host_port))).as_deref(),
        Some("host"),
        "the host service answers the node itself"
    );
    for (address, reply) in [
        (private.as_str(), "private"),
        (link_local, "meta"),
        (public, "public"),
    ] {
        assert_eq!(
            reach(format!("{address}:7001").parse()?).as_deref(),
            Some(reply),
            "the node reaches {address}"
        );
    }
    let dir = |id: &str| data.path().join(format!("desktops/{id}-1"));
    for (id, _, _) in desktops {
        std::fs::write(dir(id).join("workspace/go"), "")?;
    }
    let none = results(&dir("dt-none"));
    let cp = results(&dir("dt-cp"));
    let open = results(&dir("dt-open"));
    let describe = format!("none: {none:?}\ncp: {cp:?}\nopen: {open:?}");
    // Addresses say the policy.
    assert_eq!(none["address"], none_ip.to_string(), "{describe}");
    assert_eq!(cp["address"], cp_ip.to_string(), "{describe}");
    assert_eq!(open["address"], open_ip.to_string(), "{describe}");
    assert_eq!(none["egress"], "none", "{describe}");
    assert_eq!(cp["egress"], "control-plane", "{describe}");
    for results in [&none, &cp, &open] {
        assert_eq!(results["links"].trim(), "eth0 lo", "{describe}");
        assert_eq!(results["self"], "ok:desk", "{describe}");
        assert_eq!(results["neighbour"], "blocked", "{describe}");
        assert_eq!(results["host_service"], "blocked", "{describe}");
    }
    assert_eq!(none["loopback_control_plane"], "blocked", "{describe}");
    assert_eq!(cp["loopback_control_plane"], "ok:loopback", "{describe}");
    assert_eq!(open["loopback_control_plane"], "ok:loopback", "{describe}");
    assert_eq!(none["control_plane"], "blocked", "{describe}");
    assert_eq!(none["other_port"], "blocked", "{describe}");
    assert_eq!(cp["control_plane"], "ok:control", "{describe}");
    assert_eq!(cp["other_port"], "blocked", "{describe}");
    assert_eq!(open["control_plane"], "ok:control", "{describe}");
    assert_eq!(open["other_port"], "ok:other", "{describe}");
    // open is the internet: not the LAN or link-local unless allowed.
    assert_eq!(open["public"], "ok:public", "{describe}");
    assert_eq!(open["private_other"], "blocked", "{describe}");
    assert_eq!(open["link_local"], "blocked", "{describe}");
    for results in [&none, &cp] {
        for probe in ["public", "private_other", "link_local"] {
            assert_eq!(results[probe], "blocked", "{probe}: {describe}");
        }
    }

    drop(runtime);
    assert!(
        links_with_prefix(&settings.veth_prefix).is_empty(),
        "veths left: {:?}",
        links_with_prefix(&settings.veth_prefix)
    );
    flotilla_node_agent::sandbox::net::Network::remove_host_setup(&settings)
        .map_err(anyhow::Error::msg)?;
    assert!(!nft_has_table(&settings.nft_table));
    assert!(links_with_prefix(&settings.bridge).is_empty());
    Ok(())
}

fn state_of(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

/// A lease file whose deadline is `left` from now.
fn write_lease(path: &Path, left: Duration) {
    let deadline = flotilla_node_agent::clock::monotonic_ns() + left.as_nanos();
    std::fs::write(path, format!("{deadline}\n")).unwrap();
}

#[test]
fn a_restarted_runtime_adopts_live_sandboxes_and_cleans_up_dead_ones() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    let settings = settings(1, Vec::new());
    let _cleanup = HostSetup(settings.clone());
    let data = traversable_tempdir();
    let lease = data.path().join("lease");
    write_lease(&lease, Duration::from_secs(600));
    let command = "exec sleep 1000";
    let mut first = runtime_with_network(data.path(), command, 320, &settings, Some(lease.clone()));
    first
        .start(&desktop("dt-live", Egress::Open))
        .map_err(anyhow::Error::msg)?;
    first
        .start(&desktop("dt-dead", Egress::None))
        .map_err(anyhow::Error::msg)?;
    wait_phase(&mut first, "dt-live", "running");
    wait_phase(&mut first, "dt-dead", "running");
    let live_dir = data.path().join("desktops/dt-live-1");
    let dead_dir = data.path().join("desktops/dt-dead-1");
    // Both have come up inside (their processes run as the slot's uids).
    let deadline = Instant::now() + Duration::from_secs(20);
    while flotilla_tests::sandbox_processes(320..322).len() < 4 {
        assert!(Instant::now() < deadline, "the sandboxes never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let live = state_of(&live_dir);
    let dead = state_of(&dead_dir);
    // The agent goes away (an upgrade), leaving its sandboxes running...
    first.leave_running();
    drop(first);
    // ...and one of them dies while it is away.
    let dead_pid = dead["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) of the test's own sandbox group.
    unsafe { libc::kill(-dead_pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while flotilla_tests::sandbox_processes(320..322).len() > 2 {
        assert!(Instant::now() < deadline, "the killed sandbox never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead_veth = dead["net"]["host_veth"].as_str().unwrap().to_owned();
    let live_veth = live["net"]["host_veth"].as_str().unwrap().to_owned();

    let mut second = runtime_with_network(data.path(), command, 330, &settings, Some(lease));
    let observed = second.poll();
    assert_eq!(observed.len(), 1, "{observed:?}");
    assert_eq!(observed[0].desktop_id, "dt-live");
    assert_eq!(observed[0].phase.as_str(), "running");
    assert_eq!(state_of(&live_dir)["pid"], live["pid"], "the same sandbox");
    assert!(!dead_dir.exists(), "the dead sandbox's directory is gone");
    let links = links_with_prefix(&settings.veth_prefix);
    assert!(links.contains(&live_veth), "{links:?}");
    assert!(!links.contains(&dead_veth), "{links:?}");
    // The adopted one is still under control: it stops and is cleaned up.
    second.stop("dt-live");
    wait_phase(&mut second, "dt-live", "stopped");
    second.forget("dt-live");
    assert!(!live_dir.exists());
    // Its veth goes on the release thread (or with its namespace).
    let deadline = Instant::now() + Duration::from_secs(10);
    while links_with_prefix(&settings.veth_prefix).contains(&live_veth) {
        assert!(Instant::now() < deadline, "{live_veth} never went");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(second);
    assert!(flotilla_tests::sandbox_processes(320..340).is_empty());
    // The pool's namespaces went with the runtime.
    assert!(links_with_prefix(&settings.veth_prefix).is_empty());
    Ok(())
}

#[test]
fn a_sandbox_ends_itself_when_the_lease_passes() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    let settings = settings(2, Vec::new());
    let _cleanup = HostSetup(settings.clone());
    let data = traversable_tempdir();
    let lease = data.path().join("lease");
    write_lease(&lease, Duration::from_secs(2));
    let mut runtime = runtime_with_network(
        data.path(),
        "exec sleep 1000",
        340,
        &settings,
        Some(lease.clone()),
    );
    runtime
        .start(&desktop("dt-lease", Egress::None))
        .map_err(anyhow::Error::msg)?;
    wait_phase(&mut runtime, "dt-lease", "running");
    // Nobody renews the lease.
    wait_phase(&mut runtime, "dt-lease", "failed");
    let observed = runtime.poll();
    let reason = format!("{:?}", observed[0].phase);
    assert!(reason.contains("lease expired"), "{reason}");
    drop(runtime);
    assert!(flotilla_tests::sandbox_processes(340..341).is_empty());
    assert!(links_with_prefix(&settings.veth_prefix).is_empty());
    Ok(())
}
