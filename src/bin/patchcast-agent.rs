//! `patchcast-agent`: the endpoint agent service (its command line lives in `agent::cli`).

fn main() -> std::process::ExitCode {
    patchcast::agent::cli::main_from(std::env::args_os())
}
