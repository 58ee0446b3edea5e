//! `drove fs`: put, get, cat, ls, rm, mkdir and stat on `drove://` paths.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use drove_client::fs::{FsEntry, PutOptions};
use futures::StreamExt;

use crate::ClusterArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum FsCommand {
    /// Copy a local file into drove fs; it appears only once every chunk is stored.
    Put(PutArgs),
    /// Copy a drove fs file to a local file, which appears only once whole.
    Get(GetArgs),
    /// Print a drove fs file's bytes.
    Cat(PathArgs),
    /// List a directory, or show a file.
    Ls(LsArgs),
    /// Remove a file, or a directory with --recursive.
    Rm(RmArgs),
    /// Make a directory and its missing parents.
    Mkdir(PathArgs),
    /// Show a file's chunks and where their replicas are.
    Stat(PathArgs),
}

#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// The local file.
    local: PathBuf,
    /// Where it goes: drove://PATH.
    remote: String,
    /// Replicas of each chunk, on distinct workers (default: 3, or as many workers as
    /// store chunks, with a warning).
    #[arg(long)]
    replication: Option<u32>,
    /// Bytes per chunk, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = drove_core::parse_bytes)]
    chunk_size: u64,
    /// Replace a file that exists at the path.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The drove fs file: drove://PATH.
    remote: String,
    /// The local file to write.
    local: PathBuf,
    /// Replace a local file that exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub(crate) struct PathArgs {
    /// drove://PATH.
    path: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub(crate) struct LsArgs {
    /// drove://PATH (default: the root).
    #[arg(default_value = "drove://")]
    path: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub(crate) struct RmArgs {
    /// drove://PATH.
    path: String,
    /// Remove a directory and everything under it.
    #[arg(long, short)]
    recursive: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Checks that `path` is a drove:// path, before anything connects.
fn remote(path: &str) -> Result<&str> {
    if !path.starts_with("drove://") {
        bail!(
            "'{path}' is not a drove fs path; write it as drove://{}",
            path.trim_start_matches('/')
        );
    }
    drove_core::fs::normalize(path).map_err(anyhow::Error::msg)?;
    Ok(path)
}

pub(crate) async fn run(command: FsCommand) -> Result<()> {
    match command {
        FsCommand::Put(args) => {
            let path = remote(&args.remote)?;
            if !args.local.is_file() {
                bail!(
                    "'{}' is not a file; drove fs put copies one local file",
                    args.local.display()
                );
            }
            let options = PutOptions {
                replication: args.replication.unwrap_or(0),
                chunk_bytes: args.chunk_size,
                overwrite: args.overwrite,
            };
            if args.replication == Some(0) {
                bail!("--replication 0 keeps no copy; give 1 or more");
            }
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            let put = session.fs_put(&args.local, path, &options).await?;
            if let Some(warning) = &put.warning {
                eprintln!("warning: {warning}");
            }
            eprintln!(
                "wrote {} ({} bytes) in {} chunk(s), {} replica(s) each",
                path, put.bytes, put.chunks, put.replication
            );
        }
        FsCommand::Get(args) => {
            let path = remote(&args.remote)?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            let bytes = session.fs_get(path, &args.local, args.overwrite).await?;
            eprintln!("read {path} ({bytes} bytes) into {}", args.local.display());
        }
        FsCommand::Cat(args) => {
            let path = remote(&args.path)?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            let mut bytes = session.fs_read(path).await?;
            let mut out = std::io::stdout().lock();
            while let Some(piece) = bytes.next().await {
                let piece = piece?;
                if let Err(e) = out.write_all(&piece) {
                    // A closed pipe (`| head`) ends the output, not with an error.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e.into());
                }
            }
            out.flush()?;
        }
        FsCommand::Ls(args) => {
            let path = remote(&args.path)?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            for entry in session.fs_list(path).await? {
                print_entry(&entry);
            }
        }
        FsCommand::Rm(args) => {
            let path = remote(&args.path)?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            session.fs_remove(path, args.recursive).await?;
            eprintln!("removed {path}");
        }
        FsCommand::Mkdir(args) => {
            let path = remote(&args.path)?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            session.fs_mkdir(path).await?;
        }
        FsCommand::Stat(args) => {
            let path = remote(&args.path)?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            let entry = session.fs_stat(path).await?;
            if entry.is_dir {
                println!("drove://{}: directory", entry.name);
                return Ok(());
            }
            println!(
                "drove://{}: {} bytes, {} chunk(s) of up to {}, replication {}",
                entry.name,
                entry.size,
                entry.chunks.len(),
                drove_core::human_bytes(entry.chunk_bytes),
                entry.replication
            );
            println!(
                "{:<4}  {:<16}  {:>12}  {:<8}  replicas",
                "#", "chunk", "bytes", "crc32c"
            );
            for (i, c) in entry.chunks.iter().enumerate() {
                let replicas: Vec<String> = (c.replicas.iter())
                    .map(|r| match r.zone.as_str() {
                        "" => format!("worker {} ({})", r.worker_id, r.addr),
                        zone => format!("worker {} ({}, zone {zone})", r.worker_id, r.addr),
                    })
                    .collect();
                println!(
                    "{i:<4}  {:016x}  {:>12}  {:08x}  {}",
                    c.id,
                    c.len,
                    c.crc32c,
                    if replicas.is_empty() {
                        "none live".to_string()
                    } else {
                        replicas.join(", ")
                    }
                );
            }
        }
    }
    Ok(())
}

fn print_entry(entry: &FsEntry) {
    if entry.is_dir {
        println!("{:>14}  {}/", "dir", entry.name);
    } else {
        println!("{:>14}  {}", entry.size, entry.name);
    }
}
