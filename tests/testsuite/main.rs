//! The integration tests, one module per former `tests/*.rs` file, built as one test binary
//! (`[[test]] testsuite` in Cargo.toml): the dependency tree is linked once, not once per
//! file. Tests run as threads of this one process, so none may change the working directory
//! or the environment; `common` holds the shared helpers.
//!
//! One module's tests: `cargo test --test testsuite server_api::`.

mod common;

mod agent_bench_server;
mod agent_emulated;
mod agent_linux;
mod agent_refusals;
mod agent_resume;
mod agent_upgrade;
mod archive;
mod cli;
mod console_actions;
mod demo_unprivileged;
mod e2e_fleet;
mod fault_trials;
mod faults;
mod fuzz_corpora;
mod keys_change;
mod lifecycle;
mod lifecycle_requires;
mod lifecycle_versions;
mod lint_fixtures;
mod linux_samples;
mod migrations;
mod multi_server;
mod operations;
mod packaging;
mod proxy;
mod relay_prefetch;
mod reporting;
mod rollout_waves;
mod schedule_caps;
mod schedule_docs;
mod schedule_windows;
mod server_api;
mod server_backup;
mod server_crash;
mod server_delivery;
mod server_scenarios;
mod smb_share;
mod sources_cli;
mod sources_fallback;
mod ssh_agent_install;
mod ssh_delivery;
mod web_console;
mod web_http;
mod windows_wine;
