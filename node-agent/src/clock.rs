//! The host clock every process of a node agrees on. The runtime journal,
//! the lease file and each sandbox's lease check compare CLOCK_MONOTONIC
//! readings taken in different processes, so they all read it here.
//!
//! A leaf: it uses nothing else of the crate.

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on a host.
pub fn monotonic_ns() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}
