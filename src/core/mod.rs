//! The pure decision core: no I/O, no clocks, no async. Callers gather facts and act on
//! the answers.

pub mod identify;
pub mod versions;
