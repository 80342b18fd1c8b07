//! Generates the KEDA external scaler server from `proto/externalscaler.proto`.
//! Uses `$PROTOC` when set, else the protoc shipped inside `protoc-bin-vendored`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/externalscaler.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .file_descriptor_set_path(out.join("externalscaler_descriptor.bin"))
        .compile_with_config(config, &["proto/externalscaler.proto"], &["proto"])?;
    Ok(())
}
