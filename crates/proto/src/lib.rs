//! How patchcast processes talk: the agent protocol's types, pinned TLS, and the HTTP client.

pub mod host;

pub mod admin_api;
pub mod agent_api;
pub mod client;
pub mod csv;
pub mod keys_api;
pub mod protocol;
pub mod proxy;
pub mod range;
pub mod repin;
pub mod schedule_api;
pub mod sources;
pub mod ssh_api;
pub mod tls;
