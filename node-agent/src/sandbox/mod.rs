//! The desktop sandbox, built directly from Linux namespaces and cgroups
//! (no container runtime). Being built piece by piece: so far the cgroup
//! layer ([`cgroup`]).

pub mod cgroup;
