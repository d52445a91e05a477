//! Generates the ONNX protobuf types from `proto/onnx.proto` with prost, using protox as a
//! pure-Rust protobuf compiler (no system `protoc`, no network).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    // `raw_data` (and every other bytes field) as `bytes::Bytes`: slices of the file buffer, no copy.
    config.bytes(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
