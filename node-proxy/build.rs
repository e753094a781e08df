//! Compiles Istio's CA protocol (`proto/istio/v1/auth/ca.proto`) with tonic/prost. Needs
//! `protoc` (Debian's `protobuf-compiler`, installed by `cargo xtask setup`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/istio/v1/auth/ca.proto"], &["proto"])?;
    Ok(())
}
