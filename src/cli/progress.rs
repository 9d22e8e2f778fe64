//! Progress bars for long work, drawn on stderr only when it is a terminal and output is not JSON.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bytes(total: u64, message: &str, json: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}
