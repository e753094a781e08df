//! Compiles Istio's CA protocol (`proto/istio/v1/auth/ca.proto`) with tonic/prost. The `.proto`
//! is parsed by `protox`, a protobuf compiler in Rust, so building needs no `protoc` on the
//! machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto");
    let descriptors = protox::compile(["istio/v1/auth/ca.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
