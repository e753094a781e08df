//! Compiles the protocols marrow speaks over gRPC with tonic/prost: Istio's CA protocol
//! (`proto/istio/v1/auth/ca.proto`) and OpenTelemetry's trace collector
//! (`proto/opentelemetry/…/trace_service.proto`, vendored from open-telemetry/opentelemetry-proto,
//! see `proto/opentelemetry/README`). The `.proto` files are parsed by `protox`, a protobuf
//! compiler in Rust, so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto");
    let descriptors = protox::compile(
        [
            "istio/v1/auth/ca.proto",
            "opentelemetry/proto/collector/trace/v1/trace_service.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
