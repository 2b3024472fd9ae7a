//! The Debian packages Flotilla needs, in one table, and the check `dev` and `test` make
//! before anything else: as root with apt it installs what is missing, otherwise it says
//! the one command to run. When everything is there it runs no apt at all.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::process::{Command, ExitStatus, Stdio};

use crate::project;

/// Why a group of packages is needed; each task checks the groups it depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Build,
    Desktops,
    Tests,
}

pub struct PackageGroup {
    pub need: Need,
    pub needed_by: &'static str,
    pub packages: &'static [&'static str],
}

/// Every Debian package the project needs, by who needs it. `.ci/run`'s list is the union
/// of all three groups; keep it that way when a package is added.
pub const PACKAGE_GROUPS: &[PackageGroup] = &[
    // Building the workspace: gcc/libc6-dev for crates with C parts, g++ for the stream's
    // H.264 encoder (openh264 is built from source), pkg-config for -sys crates that look
    // up system libraries, libxkbcommon-dev + xkb-data for the compositor's keymaps (its
    // build script stops with a message when libxkbcommon is missing).
    PackageGroup {
        need: Need::Build,
        needed_by: "building flotilla",
        packages: &[
            "gcc",
            "g++",
            "libc6-dev",
            "pkg-config",
            "libxkbcommon-dev",
            "xkb-data",
        ],
    },
    // Running desktops (`flotilla dev` and the end-to-end tests): foot, a font and
    // chromium are the apps in each desktop; libvulkan1 + mesa-vulkan-drivers give the
    // node a Vulkan loader and lavapipe when the host has no GPU driver; nftables applies
    // the desktops' egress rules and iproute2 wires their networks; git and
    // ca-certificates are what the coding agents inside a desktop work with; procps (ps)
    // is for looking into a desktop that misbehaves.
    PackageGroup {
        need: Need::Desktops,
        needed_by: "running desktops",
        packages: &[
            "foot",
            "fonts-dejavu-core",
            "chromium",
            "libvulkan1",
            "mesa-vulkan-drivers",
            "nftables",
            "iproute2",
            "git",
            "ca-certificates",
            "procps",
        ],
    },
    // The tests on top: perl + coreutils (timeout) + bash for the probes the network tests
    // run inside sandboxes and gpud's perl guest; weston for weston-simple-shm, a real
    // Wayland client of the compositor's tests; python3 + python3-venv for schemathesis,
    // the API contract test, and the model providers' SDKs the LLM tests drive (both
    // installed from PyPI into virtualenvs, `python.rs`).
    PackageGroup {
        need: Need::Tests,
        needed_by: "running the tests",
        packages: &[
            "perl",
            "coreutils",
            "bash",
            "weston",
            "python3",
            "python3-venv",
        ],
    },
];

/// What the check found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// dpkg says every package is installed (possibly just now).
    AllInstalled,
    /// There is no dpkg-query (not Debian): nothing could be checked.
    Unknown,
}

/// Why the packages could not be made present.
#[derive(Debug)]
pub enum PackageError {
    Query(io::Error),
    Missing {
        missing: String,
        command: String,
    },
    Apt {
        command: String,
        status: Result<ExitStatus, io::Error>,
    },
    StillMissing {
        missing: String,
    },
}

impl fmt::Display for PackageError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackageError::Query(_) => {
                write!(formatter, "could not run dpkg-query to check packages")
            }
            PackageError::Missing { missing, command } => write!(
                formatter,
                "missing Debian packages ({missing}); install them with:\n\n    {command}\n"
            ),
            PackageError::Apt { command, status } => match status {
                Ok(status) => write!(
                    formatter,
                    "`{command}` failed ({status}); see apt's output above"
                ),
                Err(_) => write!(formatter, "could not run `{command}`"),
            },
            PackageError::StillMissing { missing } => write!(
                formatter,
                "apt-get install succeeded but dpkg still lacks {missing}; install them by hand"
            ),
        }
    }
}

impl std::error::Error for PackageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PackageError::Query(source) => Some(source),
            PackageError::Apt {
                status: Err(source),
                ..
            } => Some(source),
            _ => None,
        }
    }
}

/// The packages of the groups `needs` names, in table order.
pub fn packages_for(needs: &[Need]) -> Vec<&'static str> {
    PACKAGE_GROUPS
        .iter()
        .filter(|group| needs.contains(&group.need))
        .flat_map(|group| group.packages.iter().copied())
        .collect()
}

/// Makes sure the packages of `needs` are installed: installs the missing ones as root
/// with apt (`apt-get update` once, then one `apt-get install`), else fails with the
/// command to run.
pub fn ensure(needs: &[Need]) -> Result<Presence, PackageError> {
    if !project::on_path("dpkg-query") {
        eprintln!(
            "xtask: note: no dpkg-query here, so the system packages are not checked; \
             on Debian these are needed: {}",
            packages_for(needs).join(" ")
        );
        return Ok(Presence::Unknown);
    }
    let missing = missing_packages(&packages_for(needs))?;
    if missing.is_empty() {
        return Ok(Presence::AllInstalled);
    }
    let root = project::is_root();
    if !(root && project::on_path("apt-get")) {
        let sudo = if root { "" } else { "sudo " };
        return Err(PackageError::Missing {
            missing: describe(&missing),
            command: format!(
                "{sudo}apt-get install -y --no-install-recommends {}",
                missing.join(" ")
            ),
        });
    }
    eprintln!("xtask: installing {}", describe(&missing));
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(missing.iter().copied());
    apt(&install)?;
    let still_missing = missing_packages(&missing)?;
    if !still_missing.is_empty() {
        return Err(PackageError::StillMissing {
            missing: still_missing.join(" "),
        });
    }
    Ok(Presence::AllInstalled)
}

/// The packages among `packages` that dpkg does not have installed.
fn missing_packages<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>, PackageError> {
    // dpkg-query exits 1 and complains on stderr about packages it never heard of; the
    // ones it knows are still listed on stdout, which is all that is read.
    let output = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${Status}\n")
        .args(packages)
        .stderr(Stdio::null())
        .output()
        .map_err(PackageError::Query)?;
    let dpkg_output = String::from_utf8_lossy(&output.stdout);
    let installed = installed_packages(&dpkg_output);
    Ok(packages
        .iter()
        .copied()
        .filter(|package| !installed.contains(package))
        .collect())
}

/// The names dpkg-query's `${Package} ${Status}` lines report as installed (`install ok
/// installed`, `hold ok installed`); removed packages keep a `deinstall ok config-files`
/// line and do not count.
fn installed_packages(dpkg_output: &str) -> HashSet<&str> {
    dpkg_output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let package = words.next()?;
            (words.nth(2)? == "installed").then_some(package)
        })
        .collect()
}

/// `building flotilla: g++; running desktops: foot chromium`.
fn describe(missing: &[&str]) -> String {
    PACKAGE_GROUPS
        .iter()
        .filter_map(|group| {
            let names: Vec<&str> = group
                .packages
                .iter()
                .copied()
                .filter(|package| missing.contains(package))
                .collect();
            (!names.is_empty()).then(|| format!("{}: {}", group.needed_by, names.join(" ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn apt(args: &[&str]) -> Result<(), PackageError> {
    let mut command = Command::new("apt-get");
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    project::echo(&command);
    let status = command.status();
    match status {
        Ok(status) if status.success() => Ok(()),
        status => Err(PackageError::Apt {
            command: project::display(&command),
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lines_are_read() {
        let dpkg_output = "gcc install ok installed\n\
                           foot deinstall ok config-files\n\
                           bash hold ok installed\n\
                           weston install ok not-installed\n";
        let installed = installed_packages(dpkg_output);
        assert_eq!(installed, HashSet::from(["gcc", "bash"]));
    }

    #[test]
    fn every_package_is_listed_once_and_ci_list_is_covered() {
        let all = packages_for(&[Need::Build, Need::Desktops, Need::Tests]);
        let unique: HashSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a package is listed twice");
        // What .ci/run installed before it called xtask.
        for package in "ca-certificates gcc g++ libc6-dev pkg-config procps iproute2 \
                        libvulkan1 mesa-vulkan-drivers nftables perl coreutils bash \
                        libxkbcommon-dev xkb-data foot weston fonts-dejavu-core chromium"
            .split_whitespace()
        {
            assert!(
                unique.contains(package),
                "{package} is not in PACKAGE_GROUPS"
            );
        }
    }

    #[test]
    fn missing_packages_are_described_by_group() {
        assert_eq!(
            describe(&["weston", "g++", "foot"]),
            "building flotilla: g++; running desktops: foot; running the tests: weston"
        );
    }
}
