//! The compositor links libxkbcommon (smithay's keyboard): say plainly
//! what to install if it is missing, instead of a linker error.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBRARY_PATH");
    let mut dirs: Vec<std::path::PathBuf> = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/lib/x86_64-linux-gnu",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    if let Some(paths) = std::env::var_os("LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    let found = dirs.iter().any(|dir| dir.join("libxkbcommon.so").exists());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if !found && target_os == "linux" {
        panic!(
            "\n\nFlotilla's compositor needs libxkbcommon to build.\n\
             Install it:  apt-get install libxkbcommon-dev xkb-data\n\
             (or point LIBRARY_PATH at a directory holding libxkbcommon.so)\n\n"
        );
    }
}
