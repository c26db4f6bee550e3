//! Compiles `proto/` with protox (no system protoc) and tonic-prost-build.
//!
//! Two outputs: the Rust code, and the encoded descriptor set. The descriptor
//! set is encoded by protox itself so that extension options such as
//! `google.api.http` survive; prost-types would drop them as unknown fields.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "tether/v1/rules.proto",
    "tether/v1/admin.proto",
    "tether/v1/node.proto",
    "tether/v1/tenancy.proto",
    "tether/v1/access_key.proto",
    "tether/v1/secret.proto",
    "tether/v1/event.proto",
    "tether/v1/settings.proto",
    "tether/v1/pool.proto",
    "tether/v1/insights.proto",
    "tether/v1/usage.proto",
    "tether/v1/summary.proto",
    "tether/v1/organization.proto",
    "tether/v1/project.proto",
    "tether/v1/job.proto",
    "tether/v1/workload.proto",
    "tether/v1/placement.proto",
    "tether/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;
    std::fs::write(out.join("tether_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::LeanCodec")
        // prost::Name on every message: the codec finds a request's
        // descriptor (and its field rules) by name.
        .compile_fds_with_config(compiler.file_descriptor_set(), {
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}
