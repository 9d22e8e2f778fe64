//! patchcast's pure core: the typed documents (`model`) and the decisions taken on them
//! (delivery states, the delivery pipeline, identification, schedules, sources, versions,
//! error codes). No I/O, no clock, no async: callers gather facts and act on the answers;
//! the crate depends on nothing that could do otherwise (no tokio, no file system).

pub mod model;

pub mod delivery;
pub mod errors;
pub mod facts;
pub mod faults;
pub mod identify;
pub mod lifecycle;
pub mod machine_names;
pub mod pipeline;
pub mod schedule;
pub mod sources;
pub mod versions;
