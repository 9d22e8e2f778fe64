//! The pure decision core: no I/O, no clocks, no async. Callers gather facts and act on
//! the answers.

pub mod delivery;
pub mod errors;
pub mod identify;
pub mod pipeline;
pub mod schedule;
pub mod sources;
pub mod versions;
