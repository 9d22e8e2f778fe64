//! Typed YAML documents: raw file formats, validated types, and the OS/language catalog.

pub mod catalog;
pub mod package;
pub mod problem;
pub mod raw;
pub mod scenario;
pub mod sources;
pub mod types;
pub mod yaml;
