//! The pool of ready network namespaces: a thread keeps `pool_size` of
//! them made (namespace, `lo` up, IPv6 off, veth bridged, isolated and
//! up), so that a desktop's start only adds an address and a route.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::settings::NetworkSettings;
use super::{netlink, write_sysctl, NetworkError};
use crate::sandbox::netlink::Netlink;

/// A ready network namespace: loopback up, `eth0` up and bridged, no
/// address yet.
pub(super) struct Ready {
    pub(super) netns: OwnedFd,
    pub(super) inside: Netlink,
    pub(super) eth0: i32,
    pub(super) host_veth: String,
}

pub(super) struct PoolState {
    pub(super) ready: VecDeque<Ready>,
    pub(super) stop: bool,
}

pub(super) struct Shared {
    pub(super) state: Mutex<PoolState>,
    pub(super) changed: Condvar,
    pub(super) next_veth: std::sync::atomic::AtomicU32,
}

pub(super) fn pool_thread(settings: &NetworkSettings, bridge: i32, shared: &Shared) {
    let mut host = match Netlink::open() {
        Ok(host) => host,
        Err(error) => {
            tracing::warn!(%error, "the namespace pool cannot open rtnetlink: every start makes its own namespace");
            return;
        }
    };
    loop {
        {
            let mut state = shared.state.lock().unwrap();
            while !state.stop && state.ready.len() >= settings.pool_size {
                state = shared.changed.wait(state).unwrap();
            }
            if state.stop {
                return;
            }
        }
        match make_ready(settings, &mut host, bridge, shared) {
            Ok(ready) => {
                let mut state = shared.state.lock().unwrap();
                if state.stop {
                    drop(state);
                    let _ = host.delete(&ready.host_veth);
                    return;
                }
                state.ready.push_back(ready);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot prepare a network namespace");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Makes one network namespace ready. Moves the calling thread into it
/// (only call it on a thread of its own).
pub(super) fn make_ready(
    settings: &NetworkSettings,
    host: &mut Netlink,
    bridge: i32,
    shared: &Shared,
) -> Result<Ready, NetworkError> {
    // SAFETY: only the calling thread's network namespace changes; its
    // file descriptor table (what `unshare_unsafe` warns about) stays
    // shared, as CLONE_FILES is not asked for.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }.map_err(
        |error| NetworkError::Namespace {
            step: "create a network namespace",
            source: error.into(),
        },
    )?;
    let netns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|source| NetworkError::Namespace {
            step: "open the new network namespace",
            source,
        })?
        .into();
    let mut inside = Netlink::open().map_err(netlink("open rtnetlink inside"))?;
    let lo = inside.index("lo").map_err(netlink("find lo"))?;
    inside.set_up(lo).map_err(netlink("bring lo up"))?;
    for file in ["all", "default"] {
        // Absent without IPv6; the rules drop IPv6 from desktops anyway.
        let _ = write_sysctl(&format!("/proc/sys/net/ipv6/conf/{file}/disable_ipv6"), "1");
    }
    let n = shared
        .next_veth
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let host_veth = format!("{}{n}", settings.veth_prefix);
    host.create_veth(&host_veth, "eth0", netns.as_raw_fd())
        .map_err(netlink(format!("create veth {host_veth}")))?;
    let mut wire = || -> std::io::Result<i32> {
        let index = host.index(&host_veth)?;
        host.set_master(index, bridge)?;
        host.isolate_port(index)?;
        host.set_up(index)?;
        let eth0 = inside.index("eth0")?;
        inside.set_up(eth0)?;
        Ok(eth0)
    };
    match wire() {
        Ok(eth0) => Ok(Ready {
            netns,
            inside,
            eth0,
            host_veth,
        }),
        Err(source) => {
            let _ = host.delete(&host_veth);
            Err(netlink(format!("wire veth {host_veth}"))(source))
        }
    }
}
