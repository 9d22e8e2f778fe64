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
    let cli = patchcast::cli::Cli::parse();
    // `patchcast server` sets up its log itself, once its configuration says which format.
    if !cli.runs_server() {
        patchcast::cli::server::init_logging(patchcast::cli::server::LogFormat::Text);
    }
    quiet_on_closed_stdout();
    let json = cli.json;
    match patchcast::cli::run(cli) {
        Ok(code) => code,
        // Usage errors exit 2 from clap itself; a failed operation exits 1, as cargo and git do.
        Err(e) if json => {
            // Scripts get the error as JSON too, with the result code the server gave, if any.
            use patchcast::transport::client::CallError;
            let code = e.chain().find_map(|c| match c.downcast_ref::<CallError>() {
                Some(CallError::Status { body, .. }) => body.code,
                _ => None,
            });
            eprintln!(
                "{}",
                serde_json::json!({ "error": format!("{e:#}"), "code": code })
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Output piped into `head` or `true` ends the program quietly when the reader goes away
/// (`print!` panics on a closed stdout; see `cli::end_on_closed_stdout`).
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            patchcast::cli::end_on_closed_stdout();
        }
        default(info)
    }));
}
