//! `patchcast-agent`: the endpoint agent service (its command line lives in
//! `patchcast_agent::cli`). It names the agent crate, not the root library, so the binary
//! links no database, console or SSH client.

fn main() -> std::process::ExitCode {
    // Only the agent binary can replace itself (`agent::upgrade`); `patchcast agent` cannot.
    patchcast_agent::upgrade::remember_start();
    patchcast_agent::cli::main_from(std::env::args_os())
}
