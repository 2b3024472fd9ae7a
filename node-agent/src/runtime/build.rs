//! Building a [`ProcessRuntime`]: the command and journal, then what the
//! node offers its desktops — sessions, cgroup limits, gpud sockets and a
//! network. Each `with_*` keeps what the sandboxes adopted at start (see
//! [`super::adopt`]) use, so call `with_sandbox` first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_gpu::service::GpuService;

use super::journal::{Journal, JOURNAL_FILE};
use super::{owner_of, ProcessRuntime, RuntimeGpu, SessionCommand};
use crate::sandbox::cgroup::Scope;
use crate::sandbox::net::{NetRecord, Network, NetworkError, NetworkSettings};

impl ProcessRuntime {
    pub fn new(
        node: &str,
        data_dir: &Path,
        command: Vec<String>,
        stop_grace: Duration,
    ) -> std::io::Result<ProcessRuntime> {
        if command.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the desktop command is empty",
            ));
        }
        Ok(ProcessRuntime {
            node: node.to_owned(),
            command,
            stop_grace,
            desktops: BTreeMap::new(),
            journal: Journal::open(&data_dir.join(JOURNAL_FILE))?,
            cgroups: None,
            pids_limit: 4096,
            sandbox: None,
            network: None,
            zygote: None,
            adopted: Vec::new(),
            leave_running: false,
            gpu: None,
            data_dir: data_dir.to_owned(),
            session: None,
        })
    }

    /// Serves every desktop a gpud socket on `service` (in a sandbox at
    /// `/run/flotilla/gpu.sock`; `FLOTILLA_GPU_SOCKET` says where), with
    /// its requested GPU memory as budget, or `display_budget` if it asked
    /// for less. Adopted sandboxes get their socket back (a new session:
    /// gpud's state did not survive the agent).
    pub fn with_gpu(mut self, service: Arc<GpuService>, display_budget: u64) -> ProcessRuntime {
        for state in &self.adopted {
            let (Some((index, budget)), Some(desktop)) =
                (state.gpu, self.desktops.get_mut(&state.desktop_id))
            else {
                continue;
            };
            let Some((_, dir)) = &desktop.sandbox else {
                continue;
            };
            let attached = owner_of(&dir.join("home")).and_then(|owner| {
                service.attach(
                    &state.desktop_id,
                    Some(index),
                    budget,
                    &dir.join("gpu"),
                    Some(owner),
                )
            });
            match attached {
                Ok(gpu) => desktop.gpu = Some(gpu),
                Err(error) => {
                    tracing::warn!(desktop = %state.desktop_id, %error, "cannot re-open its gpud socket")
                }
            }
        }
        self.gpu = Some(RuntimeGpu {
            service,
            display_budget,
        });
        self
    }

    /// Gives every sandbox its own network (see [`crate::sandbox::net`]):
    /// sets the host side up and keeps the networks of adopted desktops.
    pub fn add_network(&mut self, settings: NetworkSettings) -> Result<(), NetworkError> {
        let keep: Vec<NetRecord> = self.adopted.iter().filter_map(|s| s.net.clone()).collect();
        self.network = Some(Network::start(settings, &keep)?);
        Ok(())
    }

    /// Desktops run `session`, each with its profile's apps and keyboard.
    pub fn with_session(mut self, session: SessionCommand) -> ProcessRuntime {
        self.session = Some(session);
        self
    }

    /// Puts every desktop in its own cgroup under `scope`, limited to its
    /// CPU share, memory (no swap) and `pids_limit` processes. Adopted
    /// sandboxes keep theirs; every other cgroup an earlier run of the
    /// agent left is killed and removed first.
    pub fn with_cgroups(mut self, scope: Scope, pids_limit: u64) -> ProcessRuntime {
        for state in &self.adopted {
            let (Some(name), Some(desktop)) =
                (&state.cgroup, self.desktops.get_mut(&state.desktop_id))
            else {
                continue;
            };
            match scope.open(name) {
                Ok(cgroup) => desktop.cgroup = Some(cgroup),
                Err(error) => {
                    tracing::warn!(desktop = %state.desktop_id, %error, "cannot reopen its cgroup")
                }
            }
        }
        let kept: BTreeSet<&str> = self
            .adopted
            .iter()
            .filter_map(|state| state.cgroup.as_deref())
            .collect();
        for name in scope.existing() {
            if kept.contains(name.as_str()) {
                continue;
            }
            match scope
                .open(&name)
                .and_then(|cgroup| cgroup.destroy(Duration::from_secs(5)))
            {
                Ok(()) => tracing::info!(cgroup = %name, "removed a cgroup left by an earlier run"),
                Err(error) => {
                    tracing::warn!(cgroup = %name, %error, "cannot remove a leftover cgroup")
                }
            }
        }
        self.cgroups = Some(scope);
        self.pids_limit = pids_limit;
        self
    }
}
