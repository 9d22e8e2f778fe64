//! Custom update sources end to end: the real server and a real agent (emulated Windows
//! endpoint). A source that cannot be reached is skipped for the next one; when every source
//! is down, each kind of content follows its own switch: the application ("components":
//! from the server) is fetched from the server and applied, the hotfix ("programs and hot
//! fixes": not at all) fails with E27 naming every source that failed.

use crate::common::server_harness::{Backend, both_backends};
use crate::common::sources_harness::{
    Site, application, closed_port, hotfix, publish, row, set_sources,
};
use patchcast::core::delivery::State;
use patchcast::core::errors::Code;

async fn unreachable_sources_and_the_switches(backend: Backend) {
    let Some(mut site) = Site::new(backend, &["ws-1"]).await else {
        return;
    };
    let dir = site.server.path().join("pkgs");
    publish(&site.server, &application(&dir, "app-1"), &[]);
    publish(&site.server, &hotfix(&dir, "fix-1", "KB9000001"), &[]);
    publish(&site.server, &hotfix(&dir, "fix-2", "KB9000002"), &[]);
    let (dead_smb, dead_https) = (closed_port(), closed_port());

    // 1. Every source down: per-category switches.
    let yaml = format!(
        "fallback:\n  components: server\n  programs_and_hotfixes: not_at_all\nentries:\n  - addresses: 127.0.0.1\n    sources:\n      - smb: smb://127.0.0.1:{dead_smb}/gone/dir\n      - https: https://127.0.0.1:{dead_https}/mirror\n"
    );
    let (ok, err) = set_sources(&site.server, &yaml);
    assert!(ok, "{err}");
    site.agent("ws-1").start();
    let sc = site.run(&["ws-1"], &["app-1", "fix-1"], 1).await;
    let rows = site.settle(&sc).await;

    let app = row(&rows, "ws-1", "app-1");
    assert_eq!(app.state, State::Applied, "{app:#?}");
    let src = app.detail.source.as_deref().unwrap_or_default();
    assert!(
        src.starts_with(&format!("server {}", site.server.url)),
        "the application came from the server: {src}"
    );

    let fix = row(&rows, "ws-1", "fix-1");
    assert_eq!(fix.state, State::Failed { code: Code::E27 }, "{fix:#?}");
    let detail = fix.detail.params.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("smb://127.0.0.1:{dead_smb}/gone/dir"))
            && detail.contains(&format!("https://127.0.0.1:{dead_https}/mirror")),
        "E27 names every source tried: {detail}"
    );
    // A source that could not be connected to is listed with its own fault's code (E03).
    assert!(
        detail.contains(&format!("https://127.0.0.1:{dead_https}/mirror: E03: ")),
        "{detail}"
    );
    let msg = &fix.rendered.as_ref().expect("rendered").message;
    assert!(msg.contains("every custom update source"), "{msg}");

    // `patchcast results` shows the source beside the state.
    let o = site
        .server
        .cli(&["results", "--scenario", &sc, "--lang", "en"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("source: server {}", site.server.url)),
        "{text}"
    );

    // 2. An unreachable share is skipped for the next source (here the server, listed), even
    // with every fallback off.
    let yaml = format!(
        "fallback:\n  components: not_at_all\n  domain_settings: not_at_all\n  programs_and_hotfixes: not_at_all\nentries:\n  - addresses: 127.0.0.1\n    sources:\n      - smb: smb://127.0.0.1:{dead_smb}/gone/dir\n      - server\n"
    );
    let (ok, err) = set_sources(&site.server, &yaml);
    assert!(ok, "{err}");
    let sc = site.run(&["ws-1"], &["fix-2"], 1).await;
    let rows = site.settle(&sc).await;
    let fix2 = row(&rows, "ws-1", "fix-2");
    assert_eq!(fix2.state, State::Applied, "{fix2:#?}");
    assert!(
        fix2.detail
            .source
            .as_deref()
            .is_some_and(|s| s.starts_with("server ")),
        "{fix2:#?}"
    );
    let log = site.agent("ws-1").log();
    assert!(
        log.contains("update source failed; trying the next"),
        "the agent says it moved on: {log}"
    );
}
both_backends!(unreachable_sources_and_the_switches);
