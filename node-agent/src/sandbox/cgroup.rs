//! Per-desktop cgroups: CPU (weight and quota), memory (hard limit, no
//! swap) and pids, on cgroup v2 or v1, detected at start from the mount
//! table. Usage (CPU time, memory, pids) is read back for reports.
//!
//! Layout: `<root>/flotilla/<desktop>` in v2; the same path under each
//! controller's hierarchy in v1 (`cpu`, `cpuacct`, `memory`, `pids`, which
//! may be co-mounted). Everything takes the cgroupfs root as a parameter, so
//! the v2 code is tested against a temporary directory standing in for it.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The sub-tree Flotilla owns in every hierarchy; each node agent works in
/// `flotilla/<node name>` so agents sharing a host (tests, simulations)
/// never touch each other's cgroups.
pub const PARENT: &str = "flotilla";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("desktop name {0:?} cannot name a cgroup")]
    BadName(String),
    #[error("cgroup {path} still has processes after killing them")]
    Busy { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy, with the controllers it delegates.
    V2 { root: PathBuf },
    /// One mount per controller (or group of co-mounted controllers).
    V1 {
        /// `cpu`, `cpuacct`, `memory`, `pids` → their mount points.
        controllers: BTreeMap<String, PathBuf>,
    },
}

const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Reads the mount table (`/proc/self/mounts` format) and picks the
/// hierarchy that has the controllers: v2 when the unified hierarchy
/// offers cpu, memory and pids (its `cgroup.controllers` is read through
/// `read`), else v1 when those controllers are mounted there.
pub fn detect(
    mounts: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Result<Hierarchy, CgroupError> {
    let mut v1 = BTreeMap::new();
    let mut unified = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fs_type, options, ..] = fields[..] else {
            continue;
        };
        match fs_type {
            "cgroup2" => unified = Some(PathBuf::from(mount_point)),
            "cgroup" => {
                for option in options.split(',') {
                    if V1_CONTROLLERS.contains(&option) {
                        v1.insert(option.to_owned(), PathBuf::from(mount_point));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(root) = unified {
        let offered = read(&root.join("cgroup.controllers")).unwrap_or_default();
        let offered: Vec<&str> = offered.split_whitespace().collect();
        if V2_CONTROLLERS.iter().all(|c| offered.contains(c)) {
            return Ok(Hierarchy::V2 { root });
        }
    }
    let missing: Vec<&str> = V1_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !v1.contains_key(*c))
        .collect();
    if missing.is_empty() {
        return Ok(Hierarchy::V1 { controllers: v1 });
    }
    Err(CgroupError::Unavailable(format!(
        "cgroup v2 does not offer cpu, memory and pids, and cgroup v1 lacks {}",
        missing.join(", ")
    )))
}

/// Detects the host's hierarchy from `/proc/self/mounts`.
pub fn detect_host() -> Result<Hierarchy, CgroupError> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").map_err(io(Path::new("/proc/self/mounts")))?;
    detect(&mounts, |path| fs::read_to_string(path).ok())
}

/// What one desktop may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Its share of contended CPU: 1000 millicores ≈ the default weight of a
    /// process outside any sandbox (v2 weight 100, v1 shares 1024).
    pub cpu_millis: u64,
    /// A hard ceiling in millicores (CFS quota), if any.
    pub cpu_max_millis: Option<u64>,
    pub memory_bytes: u64,
    pub pids: u64,
}

/// CFS period used with quotas.
const PERIOD_US: u64 = 100_000;

/// cgroup v2 `cpu.weight` (1–10000) for a share in millicores.
pub fn v2_weight(cpu_millis: u64) -> u64 {
    (cpu_millis / 10).clamp(1, 10_000)
}

/// cgroup v1 `cpu.shares` (2–262144) for a share in millicores.
pub fn v1_shares(cpu_millis: u64) -> u64 {
    (cpu_millis * 1024 / 1000).clamp(2, 262_144)
}

/// Resources a cgroup has used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Times the memory limit killed something.
    pub oom_kills: u64,
}

/// One desktop's cgroup (one directory per hierarchy in v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    scope: Scope,
    name: String,
}

/// A node agent's part of a hierarchy: `flotilla/<node>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    hierarchy: Hierarchy,
    node: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Hierarchy {
    /// The part of the hierarchy node agent `node` owns.
    pub fn scope(&self, node: &str) -> Result<Scope, CgroupError> {
        if !valid_name(node) {
            return Err(CgroupError::BadName(node.to_owned()));
        }
        Ok(Scope {
            hierarchy: self.clone(),
            node: node.to_owned(),
        })
    }

    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::V1 { .. } => "v1",
        }
    }
}

impl Scope {
    /// The directories that make up cgroup `name` (v1: one per distinct
    /// mount, co-mounted controllers share one).
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => vec![root.join(PARENT).join(&self.node).join(name)],
            Hierarchy::V1 { controllers } => {
                let mut dirs: Vec<PathBuf> = controllers
                    .values()
                    .map(|mount| mount.join(PARENT).join(&self.node).join(name))
                    .collect();
                dirs.sort();
                dirs.dedup();
                dirs
            }
        }
    }

    fn controller_dir(&self, controller: &str, name: &str) -> PathBuf {
        match &self.hierarchy {
            Hierarchy::V2 { root } => root.join(PARENT).join(&self.node).join(name),
            Hierarchy::V1 { controllers } => controllers[controller]
                .join(PARENT)
                .join(&self.node)
                .join(name),
        }
    }

    /// The `cgroup.procs` files a process writes `0` to, to join cgroup
    /// `name` (before it execs, so everything it does is charged).
    pub fn procs_files(&self, name: &str) -> Vec<PathBuf> {
        self.dirs(name)
            .into_iter()
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// Creates cgroup `name` with `limits`. On any failure the parts made so
    /// far are removed again.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        if !valid_name(name) {
            return Err(CgroupError::BadName(name.to_owned()));
        }
        let cgroup = Cgroup {
            scope: self.clone(),
            name: name.to_owned(),
        };
        match cgroup.set_up(limits) {
            Ok(()) => Ok(cgroup),
            Err(error) => {
                let _ = cgroup.destroy(Duration::from_millis(100));
                Err(error)
            }
        }
    }

    /// A handle on cgroup `name` as it exists (to clean up what an earlier
    /// run of the agent left).
    pub fn open(&self, name: &str) -> Result<Cgroup, CgroupError> {
        if !valid_name(name) {
            return Err(CgroupError::BadName(name.to_owned()));
        }
        Ok(Cgroup {
            scope: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Removes this node's (empty) parent directories; a no-op while
    /// cgroups remain under them.
    pub fn remove_if_empty(&self) {
        for dir in self.dirs("") {
            let _ = fs::remove_dir(&dir);
        }
    }

    /// Names of the cgroups this node's agent left (for clean-up after a
    /// restart).
    pub fn existing(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in self.dirs("") {
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io(path))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, memory.events) → the value of `key`.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

impl Cgroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_up(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.scope.hierarchy {
            Hierarchy::V2 { root } => {
                // Controllers must be enabled on every level above.
                let flotilla = root.join(PARENT);
                let parent = flotilla.join(&self.scope.node);
                fs::create_dir_all(&parent).map_err(io(&parent))?;
                for level in [root.as_path(), flotilla.as_path(), parent.as_path()] {
                    write(&level.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                }
                let dir = parent.join(&self.name);
                fs::create_dir(&dir).map_err(io(&dir))?;
                write(
                    &dir.join("cpu.weight"),
                    &v2_weight(limits.cpu_millis).to_string(),
                )?;
                let max = match limits.cpu_max_millis {
                    Some(millis) => format!("{} {PERIOD_US}", millis * PERIOD_US / 1000),
                    None => format!("max {PERIOD_US}"),
                };
                write(&dir.join("cpu.max"), &max)?;
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                write(&dir.join("memory.swap.max"), "0")?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
            Hierarchy::V1 { .. } => {
                for dir in self.scope.dirs(&self.name) {
                    fs::create_dir_all(&dir).map_err(io(&dir))?;
                }
                let cpu = self.scope.controller_dir("cpu", &self.name);
                write(
                    &cpu.join("cpu.shares"),
                    &v1_shares(limits.cpu_millis).to_string(),
                )?;
                write(&cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                let quota = limits.cpu_max_millis.map_or("-1".to_owned(), |millis| {
                    (millis * PERIOD_US / 1000).to_string()
                });
                write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
                let memory = self.scope.controller_dir("memory", &self.name);
                write(
                    &memory.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                // memsw exists only with swap accounting; without it there is
                // no swap to limit.
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &limits.memory_bytes.to_string())?;
                }
                let pids = self.scope.controller_dir("pids", &self.name);
                write(&pids.join("pids.max"), &limits.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` (and, in v2, nothing else) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.scope.dirs(&self.name) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let dir = self.scope.controller_dir("pids", &self.name);
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    pub fn usage(&self) -> CgroupUsage {
        match &self.scope.hierarchy {
            Hierarchy::V2 { .. } => {
                let dir = self.scope.controller_dir("cpu", &self.name);
                CgroupUsage {
                    cpu_usec: keyed(&dir.join("cpu.stat"), "usage_usec").unwrap_or(0),
                    memory_bytes: read_u64(&dir.join("memory.current")).unwrap_or(0),
                    pids: read_u64(&dir.join("pids.current")).unwrap_or(0),
                    oom_kills: keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
                }
            }
            Hierarchy::V1 { .. } => {
                let cpuacct = self.scope.controller_dir("cpuacct", &self.name);
                let memory = self.scope.controller_dir("memory", &self.name);
                let pids = self.scope.controller_dir("pids", &self.name);
                CgroupUsage {
                    cpu_usec: read_u64(&cpuacct.join("cpuacct.usage")).unwrap_or(0) / 1000,
                    memory_bytes: read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0),
                    pids: read_u64(&pids.join("pids.current")).unwrap_or(0),
                    oom_kills: keyed(&memory.join("memory.oom_control"), "oom_kill").unwrap_or(0),
                }
            }
        }
    }

    /// SIGKILLs every process in the cgroup until it is empty or `timeout`
    /// passes (`cgroup.kill` where the kernel has it).
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        if let Hierarchy::V2 { .. } = &self.scope.hierarchy {
            let kill = self
                .scope
                .controller_dir("pids", &self.name)
                .join("cgroup.kill");
            if kill.exists() {
                let _ = fs::write(&kill, "1");
            }
        }
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        loop {
            // Never the agent itself (one of its threads may be charged
            // here: a desktop's encoder).
            let pids: Vec<u32> = self.pids().into_iter().filter(|pid| *pid != me).collect();
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from the cgroup; a pid that
                // exited meanwhile gets ESRCH, which is fine.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    path: self.scope.controller_dir("pids", &self.name),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left and removes the cgroup's directories. Removing
    /// one that is already gone is fine.
    pub fn destroy(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.kill_all(timeout)?;
        let deadline = Instant::now() + timeout;
        for dir in self.scope.dirs(&self.name) {
            evict_own_threads(&dir);
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == ErrorKind::NotFound => break,
                    // A fake cgroupfs (tests) holds the control files we
                    // wrote; the kernel's holds none that need removing.
                    Err(_) if dir.join("cgroup.procs").is_file() && !is_cgroupfs(&dir) => {
                        fs::remove_dir_all(&dir).map_err(io(&dir))?;
                        break;
                    }
                    Err(error) if Instant::now() > deadline => return Err(io(&dir)(error)),
                    // Processes just killed may take a moment to leave.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        Ok(())
    }
}

/// Moves this process's threads out of the v1 cgroup `dir` into its
/// parent (a desktop's encoder thread is charged to the desktop's CPU
/// controllers and may outlive it by a moment); a cgroup with tasks in it
/// cannot be removed.
fn evict_own_threads(dir: &Path) {
    let Ok(tasks) = fs::read_to_string(dir.join("tasks")) else {
        return;
    };
    let Some(parent) = dir.parent() else {
        return;
    };
    for tid in tasks.lines().map(str::trim) {
        if Path::new("/proc/self/task").join(tid).exists() {
            let _ = fs::write(parent.join("tasks"), tid);
        }
    }
}

/// Whether `path` is on a real cgroup filesystem (statfs magic).
fn is_cgroupfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; the path is a valid C
    // string for the call.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stats) } != 0 {
        return false;
    }
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let magic = stats.f_type as i64;
    magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn detection_prefers_a_v2_that_has_controllers_and_falls_back_to_v1() {
        let none = |_: &Path| Some(String::new());
        let Hierarchy::V1 { controllers } = detect(HYBRID, none).unwrap() else {
            panic!("a controller-less v2 must not be chosen");
        };
        assert_eq!(
            controllers["memory"],
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        let full = |_: &Path| Some("cpuset cpu io memory pids\n".to_owned());
        assert_eq!(
            detect(HYBRID, full).unwrap(),
            Hierarchy::V2 {
                root: PathBuf::from("/sys/fs/cgroup/unified")
            }
        );
        let comounted = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
                         cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                         cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n";
        let Hierarchy::V1 { controllers } = detect(comounted, none).unwrap() else {
            panic!("v1 expected");
        };
        assert_eq!(controllers["cpu"], controllers["cpuacct"]);
        let error = detect("cgroup /x cgroup rw,cpu 0 0\n", none)
            .unwrap_err()
            .to_string();
        assert!(error.contains("memory"), "{error}");
        assert!(detect("garbage\n\n", none).is_err());
    }

    #[test]
    fn weights_and_shares_scale_with_millicores() {
        assert_eq!(v2_weight(1000), 100);
        assert_eq!(v2_weight(250), 25);
        assert_eq!(v2_weight(0), 1);
        assert_eq!(v2_weight(10_000_000), 10_000);
        assert_eq!(v1_shares(1000), 1024);
        assert_eq!(v1_shares(0), 2);
    }

    /// cgroup v2 against a temporary directory standing in for cgroupfs.
    #[test]
    fn v2_writes_the_limits_reads_usage_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V2 {
            root: root.path().to_owned(),
        }
        .scope("node-1")
        .unwrap();
        let limits = Limits {
            cpu_millis: 500,
            cpu_max_millis: Some(2000),
            memory_bytes: 1 << 30,
            pids: 512,
        };
        let cgroup = hierarchy.create("dt-7", &limits).unwrap();
        let dir = root.path().join(PARENT).join("node-1").join("dt-7");
        let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(read("cpu.weight"), "50");
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "512");
        for level in [
            root.path().to_owned(),
            root.path().join(PARENT),
            root.path().join(PARENT).join("node-1"),
        ] {
            assert_eq!(
                fs::read_to_string(level.join("cgroup.subtree_control")).unwrap(),
                "+cpu +memory +pids"
            );
        }
        assert_eq!(cgroup.scope.procs_files("dt-7"), [dir.join("cgroup.procs")]);
        // What the kernel would report.
        fs::write(dir.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        fs::write(dir.join("memory.current"), "4096\n").unwrap();
        fs::write(dir.join("pids.current"), "3\n").unwrap();
        fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(
            cgroup.usage(),
            CgroupUsage {
                cpu_usec: 1234,
                memory_bytes: 4096,
                pids: 3,
                oom_kills: 1
            }
        );
        assert_eq!(hierarchy.existing(), ["dt-7"]);
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        cgroup.destroy(Duration::from_secs(1)).unwrap();
        assert!(!dir.exists());
        assert!(hierarchy.existing().is_empty());
        // Bad names never reach the filesystem.
        assert!(matches!(
            hierarchy.create("../escape", &limits),
            Err(CgroupError::BadName(_))
        ));
    }

    #[test]
    fn a_failed_setup_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V2 {
            root: root.path().to_owned(),
        }
        .scope("node-1")
        .unwrap();
        // A directory where a control file must go makes the write fail.
        let dir = root.path().join(PARENT).join("node-1").join("dt-1");
        fs::create_dir_all(root.path().join(PARENT)).unwrap();
        let limits = Limits {
            cpu_millis: 500,
            cpu_max_millis: None,
            memory_bytes: 1 << 30,
            pids: 64,
        };
        fs::create_dir_all(root.path().join("cgroup.subtree_control")).unwrap();
        assert!(hierarchy.create("dt-1", &limits).is_err());
        assert!(!dir.exists());
    }

    /// The host's real hierarchy (v1 on CI): limits take effect, a process
    /// is charged, and destroy kills it and leaves no directory.
    #[test]
    fn real_cgroup_limits_and_cleans_up_as_root() {
        let test = "real_cgroup_limits_and_cleans_up_as_root";
        if !crate::test_support::require_root(test) {
            return;
        }
        let hierarchy = match detect_host() {
            Ok(hierarchy) => hierarchy,
            Err(error) => {
                crate::test_support::skip_or_fail(
                    test,
                    format_args!("the host's cgroups ({error})"),
                );
                return;
            }
        };
        let hierarchy = hierarchy
            .scope(&format!("test-{}", std::process::id()))
            .unwrap();
        let name = "dt-1".to_owned();
        let limits = Limits {
            cpu_millis: 250,
            cpu_max_millis: Some(500),
            memory_bytes: 64 << 20,
            pids: 16,
        };
        let cgroup = hierarchy.create(&name, &limits).unwrap();
        // Work done after joining is charged to the cgroup (v1 does not move
        // earlier charges along).
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 0.2; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; exec sleep 100",
            ])
            .spawn()
            .unwrap();
        cgroup.add(child.id()).unwrap();
        assert!(cgroup.pids().contains(&child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let usage = loop {
            let usage = cgroup.usage();
            if usage.cpu_usec > 0 && usage.memory_bytes > 0 && usage.pids == 1 {
                break usage;
            }
            assert!(Instant::now() < deadline, "never charged: {usage:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(usage.memory_bytes < limits.memory_bytes, "{usage:?}");
        cgroup.destroy(Duration::from_secs(5)).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed by destroy");
        for dir in hierarchy.dirs(&name) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        hierarchy.remove_if_empty();
        for dir in hierarchy.dirs("") {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}
