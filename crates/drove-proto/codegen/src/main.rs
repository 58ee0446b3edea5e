//! Generates `drove-proto/src/generated/drove.v1.rs` from `drove-proto/proto/drove.proto`.
//!
//! drove checks the generated code in, so building drove compiles no protobuf
//! compiler. After changing the .proto file, run
//! `cargo run --manifest-path crates/drove-proto/codegen/Cargo.toml` to regenerate;
//! with `--check` it only reports whether the checked-in code is current (CI runs it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: drove-proto-codegen [--check]";

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("error: unknown argument {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(check: bool) -> Result<(), String> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the code generator is not inside drove-proto")?;
    let proto_dir = crate_dir.join("proto");
    let target = crate_dir.join("src/generated/drove.v1.rs");
    let generated = generate(&proto_dir)?;
    let current = std::fs::read_to_string(&target).unwrap_or_default();
    if generated == current {
        println!("{} is current", target.display());
        return Ok(());
    }
    if check {
        return Err(format!(
            "{} does not match proto/drove.proto; regenerate it with \
             `cargo run --manifest-path crates/drove-proto/codegen/Cargo.toml` and commit the result",
            target.display()
        ));
    }
    // Written beside the target and renamed over it, so it is never half-written.
    let partial = target.with_extension("rs.tmp");
    std::fs::write(&partial, &generated)
        .and_then(|()| std::fs::rename(&partial, &target))
        .map_err(|e| format!("writing {}: {e}", target.display()))?;
    println!("wrote {}", target.display());
    Ok(())
}

/// Compiles the .proto files with protox (pure Rust, no `protoc`) and returns the
/// code tonic's generator makes from them.
fn generate(proto_dir: &Path) -> Result<String, String> {
    let descriptors = protox::compile([proto_dir.join("drove.proto")], [proto_dir])
        .map_err(|e| format!("compiling {}: {e:?}", proto_dir.display()))?;
    let out: PathBuf =
        std::env::temp_dir().join(format!("drove-proto-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let result = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .out_dir(&out)
        .compile_fds(descriptors)
        .map_err(|e| format!("generating code: {e}"))
        .and_then(|()| {
            let file = out.join("drove.v1.rs");
            std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))
        });
    let _ = std::fs::remove_dir_all(&out);
    result
}
