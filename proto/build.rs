//! Compiles `tessera/v1/*.proto` with protox (pure Rust), so a fresh machine
//! needs nothing but cargo: no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tessera/v1/ticket_store.proto",
        "tessera/peer/v1/peer.proto",
        "tessera/journal/v1/journal.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Kept for gRPC server reflection (grpcurl works without the .proto files).
    let descriptor_path = out_dir.join("tessera_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::Codec")
        .bytes(".tessera.v1")
        .bytes(".tessera.peer.v1")
        .bytes(".tessera.journal.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
