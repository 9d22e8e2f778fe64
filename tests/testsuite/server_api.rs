//! The real `patchcast server` process: enrollment and credential misuse, groups, publishing
//! (unsigned, untrusted, tampered, disk reserve E17) and content range requests. Each test
//! runs on SQLite and on PostgreSQL.

use crate::common::server_harness::{Backend, TestServer, both_backends};
use patchcast::core::errors::Code;
use patchcast::loadgen::{Behaviour, SimAgent, inventory};
use patchcast::transport::admin_api::{Group, GroupFilter, Labels, TokenRequest};
use patchcast::transport::client::{CallError, Client};
use patchcast::transport::protocol::{self as proto, AgentState, Poll, PollResponse};

fn code_of<T: std::fmt::Debug>(r: Result<T, CallError>) -> (u16, Option<Code>) {
    match r {
        Err(CallError::Status { status, body, .. }) => (status, body.code),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

/// A simulated agent enrolled on `s` with a fresh token, reporting `host` as its hostname.
async fn enrolled(s: &TestServer, host: &str, n: u32) -> SimAgent {
    let t = s
        .admin()
        .create_token(&TokenRequest {
            group: None,
            uses: None,
            expires_secs: 3600,
        })
        .await
        .unwrap();
    SimAgent::enroll(
        &s.url,
        &s.fingerprint,
        &t.token,
        inventory(host, n),
        Behaviour::Apply,
    )
    .await
    .unwrap()
}

async fn enrollment_and_misuse(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let admin = s.admin();
    let once = admin
        .create_token(&TokenRequest {
            group: Some("lab".into()),
            uses: Some(1),
            expires_secs: 3600,
        })
        .await
        .unwrap();
    let a = SimAgent::enroll(
        &s.url,
        &s.fingerprint,
        &once.token,
        inventory("alpha", 1),
        Behaviour::Apply,
    )
    .await
    .unwrap();
    assert!(a.machine_id.starts_with("m-"));

    // The single-use token is used up; an unknown token is refused too; both with E26.
    let again = SimAgent::enroll(
        &s.url,
        &s.fingerprint,
        &once.token,
        inventory("beta", 2),
        Behaviour::Apply,
    )
    .await;
    assert_eq!(code_of(again.map(|a| a.machine_id)), (401, Some(Code::E26)));
    let bogus = SimAgent::enroll(
        &s.url,
        &s.fingerprint,
        "pcenr_nope",
        inventory("beta", 2),
        Behaviour::Apply,
    )
    .await;
    assert_eq!(code_of(bogus.map(|a| a.machine_id)), (401, Some(Code::E26)));
    // An expired token.
    let expired = admin
        .create_token(&TokenRequest {
            group: None,
            uses: None,
            expires_secs: 0,
        })
        .await
        .unwrap();
    let late = SimAgent::enroll(
        &s.url,
        &s.fingerprint,
        &expired.token,
        inventory("gamma", 3),
        Behaviour::Apply,
    )
    .await;
    assert_eq!(code_of(late.map(|a| a.machine_id)), (401, Some(Code::E26)));

    // A wrong secret for a real machine id, no credential, and the admin token as an agent: refused.
    let poll = Poll {
        state: AgentState::Idle,
        wait_ms: 0,
        ..Poll::default()
    };
    let forged = Client::new(
        &s.url,
        &s.fingerprint,
        Some(format!("{}.{}", a.machine_id, "00".repeat(32))),
    )
    .unwrap();
    assert_eq!(
        code_of(forged.post::<_, PollResponse>(proto::POLL, &poll).await).0,
        401
    );
    let anon = Client::new(&s.url, &s.fingerprint, None).unwrap();
    assert_eq!(
        code_of(anon.post::<_, PollResponse>(proto::POLL, &poll).await).0,
        401
    );
    let admin_as_agent = Client::new(&s.url, &s.fingerprint, Some(s.token.clone())).unwrap();
    assert_eq!(
        code_of(
            admin_as_agent
                .post::<_, PollResponse>(proto::POLL, &poll)
                .await
        )
        .0,
        401
    );
    // The agent's credential is no admin token.
    let agent_as_admin = patchcast::transport::admin_api::Admin(a.client.clone());
    assert_eq!(code_of(agent_as_admin.machines().await).0, 401);
    // A client pinning another fingerprint never reaches the server.
    let wrong_pin = Client::new(&s.url, &format!("sha256:{}", "ab".repeat(32)), None).unwrap();
    assert!(matches!(
        wrong_pin
            .get::<serde_json::Value>(patchcast::transport::admin_api::MACHINES)
            .await,
        Err(CallError::Unreachable { .. })
    ));

    // The real agent works: poll answers (no work), inventory shows the seen and reported addresses.
    assert!(a.poll(AgentState::Idle, 0).await.unwrap().is_none());
    let ms = admin.machines().await.unwrap();
    assert_eq!(ms.len(), 1);
    let m = &ms[0];
    assert_eq!(
        (m.hostname.as_str(), m.peer_address.as_str()),
        ("alpha", "127.0.0.1")
    );
    assert_eq!(
        m.inventory.interfaces[0].addresses[0].to_string(),
        "10.0.0.1"
    );
    assert_eq!(m.groups, vec!["lab".to_string()], "the token's group");

    // Filters: IP range (reported address), OS, language, label.
    let multi = admin
        .create_token(&TokenRequest {
            group: None,
            uses: None,
            expires_secs: 3600,
        })
        .await
        .unwrap();
    let mut ja = inventory("ja-host", 300);
    ja.language = "ja-JP".into();
    ja.os = "windows-server-2008-enterprise".into();
    SimAgent::enroll(&s.url, &s.fingerprint, &multi.token, ja, Behaviour::Apply)
        .await
        .unwrap();
    let by = |f: GroupFilter| Group {
        name: "g".into(),
        members: vec![],
        filter: f,
    };
    let v = admin
        .put_group(&by(GroupFilter {
            ip_range: Some("10.0.1.0/24".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        v.resolved.len(),
        1,
        "10.0.1.44 is the only address in 10.0.1.0/24: {v:?}"
    );
    let v = admin
        .put_group(&by(GroupFilter {
            ip_range: Some("127.0.0.0/8".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(v.resolved.len(), 2, "both are seen from loopback");
    let v = admin
        .put_group(&by(GroupFilter {
            os: Some("windows-server-2008".into()),
            language: Some("ja".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(v.resolved.len(), 1);
    let v = admin
        .put_group(&by(GroupFilter {
            os: Some("debian".into()),
            language: Some("ja".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(v.resolved.is_empty());
    admin
        .label(
            "alpha",
            &Labels {
                add: vec!["canary".into()],
                remove: vec![],
            },
        )
        .await
        .unwrap();
    let v = admin
        .put_group(&by(GroupFilter {
            label: Some("canary".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(v.resolved, vec![a.machine_id.clone()]);
    let bad = admin
        .put_group(&by(GroupFilter {
            ip_range: Some("10.0.0.300/8".into()),
            ..Default::default()
        }))
        .await;
    assert_eq!(code_of(bad).0, 400);
}
both_backends!(enrollment_and_misuse);

/// An agent chooses the hostname it reports: before, a machine reporting another's hostname
/// (or id) as its own received that machine's labels and group membership.
async fn regression_a_reported_hostname_grants_nothing(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let admin = s.admin();
    let enroll = |host: String, n| {
        let s = &s;
        async move { enrolled(s, &host, n).await.machine_id.clone() }
    };
    let web1 = enroll("web1".into(), 10).await;
    // The administrator writes a hostname; the server stores the id it stands for.
    let g = admin
        .put_group(&Group {
            name: "web".into(),
            members: vec!["web1".into()],
            filter: GroupFilter::default(),
        })
        .await
        .unwrap();
    assert_eq!(g.group.members, vec![web1.clone()]);
    let prod = Labels {
        add: vec!["prod".into()],
        remove: vec![],
    };
    admin.label("web1", &prod).await.unwrap();

    // Two impostors: one reports the same hostname, one reports web1's id as its hostname.
    let twin = enroll("WEB1".into(), 11).await;
    let claims_id = enroll(web1.clone(), 12).await;
    let groups = admin.groups().await.unwrap();
    let web = groups.iter().find(|g| g.group.name == "web").unwrap();
    assert_eq!(web.resolved, vec![web1.clone()], "members are ids");
    for m in admin.machines().await.unwrap() {
        assert_eq!(
            m.labels.contains(&"prod".to_string()),
            m.id == web1,
            "{} ({}) has {:?}",
            m.id,
            m.hostname,
            m.labels
        );
        assert_eq!(m.groups.contains(&"web".to_string()), m.id == web1);
    }
    // An id names its machine, never one reporting it as hostname.
    let m = admin.label(&web1, &prod).await.unwrap();
    assert_eq!(m.id, web1);
    let m = admin.label(&claims_id, &prod).await.unwrap();
    assert_eq!(m.id, claims_id);
    // A hostname two machines report is refused: which one?
    match admin.label("web1", &prod).await {
        Err(CallError::Status { status, body, .. }) => {
            assert_eq!(status, 409);
            assert!(
                body.error.contains("which one?")
                    && body.error.contains(&web1)
                    && body.error.contains(&twin),
                "{}",
                body.error
            );
        }
        other => panic!("expected 409, got {other:?}"),
    }
    let q = patchcast::transport::admin_api::ResultsQuery {
        machine: Some("web1".into()),
        lang: "en".into(),
        ..Default::default()
    };
    assert_eq!(code_of(admin.results(&q).await).0, 409);
    assert_eq!(code_of(admin.label("no-such-host", &prod).await).0, 404);
    let bad = admin
        .put_group(&Group {
            name: "twins".into(),
            members: vec!["web1".into()],
            filter: GroupFilter::default(),
        })
        .await;
    assert_eq!(code_of(bad).0, 400);
}
both_backends!(regression_a_reported_hostname_grants_nothing);

/// `machine remove`, `group delete` and `package remove`: what is removed is refused from
/// then on.
async fn removed_machines_groups_and_packages_are_refused_from_then_on(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let admin = s.admin();
    let gone = enrolled(&s, "gone", 20).await;
    let kept = enrolled(&s, "kept", 21).await;
    admin
        .put_group(&Group {
            name: "g".into(),
            members: vec!["gone".into(), "kept".into()],
            filter: GroupFilter::default(),
        })
        .await
        .unwrap();

    admin.remove_machine("gone").await.unwrap();
    let ids: Vec<String> = admin
        .machines()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![kept.machine_id.clone()]);
    // Its agent's credential is gone with it (E26 on the agent's side).
    assert_eq!(code_of(gone.poll(AgentState::Idle, 0).await).0, 401);
    assert!(kept.poll(AgentState::Idle, 0).await.is_ok());
    assert_eq!(code_of(admin.remove_machine("gone").await).0, 404);
    let g = admin.groups().await.unwrap();
    assert_eq!(g[0].resolved, vec![kept.machine_id.clone()]);

    // A group automatic update uses is not deleted under it.
    s.publish_sample("pkg-auto").await;
    let assign = |assign| patchcast::transport::schedule_api::Assign {
        group: "g".into(),
        package_id: "pkg-auto".into(),
        assign,
    };
    admin.assign(&assign(true)).await.unwrap();
    match admin.delete_group("g").await {
        Err(CallError::Status { status, body, .. }) => {
            assert_eq!(status, 409);
            assert!(
                body.error.contains("autoupdate unassign pkg-auto"),
                "{}",
                body.error
            );
        }
        other => panic!("expected 409, got {other:?}"),
    }
    // So is a package.
    match admin.remove_package("pkg-auto").await {
        Err(CallError::Status { status, body, .. }) => {
            assert_eq!(status, 409);
            assert!(
                body.error.contains("unassign pkg-auto --group g"),
                "{}",
                body.error
            );
        }
        other => panic!("expected 409, got {other:?}"),
    }
    admin.assign(&assign(false)).await.unwrap();
    // The delivery automatic update started (still pending) must finish first.
    match admin.remove_package("pkg-auto").await {
        Err(CallError::Status { status, body, .. }) => {
            assert_eq!(status, 409);
            assert!(
                body.error.contains("1 deliveries under way"),
                "{}",
                body.error
            );
        }
        other => panic!("expected 409, got {other:?}"),
    }
    // A package nothing uses goes.
    s.publish_sample("pkg-idle").await;
    admin.remove_package("pkg-idle").await.unwrap();
    let ids: Vec<String> = admin
        .packages()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec!["pkg-auto".to_string()]);
    assert_eq!(code_of(admin.remove_package("pkg-idle").await).0, 404);
    let run = admin
        .run_scenario(&crate::common::server_harness::scenario(
            "s",
            "g",
            &["pkg-idle"],
        ))
        .await;
    assert_eq!(code_of(run).0, 400, "a removed package is no target");
    admin.delete_group("g").await.unwrap();
    assert!(admin.groups().await.unwrap().is_empty());
    assert_eq!(code_of(admin.delete_group("g").await).0, 404);
    let run = admin
        .run_scenario(&crate::common::server_harness::scenario(
            "s",
            "g",
            &["pkg-auto"],
        ))
        .await;
    assert_eq!(
        code_of(run).0,
        400,
        "a deleted group and a removed package are no target"
    );
}
both_backends!(removed_machines_groups_and_packages_are_refused_from_then_on);

/// The server took a scenario posted to its API as checked: a retry delay of u64::MAX
/// overflowed the retry time. It checks every scenario again now.
async fn regression_an_unchecked_scenario_from_the_api_is_refused(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("pkg-x").await;
    let mut sc = crate::common::server_harness::scenario("huge", "g", &["pkg-x"]);
    sc.retry_delay_ms = u64::MAX;
    match s.admin().run_scenario(&sc).await {
        Err(CallError::Status { status, body, .. }) => {
            assert_eq!(status, 400);
            assert!(body.error.contains("options.retry.delay"), "{}", body.error);
        }
        other => panic!("expected 400, got {other:?}"),
    }
    sc.retry_delay_ms = 1000;
    sc.max_unverified_runs = 0;
    let e = s.admin().run_scenario(&sc).await;
    assert_eq!(code_of(e).0, 400);
}
both_backends!(regression_an_unchecked_scenario_from_the_api_is_refused);

async fn publish_refusals(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let admin = s.admin();
    let good = s.publish_sample("pkg-good").await;
    assert_eq!(admin.packages().await.unwrap().len(), 1);

    // Not an archive at all.
    let junk = s.path().join("junk.pcpkg");
    std::fs::write(&junk, b"just some bytes, no manifest").unwrap();
    let r = admin.publish(&junk).await.unwrap();
    let (status, code) = code_of(r);
    assert_eq!((status, code), (422, Some(Code::E18)));

    // Signed by a key the server does not trust.
    let other = patchcast::pack::keys::generate().unwrap();
    let dir = s.path().join("other");
    std::fs::create_dir_all(&dir).unwrap();
    let untrusted = patchcast::loadgen::sample_package(&dir, &other, "pkg-untrusted").unwrap();
    let Err(CallError::Status { status, body, .. }) = admin.publish(&untrusted).await.unwrap()
    else {
        panic!("accepted an untrusted signature")
    };
    assert_eq!((status, body.code), (422, Some(Code::E18)));
    assert!(
        body.error.contains("not among the trusted keys"),
        "{}",
        body.error
    );

    // Tampered: one payload byte changed after signing.
    let mut bytes = std::fs::read(&good).unwrap();
    let at = bytes
        .windows(10)
        .position(|w| w == b"hello from")
        .expect("payload text in the archive");
    bytes[at] = b'j';
    let tampered = s.path().join("tampered.pcpkg");
    std::fs::write(&tampered, &bytes).unwrap();
    let (status, code) = code_of(admin.publish(&tampered).await.unwrap());
    assert_eq!((status, code), (422, Some(Code::E19)));
    assert_eq!(
        admin.packages().await.unwrap().len(),
        1,
        "nothing refused was stored"
    );
    let stored: Vec<_> = std::fs::read_dir(s.data.join("content"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "only the good archive is in the content store"
    );

    // The CLI: a directory is built with --key and published.
    let pkgdir = s.path().join("cli-pkg");
    patchcast::loadgen::sample_package(&pkgdir, &s.signing, "pkg-cli").unwrap();
    let o = s.cli(&[
        "package",
        "publish",
        pkgdir.join("pkg-cli").to_str().unwrap(),
        "--key",
        s.key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("published pkg-cli"));
    // Without --key a directory is refused with the fix named.
    let o = s.cli(&[
        "package",
        "publish",
        pkgdir.join("pkg-cli").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--key"));
}
both_backends!(publish_refusals);

async fn publish_below_reserve_is_e17(backend: Backend) {
    // A reserve larger than any disk: every publish would go below it.
    let Some(s) = TestServer::start(backend, &["--reserve", "1000000000000000000"]).await else {
        return;
    };
    let archive = patchcast::loadgen::sample_package(s.path(), &s.signing, "pkg-big").unwrap();
    let (status, code) = code_of(s.admin().publish(&archive).await.unwrap());
    assert_eq!((status, code), (507, Some(Code::E17)));
    let o = s.cli(&["package", "publish", archive.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("E17") && err.contains("reserve"), "{err}");
    assert!(s.admin().packages().await.unwrap().is_empty());
}
both_backends!(publish_below_reserve_is_e17);

async fn content_range_requests(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let archive = s.publish_sample("pkg-range").await;
    let bytes = std::fs::read(&archive).unwrap();
    let sha = patchcast::pack::hash::sha256_bytes(&bytes).hex();
    let agents = s.enroll(1, "r", Behaviour::Apply).await;
    let c = &agents[0].client;
    let path = format!("{}/{sha}", proto::CONTENT);
    let get = |range: Option<String>| {
        let mut rb = c.request(reqwest::Method::GET, &path);
        if let Some(r) = range {
            rb = rb.header("Range", r);
        }
        rb.send()
    };
    let full = get(None).await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let n = bytes.len();
    let part = get(Some("bytes=1000-".into())).await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000-{}/{n}", n - 1).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[1000..]);

    let mid = get(Some("bytes=10-19".into())).await.unwrap();
    assert_eq!(mid.status(), 206);
    assert_eq!(mid.bytes().await.unwrap().as_ref(), &bytes[10..20]);

    let past = get(Some(format!("bytes={n}-"))).await.unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{n}").as_str()
    );

    // Unknown content, a malformed hash, and no credential.
    let missing = c
        .request(
            reqwest::Method::GET,
            &format!("{}/{}", proto::CONTENT, "0".repeat(64)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = c
        .request(
            reqwest::Method::GET,
            &format!("{}/..%2F..%2Fadmin.token", proto::CONTENT),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let anon = Client::new(&s.url, &s.fingerprint, None).unwrap();
    assert_eq!(
        anon.request(reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}
both_backends!(content_range_requests);

/// A body that sends one chunk and then never ends: a server that reads it before checking
/// the credential would hang on it.
fn endless_body() -> reqwest::Body {
    use futures_util::StreamExt;
    let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(vec![b'{'; 64 << 10]) });
    reqwest::Body::wrap_stream(first.chain(futures_util::stream::pending()))
}

async fn regression_unbounded_request_bodies_before_authentication(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let deadline = std::time::Duration::from_secs(60);
    let status = |r: reqwest::RequestBuilder| async move {
        tokio::time::timeout(deadline, r.send())
            .await
            .expect("the server answered without waiting for the body")
            .map(|r| r.status().as_u16())
    };
    // Without a credential (or with a wrong one) agent and admin routes refuse at once.
    let anon = Client::new(&s.url, &s.fingerprint, None).unwrap();
    let forged = Client::new(&s.url, &s.fingerprint, Some("pcagt_forged".into())).unwrap();
    for (client, path) in [
        (&anon, proto::POLL),
        (&forged, proto::REPORT),
        (&anon, proto::INVENTORY),
        (&forged, patchcast::transport::admin_api::SCENARIOS),
        (&anon, patchcast::transport::admin_api::PACKAGES),
        (&forged, patchcast::web::accounts::ACCOUNTS),
    ] {
        // The refusal may reach the client as a 401 or, when the server closes the connection
        // while the body is still being sent, as a broken upload; never as a wait.
        let r = client
            .request(reqwest::Method::POST, path)
            .body(endless_body());
        match status(r).await {
            Ok(code) => assert_eq!(code, 401, "{path}"),
            Err(e) => assert!(e.is_request() || e.is_body(), "{path}: {e:?}"),
        }
        let r = client.request(reqwest::Method::POST, path).body("{}");
        assert_eq!(status(r).await.unwrap(), 401, "{path}");
    }
    // The server answers 413 from the declared length without reading the body; when it
    // closes the connection while the client is still sending, the client sees a broken
    // upload instead of the answer (seen under load in CI), so it asks again.
    let too_large = |make: &dyn Fn() -> reqwest::RequestBuilder| {
        let requests: Vec<reqwest::RequestBuilder> = (0..5).map(|_| make()).collect();
        async move {
            for r in requests {
                match status(r).await {
                    Ok(code) => return code,
                    Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
                }
            }
            panic!("five uploads broke off without an answer")
        }
    };
    // Enrollment, the one route before authentication, takes at most 1 MiB.
    let enroll = || {
        anon.request(reqwest::Method::POST, proto::ENROLL)
            .header("content-type", "application/json")
            .body(vec![b' '; 2 << 20])
    };
    assert_eq!(too_large(&enroll).await, 413);
    // Authenticated routes other than publish take at most 8 MiB.
    let admin = Client::new(&s.url, &s.fingerprint, Some(s.token.clone())).unwrap();
    let scenario = || {
        admin
            .request(
                reqwest::Method::POST,
                patchcast::transport::admin_api::SCENARIOS,
            )
            .header("content-type", "application/json")
            .body(vec![b' '; 9 << 20])
    };
    assert_eq!(too_large(&scenario).await, 413);
    // The server is still there, and publishing (streamed to disk) still works.
    s.publish_sample("pkg-after-bodies").await;
    assert_eq!(s.admin().packages().await.unwrap().len(), 1);
}
both_backends!(regression_unbounded_request_bodies_before_authentication);

fn versioned(s: &TestServer, id: &str, version: &str) -> std::path::PathBuf {
    patchcast::loadgen::sample_package_version(s.path(), &s.signing, id, version).unwrap()
}

async fn regression_republishing_an_older_signed_version_is_refused(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let admin = s.admin();
    let (old, new) = (
        versioned(&s, "replay", "1.9"),
        versioned(&s, "replay", "1.10"),
    );
    admin.publish(&new).await.unwrap().unwrap();
    let (status, _) = code_of(admin.publish(&old).await.unwrap());
    assert_eq!(status, 409);
    let o = s.cli(&["package", "publish", old.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("1.10 is published; 1.9 is older"),
        "{err}"
    );
    let listed = admin.packages().await.unwrap();
    assert_eq!(
        listed[0].version.as_deref(),
        Some("1.10"),
        "the newer one stays"
    );
    // The same version again, and a newer one, are ordinary publishes.
    admin.publish(&new).await.unwrap().unwrap();
    admin
        .publish(&versioned(&s, "replay", "2.0"))
        .await
        .unwrap()
        .unwrap();
}
both_backends!(regression_republishing_an_older_signed_version_is_refused);

async fn regression_internal_error_detail_stays_in_the_server_log(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    // The content store's upload directory is gone (a file stands in its place).
    let tmp = s.data.join("content/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let archive = patchcast::loadgen::sample_package(s.path(), &s.signing, "pkg-500").unwrap();
    match s.admin().publish(&archive).await.unwrap() {
        Err(CallError::Status { status, body, .. }) => {
            assert_eq!((status, body.code), (500, Some(Code::E01)));
            assert!(body.error.contains("incident"), "{}", body.error);
            let data = s.data.display().to_string();
            assert!(
                !body.error.contains(&data),
                "a server path reached the caller: {}",
                body.error
            );
        }
        other => panic!("expected a 500, got {other:?}"),
    }
}
both_backends!(regression_internal_error_detail_stays_in_the_server_log);

async fn regression_secrets_come_from_files_not_argv(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let f = s.path().join("admin.token.copy");
    std::fs::write(&f, format!("{}\n", s.token)).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(crate::common::server_harness::bin())
            .args([
                "machine",
                "list",
                "--server",
                &s.url,
                "--fingerprint",
                &s.fingerprint,
            ])
            .args(extra)
            .env_remove("PATCHCAST_TOKEN")
            .output()
            .unwrap()
    };
    let o = run(&["--token-file", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Both at once is a usage error.
    let o = run(&["--token-file", f.to_str().unwrap(), "--token", "pcadm_x"]);
    assert_eq!(o.status.code(), Some(2));
    // The hint of `token create` no longer suggests putting the token in argv.
    let o = s.cli(&["token", "create", "--group", "lab"]);
    let hint = String::from_utf8_lossy(&o.stderr);
    assert!(
        hint.contains("--token-file") && !hint.contains("--token pcenr_"),
        "{hint}"
    );
}
both_backends!(regression_secrets_come_from_files_not_argv);

async fn a_revoked_token_enrolls_nothing(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let admin = s.admin();
    let req = TokenRequest {
        group: Some("lab".into()),
        uses: None,
        expires_secs: 3600,
    };
    let (kept, revoked) = (
        admin.create_token(&req).await.unwrap(),
        admin.create_token(&req).await.unwrap(),
    );
    let listed = admin.tokens().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|t| !t.id.is_empty() && t.id.len() == 16));
    assert!(
        !serde_json::to_string(&listed)
            .unwrap()
            .contains(&kept.token),
        "a listing never holds a token"
    );
    // Revoked from the CLI: refused from then on with E26; the other token still enrolls.
    let o = s.cli(&["token", "revoke", &revoked.id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let enroll = |token: String| {
        let (url, fp) = (s.url.clone(), s.fingerprint.clone());
        async move { SimAgent::enroll(&url, &fp, &token, inventory("after", 7), Behaviour::Apply).await }
    };
    assert_eq!(
        code_of(enroll(revoked.token.clone()).await.map(|a| a.machine_id)),
        (401, Some(Code::E26))
    );
    assert!(enroll(kept.token.clone()).await.is_ok());
    let o = s.cli(&["token", "list"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&kept.id) && !text.contains(&revoked.id),
        "{text}"
    );
    // Revoking again names the token that is not there.
    assert_eq!(code_of(admin.revoke_token(&revoked.id).await).0, 404);
}
both_backends!(a_revoked_token_enrolls_nothing);

/// Regression: presence was written one statement per machine, 40 % of the writer's
/// statements in a rollout; now `db::CHUNK` machines a statement. 120 machines heard at
/// once, half of them in another state, each get their own state written.
async fn regression_presence_of_many_machines_written_in_chunks(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    let agents = s.enroll(120, "many", Behaviour::Apply).await;
    let admin = s.admin();
    let polls = agents.iter().enumerate().map(|(i, a)| {
        let state = if i % 2 == 0 {
            AgentState::Idle
        } else {
            AgentState::RebootPending {
                delivery_id: format!("gone-{i}"),
                attempt: 1,
            }
        };
        async move { a.poll(state, 0).await.unwrap() }
    });
    futures_util::future::join_all(polls).await;
    let want: std::collections::BTreeMap<String, &str> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let state = if i % 2 == 0 { "idle" } else { "reboot_pending" };
            (a.machine_id.clone(), state)
        })
        .collect();
    let start = std::time::Instant::now();
    loop {
        let got: std::collections::BTreeMap<String, String> = admin
            .machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.agent_state))
            .collect();
        let same = got.len() == want.len() && want.iter().all(|(id, st)| got[id] == *st);
        if same {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "every machine's state written: {got:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
both_backends!(regression_presence_of_many_machines_written_in_chunks);
