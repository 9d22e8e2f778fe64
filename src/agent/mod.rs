//! The endpoint agent's I/O side. Today: gathering identification facts on this machine.
//! The work loop, fetch and execution arrive with the agent service issue.

pub mod facts;
