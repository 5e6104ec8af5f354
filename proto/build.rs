//! Compiles `proto/parley/v1/*.proto` with `protox` (a pure-Rust protobuf
//! compiler), so building Parley never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/parley/v1/session.proto",
        "proto/parley/v1/content.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes([
            ".parley.v1.Send.body",
            ".parley.v1.Envelope.body",
            ".parley.v1.Deliver.body",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
