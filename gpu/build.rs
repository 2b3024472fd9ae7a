//! Compiles the WGSL shaders in `shaders/` to SPIR-V with naga (pure Rust,
//! from crates.io): reproducible on a fresh machine, no system compiler.

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let shaders: &[&str] = &["i420", "compose"];
    for name in shaders {
        let path = format!("shaders/{name}.wgsl");
        println!("cargo:rerun-if-changed={path}");
        let source = std::fs::read_to_string(&path).expect("read the shader");
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|error| panic!("{path}: {}", error.emit_to_string(&source)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::PUSH_CONSTANT,
        )
        .validate(&module)
        .unwrap_or_else(|error| panic!("{path}: {error:?}"));
        let options = naga::back::spv::Options {
            lang_version: (1, 0),
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&module, &info, &options, None)
            .unwrap_or_else(|error| panic!("{path}: {error}"));
        let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_le_bytes()).collect();
        std::fs::write(out.join(format!("{name}.spv")), bytes).expect("write SPIR-V");
    }
}
