//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! tonic/prost code plus the descriptor set served by gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    for entry in std::fs::read_dir("proto/lockstep/v1")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    files.sort();
    let fds = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("lockstep_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect` constructors: they would clash with `AgentService.Connect`;
        // clients are built with `::new(channel)`.
        .build_transport(false)
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
