//! Compiles tests/proto/echo.proto (the test gRPC service) with protoc,
//! which the project's setup installs (`protobuf-compiler`).

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    tonic_prost_build::compile_protos("proto/echo.proto")
}
