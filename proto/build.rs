//! Compiles the `.proto` files with protox (pure Rust), so building Flotilla
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/flotilla/raft.proto",
        "proto/flotilla/cluster.proto",
        "proto/flotilla/node.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let file_descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;
    Ok(())
}
