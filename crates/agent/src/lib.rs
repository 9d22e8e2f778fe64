//! The endpoint agent's I/O side: fact gathering, the machine inventory, the delivery journal,
//! fetching, executing, the emulated Windows endpoint, and the service loop that ties them
//! together around the pure decisions in `core`.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod doctor;
pub mod emulated;
pub mod exec;
pub mod facts;
pub mod fetch;
pub mod inventory;
pub mod journal;
pub mod logfile;
pub mod relay;
pub mod service;
pub mod sources;
pub mod stamp;
pub mod time_setting;
pub mod trust;
pub mod upgrade;
#[cfg(windows)]
pub mod windows;
