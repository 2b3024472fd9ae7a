//! Where things are (the workspace root, the target directory, cargo) and how xtask runs
//! a command: it prints it first, so a log shows what ran.

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root: the parent of this crate's directory. Taken from the compile-time
/// `CARGO_MANIFEST_DIR`, so it is right however the binary is started.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask's manifest directory is a folder inside the workspace")
        .to_path_buf()
}

/// The target directory cargo builds into: `CARGO_TARGET_DIR` when set (a relative one is
/// taken from the directory xtask was started in, as cargo does), else `<root>/target`.
/// `build.target-dir` in a cargo config file is not read.
pub fn target_dir(workspace_root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                env::current_dir()
                    .map(|current| current.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => workspace_root.join("target"),
    }
}

/// `cargo <args>` run in the workspace root with the cargo that started xtask (`CARGO`).
/// A `CARGO_TARGET_DIR` is passed on made absolute, so the child builds where xtask looks.
pub fn cargo(workspace_root: &Path, args: &[&str]) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(workspace_root);
    if env::var_os("CARGO_TARGET_DIR").is_some_and(|dir| !dir.is_empty()) {
        command.env("CARGO_TARGET_DIR", target_dir(workspace_root));
    }
    command
}

/// The command as a shell line, for echoing.
pub fn display(command: &Command) -> String {
    let program = command.get_program().to_string_lossy();
    let program = Path::new(&*program)
        .file_name()
        .map(OsStr::to_string_lossy)
        .unwrap_or(program.clone());
    let mut line = program.into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Prints `$ <command>` on stderr, before running it.
pub fn echo(command: &Command) {
    eprintln!("$ {}", display(command));
}

/// Whether xtask runs as root. The owner of `/proc/self` is the process's effective uid,
/// which std can read without libc.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|metadata| metadata.uid() == 0)
}

/// Whether `program` is an executable file in one of `PATH`'s directories.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
    })
}
