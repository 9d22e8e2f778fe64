use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `patchcast agent …` is the agent program itself, so that `patchcast demo` can start real
    // agents from the one binary `cargo run` builds; `patchcast agent install` is the
    // administrator's command and stays out of the agent.
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == "agent") {
        let argv0 = args.next().unwrap_or_default();
        args.next();
        let mut rest = args.peekable();
        if rest.peek().is_some_and(|a| a == "install") {
            rest.next();
            return patchcast::cli::ssh::install_main(std::iter::once(argv0).chain(rest));
        }
        return patchcast::agent::cli::main_from(std::iter::once(argv0).chain(rest));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PATCHCAST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match patchcast::cli::run(patchcast::cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
