//! patchcast: remote patch distribution.
//!
//! The root package is the command-line front end (`cli`, `loadgen`) and the two binaries;
//! the work is done by the workspace's crates, layered so that each depends only on those
//! below it (see ARCHITECTURE.md):
//! `patchcast-core` (model + pure decisions) ← `patchcast-pack` (archives, keys, lint) ←
//! `patchcast-proto` (protocol types, pinned HTTPS) ← `patchcast-smb`, `patchcast-runner` ←
//! `patchcast-agent` / `patchcast-server` (with the console and the SSH client).
//! They are re-exported here under their module names, so `patchcast::server::db` and
//! `patchcast::core::pipeline` name the same items as inside the crates.

pub mod cli;
pub mod fuzzing;
pub mod loadgen;

pub use patchcast_agent as agent;
pub use patchcast_core as core;
pub use patchcast_core::model;
pub use patchcast_pack as pack;
pub use patchcast_proto as transport;
pub use patchcast_proto::host;
pub use patchcast_runner as runner;
pub use patchcast_server as server;
pub use patchcast_server::{ssh, web};
pub use patchcast_smb as smb;
