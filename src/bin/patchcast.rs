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
    let cli = patchcast::cli::Cli::parse();
    // A command whose output is piped into `head` or `true` ends quietly when the reader goes
    // away, as `cat` does, instead of panicking on the closed pipe. Long-running commands keep
    // SIGPIPE ignored: they write to children and logs that may close without ending them.
    #[cfg(unix)]
    if !cli.command.serves() {
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match patchcast::cli::run(cli) {
        Ok(code) => code,
        // Usage errors exit 2 from clap itself; a failed operation exits 1, as cargo and git do.
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
