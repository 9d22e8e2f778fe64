//! patchcast: remote patch distribution.
//!
//! `model` holds the typed documents, `core` the pure decisions (no I/O), `pack` building,
//! linting and verifying signed archives, `cli` the command-line front end.

pub mod agent;
pub mod cli;
pub mod core;
pub mod host;
pub mod loadgen;
pub mod model;
pub mod pack;
pub mod runner;
pub mod server;
pub mod smb;
pub mod ssh;
pub mod transport;
pub mod web;
