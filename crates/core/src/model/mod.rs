//! Typed YAML documents: raw file formats, validated types, and the OS/language catalog.

pub mod catalog;
pub mod group_policy;
pub mod package;
pub mod pitfalls;
pub mod problem;
pub mod raw;
pub mod rollout;
pub mod scenario;
pub mod share;
pub mod sources;
pub mod template;
pub mod types;
pub mod yaml;
