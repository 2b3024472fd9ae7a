//! How a node runs desktops. The agent's reconciler drives a
//! [`DesktopRuntime`]: start what is assigned, stop what is not, and poll
//! what each desktop does. [`ProcessRuntime`] runs each desktop as a plain
//! child process (its own process group, killed with the agent); the
//! namespace sandbox implements the same trait.
//!
//! Every start and every completed stop is appended to the runtime journal
//! (`desktop-events.jsonl` in the data directory) with a CLOCK_MONOTONIC
//! timestamp: operators can audit what ran when, and tests check from it
//! that no desktop ever ran on two nodes at once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the control plane asked this node to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopSpec {
    pub desktop_id: String,
    pub task_id: String,
    /// Fencing token of this placement.
    pub generation: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu_memory_bytes: u64,
    pub gpu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed(String),
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed(_) => "failed",
        }
    }

    pub fn ended(&self) -> bool {
        matches!(self, Phase::Stopped | Phase::Failed(_))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub pids: u32,
}

/// One desktop as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub desktop_id: String,
    pub generation: u64,
    pub phase: Phase,
    pub usage: Usage,
}

/// A way of running desktops on this host.
pub trait DesktopRuntime: Send {
    /// Starts `spec`; it shows up in [`DesktopRuntime::poll`] from now on.
    fn start(&mut self, spec: &DesktopSpec) -> Result<(), String>;
    /// Begins stopping a desktop: politely, then by force after the grace
    /// period. Stopping an ended or unknown desktop does nothing.
    fn stop(&mut self, desktop_id: &str);
    /// Advances every desktop's lifecycle and says what each is doing.
    fn poll(&mut self) -> Vec<Observed>;
    /// Drops an ended desktop from the runtime's books.
    fn forget(&mut self, desktop_id: &str);
}

struct ProcessDesktop {
    generation: u64,
    child: Child,
    phase: Phase,
    kill_at: Option<Instant>,
}

/// Runs each desktop as `command` in its own process group, with the
/// desktop's id and resources in its environment. The children get
/// `PR_SET_PDEATHSIG`, so they never outlive the agent.
pub struct ProcessRuntime {
    node: String,
    command: Vec<String>,
    stop_grace: Duration,
    desktops: BTreeMap<String, ProcessDesktop>,
    journal: Journal,
}

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
        })
    }
}

impl DesktopRuntime for ProcessRuntime {
    fn start(&mut self, spec: &DesktopSpec) -> Result<(), String> {
        if let Some(existing) = self.desktops.get(&spec.desktop_id) {
            if !existing.phase.ended() {
                return Err(format!("{} is already running here", spec.desktop_id));
            }
        }
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .env("FLOTILLA_DESKTOP_ID", &spec.desktop_id)
            .env("FLOTILLA_TASK_ID", &spec.task_id)
            .env("FLOTILLA_GENERATION", spec.generation.to_string())
            .env("FLOTILLA_CPU_MILLIS", spec.cpu_millis.to_string())
            .env("FLOTILLA_MEMORY_BYTES", spec.memory_bytes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (prctl, setpgid); nothing allocates or takes locks.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.journal
            .record(&self.node, &spec.desktop_id, spec.generation, "started");
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                self.journal
                    .record(&self.node, &spec.desktop_id, spec.generation, "stopped");
                return Err(format!("cannot start {:?}: {error}", self.command[0]));
            }
        };
        self.desktops.insert(
            spec.desktop_id.clone(),
            ProcessDesktop {
                generation: spec.generation,
                child,
                phase: Phase::Running,
                kill_at: None,
            },
        );
        Ok(())
    }

    fn stop(&mut self, desktop_id: &str) {
        let Some(desktop) = self.desktops.get_mut(desktop_id) else {
            return;
        };
        if desktop.phase.ended() || desktop.phase == Phase::Stopping {
            return;
        }
        signal_group(&desktop.child, libc::SIGTERM);
        desktop.phase = Phase::Stopping;
        desktop.kill_at = Some(Instant::now() + self.stop_grace);
    }

    fn poll(&mut self) -> Vec<Observed> {
        let now = Instant::now();
        let mut observed = Vec::with_capacity(self.desktops.len());
        for (id, desktop) in &mut self.desktops {
            if !desktop.phase.ended() {
                match desktop.child.try_wait() {
                    Ok(Some(status)) => {
                        // Whatever it left in its group goes with it.
                        signal_group(&desktop.child, libc::SIGKILL);
                        desktop.phase = if desktop.phase == Phase::Stopping {
                            Phase::Stopped
                        } else {
                            Phase::Failed(format!("the desktop exited ({status})"))
                        };
                        self.journal
                            .record(&self.node, id, desktop.generation, "stopped");
                    }
                    Ok(None) => {
                        if desktop.kill_at.is_some_and(|at| at <= now) {
                            signal_group(&desktop.child, libc::SIGKILL);
                            desktop.kill_at = None;
                        }
                    }
                    Err(error) => {
                        desktop.phase = Phase::Failed(format!("cannot wait for it: {error}"))
                    }
                }
            }
            let usage = if desktop.phase.ended() {
                Usage::default()
            } else {
                process_usage(desktop.child.id())
            };
            observed.push(Observed {
                desktop_id: id.clone(),
                generation: desktop.generation,
                phase: desktop.phase.clone(),
                usage,
            });
        }
        observed
    }

    fn forget(&mut self, desktop_id: &str) {
        if self
            .desktops
            .get(desktop_id)
            .is_some_and(|desktop| desktop.phase.ended())
        {
            self.desktops.remove(desktop_id);
        }
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        for (id, desktop) in &mut self.desktops {
            if !desktop.phase.ended() {
                signal_group(&desktop.child, libc::SIGKILL);
                let _ = desktop.child.wait();
                self.journal
                    .record(&self.node, id, desktop.generation, "stopped");
            }
        }
    }
}

fn signal_group(child: &Child, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals the group the child leads
    // (it called setpgid(0, 0)); the child is not reaped yet, so its pid and
    // group id cannot have been reused.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), signal);
    }
}

/// CPU time and resident memory of one process, from /proc.
fn process_usage(pid: u32) -> Usage {
    let ticks_per_second = {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            ticks as u64
        } else {
            100
        }
    };
    let cpu_usec = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name; utime and stime
            // are the 14th and 15th fields overall.
            let after = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) * 1_000_000 / ticks_per_second)
        })
        .unwrap_or(0);
    let memory_bytes = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096);
    Usage {
        cpu_usec,
        memory_bytes,
        pids: 1,
    }
}

pub const JOURNAL_FILE: &str = "desktop-events.jsonl";
/// The journal is rotated to `.1` beyond this size.
const JOURNAL_MAX_BYTES: u64 = 16 << 20;

/// One journal line.
#[derive(Debug, Serialize)]
struct JournalEntry<'a> {
    node: &'a str,
    desktop: &'a str,
    generation: u64,
    event: &'a str,
    monotonic_ns: u128,
}

struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    fn open(path: &Path) -> std::io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    fn record(&mut self, node: &str, desktop: &str, generation: u64, event: &str) {
        let entry = JournalEntry {
            node,
            desktop,
            generation,
            event,
            monotonic_ns: monotonic_ns(),
        };
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        if let Some(file) = &mut self.file {
            if let Err(error) = file.write_all(&line) {
                tracing::warn!(%error, path = %self.path.display(), "cannot write the runtime journal");
            }
            if file
                .metadata()
                .is_ok_and(|meta| meta.len() > JOURNAL_MAX_BYTES)
            {
                let _ = std::fs::rename(&self.path, self.path.with_extension("jsonl.1"));
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .ok();
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on a host.
pub fn monotonic_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, generation: u64) -> DesktopSpec {
        DesktopSpec {
            desktop_id: id.to_owned(),
            task_id: "t".to_owned(),
            generation,
            cpu_millis: 250,
            memory_bytes: 1 << 30,
            gpu_memory_bytes: 0,
            gpu: None,
        }
    }

    fn wait_for(runtime: &mut ProcessRuntime, id: &str, phase: &str) -> Observed {
        for _ in 0..200 {
            if let Some(observed) = runtime
                .poll()
                .into_iter()
                .find(|observed| observed.desktop_id == id && observed.phase.as_str() == phase)
            {
                return observed;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{id} never became {phase}");
    }

    #[test]
    fn starts_stops_and_journals_processes() {
        let dir = tempfile::tempdir().unwrap();
        let command = vec!["sleep".to_owned(), "1000".to_owned()];
        let mut runtime =
            ProcessRuntime::new("n1", dir.path(), command, Duration::from_secs(5)).unwrap();
        runtime.start(&spec("d1", 7)).unwrap();
        assert!(runtime.start(&spec("d1", 7)).is_err(), "no double start");
        let running = wait_for(&mut runtime, "d1", "running");
        assert_eq!(running.generation, 7);
        runtime.stop("d1");
        wait_for(&mut runtime, "d1", "stopped");
        runtime.forget("d1");
        assert!(runtime.poll().is_empty());
        let journal = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        let events: Vec<serde_json::Value> = journal
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["event"], "started");
        assert_eq!(events[1]["event"], "stopped");
        assert!(events[1]["monotonic_ns"].as_u64() > events[0]["monotonic_ns"].as_u64());
    }

    #[test]
    fn a_desktop_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "trap '' TERM; sleep 1000 & wait".to_owned(),
        ];
        let mut runtime =
            ProcessRuntime::new("n1", dir.path(), command, Duration::from_millis(200)).unwrap();
        runtime.start(&spec("d1", 1)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        runtime.stop("d1");
        wait_for(&mut runtime, "d1", "stopped");
    }

    #[test]
    fn an_exiting_desktop_is_reported_failed_and_a_bad_command_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = ProcessRuntime::new(
            "n1",
            dir.path(),
            vec!["false".to_owned()],
            Duration::from_secs(1),
        )
        .unwrap();
        runtime.start(&spec("d1", 1)).unwrap();
        let failed = wait_for(&mut runtime, "d1", "failed");
        assert!(matches!(failed.phase, Phase::Failed(reason) if reason.contains("exit")));
        let mut missing = ProcessRuntime::new(
            "n1",
            dir.path(),
            vec!["/nonexistent/desktop".to_owned()],
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(missing.start(&spec("d2", 1)).is_err());
    }
}
