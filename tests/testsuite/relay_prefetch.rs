//! A relay (update agent) end to end: real server, a real agent with the relay role and a real
//! neighbour agent. The neighbour's only source is the relay (every fallback off), so its
//! delivery succeeding proves the relay served it. OfficeScan's upgrade method 2: the
//! neighbour's delivery is held while the relay has not cached the package, and is dispatched
//! only after the relay pre-fetched it. The relay serves nobody without a server-signed token
//! for that content.

use crate::common::server_harness::{Backend, both_backends};
use crate::common::sources_harness::{Site, hotfix, publish, row, set_sources};
use patchcast::core::delivery::State;
use patchcast::transport::client::Client;
use std::time::{Duration, Instant};

async fn relay_serves_its_neighbour_after_prefetch(backend: Backend) {
    let Some(mut site) = Site::new(backend, &["relay-1", "ws-1"]).await else {
        return;
    };
    let dir = site.server.path().join("pkgs");
    let sha = publish(&site.server, &hotfix(&dir, "fix-r", "KB9000101"), &[]);

    let o = site.server.cli(&[
        "machine",
        "relay",
        "relay-1",
        "--enable",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("has the relay role"));
    let yaml = "fallback:\n  components: not_at_all\n  domain_settings: not_at_all\n  programs_and_hotfixes: not_at_all\nentries:\n  - addresses: 127.0.0.1\n    sources:\n      - relay: relay-1\n";
    let (ok, err) = set_sources(&site.server, yaml);
    assert!(ok, "{err}");

    // The neighbour runs; the relay does not yet.
    site.agent("ws-1").start();
    let admin = site.server.admin();
    let sc = site.run(&["ws-1"], &["fix-r"], 1).await;
    let created = patchcast::server::db::now_ms();
    // Wait for a poll of ws-1 that started after the scenario existed (each poll looks for
    // work first), then for one more: the delivery must still be held.
    for _ in 0..2 {
        let before = admin
            .machines()
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.hostname == "ws-1")
            .unwrap()
            .last_seen_ms
            .max(created);
        let start = Instant::now();
        loop {
            let seen = admin
                .machines()
                .await
                .unwrap()
                .into_iter()
                .find(|m| m.hostname == "ws-1")
                .unwrap()
                .last_seen_ms;
            if seen > before {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "ws-1 stopped polling"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let rows = site.rows(&sc).await;
    assert_eq!(
        row(&rows, "ws-1", "fix-r").state,
        State::Pending,
        "held until the relay has the content: {rows:#?}"
    );
    let relay_root = site.agent("relay-1").root.clone();
    let cached = relay_root.join("relay/cache").join(format!("{sha}.pcpkg"));
    assert!(!cached.exists());

    // The relay starts, pre-fetches, reports; then the neighbour is released.
    site.agent("relay-1").start();
    let rows = site.settle(&sc).await;
    let d = row(&rows, "ws-1", "fix-r");
    assert_eq!(d.state, State::Applied, "{d:#?}");
    let relays = admin.relays().await.unwrap();
    let r = &relays[0];
    let source = d.detail.source.as_deref().unwrap_or_default();
    assert!(
        source.starts_with(&format!("relay {}", r.machine_id)),
        "the neighbour names the relay as its source: {source}"
    );
    assert_eq!(r.cached, vec![sha.clone()]);

    // The cached file is the published archive, and it was cached before the dispatch.
    let (got, _) = patchcast::pack::hash::sha256_file(&cached).unwrap();
    assert_eq!(got.hex(), sha);
    let cached_at = std::fs::metadata(&cached)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let dispatched = d
        .history
        .iter()
        .find(|h| h.name() == "dispatched")
        .expect("a dispatch");
    assert!(
        cached_at <= dispatched.at_ms,
        "cached at {cached_at}, dispatched at {}",
        dispatched.at_ms
    );

    // Nobody fetches from the relay without a token the server signed for that content.
    let url = r.url.clone().expect("the relay reported its address");
    let fp = r.fingerprint.clone().expect("and its certificate");
    let path = format!("/api/v1/content/{sha}");
    for bearer in [
        None,
        // The neighbour's own agent credential is not a relay token.
        Some(format!(
            "x.{}",
            std::fs::read_to_string(site.agent("ws-1").root.join("credential")).unwrap()
        )),
        Some("pcrt1.00.00".to_string()),
    ] {
        let c = Client::new(&url, &fp, bearer.clone()).unwrap();
        let resp = c.request(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{bearer:?}");
    }
}
both_backends!(relay_serves_its_neighbour_after_prefetch);
