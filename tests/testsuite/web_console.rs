//! The web console in headless Chromium, against the real `patchcast server` and two real
//! `patchcast-agent` processes (emulated Windows Server 2008 endpoints, one with too little
//! disk for the package → E06):
//! sign in (a wrong password is refused), watch the scenario's counts change live (server-sent
//! events, no reload), read the dashboard, open the machine with the failed delivery and see
//! E06 with its remedy, switch to Japanese and see both in Japanese, export CSV and check its
//! rows; a sign-out form posted without or with a wrong CSRF token is refused with 403.
//! `console_actions_in_chromium`: the console's action buttons and forms, and the Audit page.
//! Screenshots of the dashboard and the machine page go to target/web-screenshots/.

use crate::common::agent_harness::AgentProc;
use crate::common::browser::Browser;
use crate::common::server_harness::{Backend, TestServer, scenario};
use crate::common::{browser, web_client};
use fantoccini::Locator;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const GROUP: &str = "console";
const PACKAGE: &str = "ms10-046-ws2008-multi";
const PASSWORD: &str = "a long console password";

fn profile(hostname: &str, free_disk: u64) -> String {
    format!(
        "os: windows-server-2008\narch: x86\nlanguage: ja\nhostname: {hostname}\nservice_pack: \"1.0\"\ninstalled_updates: []\nfree_disk_bytes: {free_disk}\n"
    )
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .join("web-screenshots")
}

/// Polls the page until `css`'s text satisfies `ok` (a hang guard, not a timing assertion).
async fn wait_text(b: &Browser, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Ok(e) = b.client.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && ok(&t)
        {
            return t;
        }
        if start.elapsed() > Duration::from_secs(120) {
            panic!("gave up waiting for {what}; page:\n{}", b.body().await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `fetch(path)` in the page (same origin, its session cookie) and returns the body.
async fn fetch_in_page(b: &Browser, path: &str) -> String {
    let v = b
        .client
        .execute_async(
            "const [path, done] = arguments; fetch(path).then(r => r.text()).then(done, e => done('ERROR ' + e));",
            vec![serde_json::json!(path)],
        )
        .await
        .unwrap();
    v.as_str().unwrap().to_string()
}

/// Posts a sign-out form built in the page with the given fields (CSRF checks).
async fn post_logout(b: &Browser, fields: serde_json::Value) {
    b.client
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/logout';
             for (const [k, v] of Object.entries(arguments[0])) {
               const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
             }
             document.body.appendChild(f); f.submit();",
            vec![fields],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium() {
    if !browser::available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite, &["--poll", "2s"])
        .await
        .expect("SQLite is always available");
    let dir = format!("{}/packages/{PACKAGE}", env!("CARGO_MANIFEST_DIR"));
    let key = server.key.to_str().unwrap().to_string();
    let o = server.cli(&["package", "publish", &dir, "--key", &key]);
    assert!(o.status.success(), "publish: {o:?}");
    let o = web_client::add_account(&server.data, "alice", PASSWORD);
    assert!(o.status.success(), "admin add: {o:?}");

    let token = server.group_token(GROUP).await;
    let mut agents = Vec::new();
    for (name, free) in [("ws2008-roomy", 21_474_836_480u64), ("ws2008-small", 1000)] {
        let a = AgentProc::new(&server.path().join("agents").join(name));
        std::fs::write(a.root.join("endpoint.yaml"), profile(name, free)).unwrap();
        let (ok, out) = a.enroll(&server.url, &token, &server.fingerprint).await;
        assert!(ok, "enroll {name}: {out}");
        agents.push(a);
    }
    let mut s = scenario("console-test", GROUP, &[PACKAGE]);
    // One attempt: E06 is transient, and the test wants it to end as failed.
    s.max_attempts = 1;
    let sid = server.admin().run_scenario(&s).await.unwrap().id;

    let spki = browser::spki_pin(&server.data.join("tls/cert.pem"));
    let b = Browser::start(&spki).await;
    let c = &b.client;
    let shots = screenshots();

    // Sign-in: the page asks for it; a wrong password is refused without saying which part.
    c.goto(&format!("{}/scenarios/{sid}", server.url))
        .await
        .unwrap();
    c.find(Locator::Id("account"))
        .await
        .unwrap()
        .send_keys("alice")
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("wrong password!!")
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let err = wait_text(&b, "#login-error", "the sign-in refusal", |t| !t.is_empty()).await;
    assert!(
        err.contains("the account name or password is incorrect"),
        "{err}"
    );
    c.find(Locator::Id("account"))
        .await
        .unwrap()
        .send_keys("alice")
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Back on the scenario page (the `next` of the sign-in); nothing has run yet.
    let pending = wait_text(&b, "[data-count=pending]", "the scenario page", |t| {
        !t.is_empty()
    })
    .await;
    assert_eq!(pending, "2", "both deliveries wait for their agents");
    assert!(c.current_url().await.unwrap().path().ends_with(&sid));

    // Agents start; the counts change on the open page through the event stream.
    for a in &mut agents {
        a.start();
    }
    wait_text(&b, "[data-count=failed]", "a failed delivery, live", |t| {
        t == "1"
    })
    .await;
    wait_text(
        &b,
        "[data-count=applied]",
        "an applied delivery, live",
        |t| t == "1",
    )
    .await;
    wait_text(
        &b,
        "[data-count=pending]",
        "no pending delivery, live",
        |t| t == "0",
    )
    .await;
    let done = wait_text(&b, "#progress-state", "the scenario to finish", |t| {
        t.contains("All deliveries have finished")
    })
    .await;
    assert!(!done.is_empty());

    // Dashboard: compliance counts each machine once; recent errors show E06 with its title.
    c.goto(&format!("{}/", server.url)).await.unwrap();
    let row = wait_text(&b, "#compliance tbody tr", "the compliance table", |t| {
        t.contains(PACKAGE)
    })
    .await;
    let applied = b.text("#compliance td.applied").await;
    let failed = b.text("#compliance td.failed").await;
    assert_eq!((applied.as_str(), failed.as_str()), ("1", "1"), "{row}");
    let errors = b.text("#recent-errors").await;
    assert!(
        errors.contains("E06") && errors.contains("Could not create the files on the machine"),
        "{errors}"
    );
    // The FAQ's Q1: the main screen says "auto-update error" and leads to the machines.
    let banner = b.text("#autoupdate-error").await;
    assert!(
        banner.contains("Auto-update error") && banner.contains("1 machines"),
        "{banner}"
    );
    let p = b.screenshot(&shots, "dashboard").await;
    println!("screenshot: {}", p.display());

    // Machines, filtered by code: only the machine with E06; open it.
    c.goto(&format!("{}/machines?code=E06", server.url))
        .await
        .unwrap();
    let links = c.find_all(Locator::Css("a.machine-link")).await.unwrap();
    assert_eq!(links.len(), 1, "one machine carries E06");
    assert_eq!(links[0].text().await.unwrap(), "ws2008-small");
    links[0].click().await.unwrap();
    wait_text(&b, "#machine-name", "the machine page", |t| {
        t == "ws2008-small"
    })
    .await;
    assert_eq!(b.text("#packages td.code").await, "E06");
    let message = b.text("#packages td.message").await;
    let remedy = b.text("#packages td.remedy").await;
    assert!(
        message.contains("free space on the system drive is 1.0 kB"),
        "{message}"
    );
    assert!(
        remedy.contains("at least 3 times the size of the package"),
        "{remedy}"
    );
    let history = b.text("article.delivery table.events").await;
    assert!(
        history.contains("refused") && history.contains("E06"),
        "{history}"
    );
    let p = b.screenshot(&shots, "machine").await;
    println!("screenshot: {}", p.display());

    // Japanese: the switch, then the same result in Japanese.
    c.find(Locator::Id("lang-switch"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let ja = wait_text(&b, "#packages td.message", "the Japanese page", |t| {
        t.contains("クライアント側のファイル生成に失敗しました")
    })
    .await;
    assert!(
        ja.contains("システムドライブの空き容量は1.0 kBです"),
        "{ja}"
    );
    let remedy_ja = b.text("#packages td.remedy").await;
    assert!(
        remedy_ja.contains("コンピュータのディスク容量が不足している可能性があります"),
        "{remedy_ja}"
    );
    assert!(
        b.body().await.contains("ダッシュボード"),
        "the console's own words too"
    );
    let p = b.screenshot(&shots, "machine-ja").await;
    println!("screenshot: {}", p.display());

    // The choice sticks (cookie): a page opened without ?lang= is still Japanese.
    c.goto(&format!("{}/", server.url)).await.unwrap();
    wait_text(&b, "h1", "the Japanese dashboard", |t| {
        t == "ダッシュボード"
    })
    .await;
    let banner = b.text("#autoupdate-error").await;
    assert!(banner.contains("自動更新エラー"), "{banner}");

    // CSV export of the machine's results, in the chosen language.
    c.goto(&format!("{}/machines?q=small", server.url))
        .await
        .unwrap();
    let href = c
        .find(Locator::Css("a.machine-link"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let csv = fetch_in_page(&b, &format!("/export{href}/results.csv")).await;
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "header and one delivery:\n{csv}");
    assert!(
        lines[0].starts_with("delivery_id,scenario_id,machine_id,hostname,package_id,state,"),
        "{}",
        lines[0]
    );
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(cells[1], sid);
    assert_eq!(cells[3], "ws2008-small");
    assert_eq!(cells[4], PACKAGE);
    assert_eq!(cells[5], "failed");
    assert_eq!(cells[8], "E06");
    assert!(
        lines[1].contains("クライアント側のファイル生成に失敗しました"),
        "{}",
        lines[1]
    );
    // The machines list export: both machines, each with its counts.
    let csv = fetch_in_page(&b, "/export/machines.csv").await;
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(
        lines[1].split(',').nth(1),
        Some("ws2008-roomy"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(",ws2008-small,") && lines[2].ends_with(",E06"),
        "{}",
        lines[2]
    );

    // CSRF: a sign-out form without the token, and with a wrong one, is refused with 403.
    post_logout(&b, serde_json::json!({})).await;
    let refused = wait_text(&b, "body", "the CSRF refusal", |t| t.contains("refused")).await;
    assert!(
        refused.contains("CSRF token is missing or does not match"),
        "{refused}"
    );
    let status = fetch_status(&b).await;
    assert_eq!(status, 403, "POST without the token");
    c.goto(&format!("{}/", server.url)).await.unwrap();
    post_logout(&b, serde_json::json!({"csrf": "00ff"})).await;
    wait_text(&b, "body", "the CSRF refusal", |t| t.contains("refused")).await;
    // Still signed in after both refusals; the real sign-out button works.
    c.goto(&format!("{}/", server.url)).await.unwrap();
    c.find(Locator::Id("sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "h1", "the sign-in page after signing out", |t| {
        t == "サインイン"
    })
    .await;
    c.goto(&format!("{}/machines", server.url)).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path().ends_with("/login"),
        "signed out"
    );

    b.close().await;
    println!("screenshots in {}", shots.display());
}

/// The status of a POST to /logout without a token, seen by the page's own fetch.
async fn fetch_status(b: &Browser) -> u64 {
    let v = b
        .client
        .execute_async(
            "const done = arguments[0]; fetch('/logout', {method: 'POST', body: new URLSearchParams()}).then(r => done(r.status), e => done(0));",
            vec![],
        )
        .await
        .unwrap();
    v.as_u64().unwrap()
}

/// Signs in as alice from the sign-in page `path` leads to.
async fn sign_in(b: &Browser, url: &str, path: &str) {
    let c = &b.client;
    c.goto(&format!("{url}{path}")).await.unwrap();
    for (id, text) in [("account", "alice"), ("password", PASSWORD)] {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Clicks the element `css` and waits for the page it loads (the old one goes stale).
async fn click(b: &Browser, css: &str) {
    let e = b
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.click().await.unwrap();
    let start = Instant::now();
    // The clicked element belongs to the old page; once it is gone the new page is loaded.
    while e.text().await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{css} led nowhere"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The console's actions in Chromium, against agents enrolled but not started (so their
/// deliveries wait): cancel a delivery, pause and resume a rollout, start a scenario from a
/// published package and a group, assign automatic update; then the Audit page lists each one
/// with the account that did it. A POST without the session's CSRF token is refused with 403
/// and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_actions_in_chromium() {
    if !browser::available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite, &["--poll", "2s"])
        .await
        .expect("SQLite is always available");
    let key = server.key.to_str().unwrap().to_string();
    for p in [PACKAGE, "ws2008-sp2"] {
        let dir = format!("{}/packages/{p}", env!("CARGO_MANIFEST_DIR"));
        let o = server.cli(&["package", "publish", &dir, "--key", &key]);
        assert!(o.status.success(), "publish: {o:?}");
    }
    let o = web_client::add_account(&server.data, "alice", PASSWORD);
    assert!(o.status.success(), "admin add: {o:?}");
    for (group, name) in [(GROUP, "ws2008-office"), ("pilot", "ws2008-pilot")] {
        let token = server.group_token(group).await;
        let a = AgentProc::new(&server.path().join("agents").join(name));
        std::fs::write(a.root.join("endpoint.yaml"), profile(name, 21_474_836_480)).unwrap();
        let (ok, out) = a.enroll(&server.url, &token, &server.fingerprint).await;
        assert!(ok, "enroll {name}: {out}");
    }
    let admin = server.admin();
    let sid = admin
        .run_scenario(&scenario("to cancel", GROUP, &[PACKAGE]))
        .await
        .unwrap()
        .id;
    let f = server.path().join("rollout.yaml");
    std::fs::write(
        &f,
        "name: pilot-first\npackages: [ws2008-sp2]\npilot: { group: pilot, success_threshold: 90% }\n",
    )
    .unwrap();
    let o = server.cli(&["rollout", "start", f.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let rid = String::from_utf8_lossy(&o.stdout).trim().to_string();

    let spki = browser::spki_pin(&server.data.join("tls/cert.pem"));
    let b = Browser::start(&spki).await;
    let c = &b.client;
    let shots = screenshots();
    sign_in(&b, &server.url, &format!("/scenarios/{sid}")).await;

    // Cancel the waiting delivery from its row.
    wait_text(&b, "#deliveries tbody tr", "the scenario's delivery", |t| {
        t.contains("Pending")
    })
    .await;
    click(&b, "button.cancel-delivery").await;
    let row = wait_text(&b, "#deliveries tbody tr", "the cancelled delivery", |t| {
        t.contains("Cancelled")
    })
    .await;
    assert!(row.contains(PACKAGE), "{row}");
    assert_eq!(b.text("[data-count=cancelled]").await, "1");
    assert!(
        c.find(Locator::Css("button.cancel-delivery"))
            .await
            .is_err(),
        "a cancelled delivery offers no cancel"
    );
    let d = admin.status(&sid, "en").await.unwrap();
    assert_eq!(d.deliveries[0].state.name(), "cancelled");

    // Pause and resume the rollout from its wave's page.
    c.goto(&format!("{}/scenarios/{rid}:w0", server.url))
        .await
        .unwrap();
    assert_eq!(b.text("#rollout-state").await, "running");
    click(&b, "#rollout-pause").await;
    wait_text(&b, "#rollout-state", "the paused rollout", |t| {
        t == "paused"
    })
    .await;
    assert!(
        b.text("#rollout-reason").await.contains("console:alice"),
        "the reason names who paused it"
    );
    assert_eq!(admin.rollout(&rid).await.unwrap().state, "paused");
    click(&b, "#rollout-resume").await;
    wait_text(&b, "#rollout-state", "the resumed rollout", |t| {
        t == "running"
    })
    .await;
    assert_eq!(admin.rollout(&rid).await.unwrap().state, "running");

    // Start a scenario from a published package and a group, and assign automatic update.
    c.goto(&format!("{}/scenarios", server.url)).await.unwrap();
    c.find(Locator::Css("#start-package option[value='ws2008-sp2']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css(&format!(
        "#start-group option[value='{GROUP}']"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    click(&b, "#start-submit").await;
    wait_text(&b, "h1", "the new scenario's page", |t| {
        t == format!("ws2008-sp2 on {GROUP}")
    })
    .await;
    let started = c.current_url().await.unwrap().path().to_string();
    let new_sid = started.strip_prefix("/scenarios/").unwrap().to_string();
    assert!(new_sid.starts_with("s-"), "{started}");
    wait_text(&b, "[data-count=pending]", "its pending delivery", |t| {
        t == "1"
    })
    .await;
    c.goto(&format!("{}/scenarios", server.url)).await.unwrap();
    c.find(Locator::Css("#assign-package option[value='ws2008-sp2']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#assign-group option[value='pilot']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click(&b, "#assign-submit").await;
    let assigned = wait_text(&b, "#assignments tbody", "the assignment", |t| {
        t.contains("ws2008-sp2")
    })
    .await;
    assert!(
        assigned.contains("pilot") && assigned.contains("ws2008-sp2"),
        "{assigned}"
    );
    let a = admin.assignments().await.unwrap();
    assert_eq!(
        a.iter()
            .map(|a| (a.group.as_str(), a.package_id.as_str()))
            .collect::<Vec<_>>(),
        vec![("pilot", "ws2008-sp2")]
    );

    // CSRF: the same cancel posted by the page without the token, or with another one, is
    // refused with 403 and does nothing.
    for fields in [
        serde_json::json!({"action": "scenario.cancel", "id": new_sid}),
        serde_json::json!({"action": "scenario.cancel", "id": new_sid, "csrf": "00ff"}),
    ] {
        let status = post_status(&b, "/actions", fields).await;
        assert_eq!(status, 403, "a POST without the session's CSRF token");
    }
    let st = admin.status(&new_sid, "en").await.unwrap();
    assert_eq!(st.counts.get("pending"), Some(&1), "{st:#?}");

    // The Audit page: each action, the newest first, with who did it.
    click(&b, "#nav-audit").await;
    wait_text(&b, "#audit tbody", "the audit", |t| {
        t.contains("autoupdate.assign")
    })
    .await;
    let rows = c.find_all(Locator::Css("#audit tbody tr")).await.unwrap();
    let mut seen = Vec::new();
    for r in &rows {
        seen.push(r.text().await.unwrap());
    }
    let actions: Vec<&str> = seen
        .iter()
        .map(|t| {
            [
                "autoupdate.assign",
                "scenario.start",
                "rollout.resume",
                "rollout.pause",
                "delivery.cancel",
                "rollout.start",
            ]
            .into_iter()
            .find(|a| t.contains(a))
            .unwrap_or("?")
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            "autoupdate.assign",
            "scenario.start",
            "rollout.resume",
            "rollout.pause",
            "delivery.cancel",
            "rollout.start",
            "scenario.start",
        ],
        "{seen:#?}"
    );
    for t in &seen[..5] {
        assert!(t.contains("console:alice"), "{t}");
    }
    for t in &seen[5..] {
        assert!(t.contains("admin-token"), "{t}");
    }
    assert!(
        seen[1].contains(&new_sid) && seen[2].contains(&rid),
        "{seen:#?}"
    );
    // The CLI reads the same audit.
    let o = server.cli(&["--json", "audit", "--limit", "1"]);
    let last: Vec<patchcast::transport::admin_api::AuditEntry> =
        serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (last[0].actor.as_str(), last[0].action.as_str()),
        ("console:alice", "autoupdate.assign")
    );
    let p = b.screenshot(&shots, "audit").await;
    println!("screenshot: {}", p.display());
    b.close().await;
}

/// The status of a form POST made by the page's own fetch (its session cookie, same origin).
async fn post_status(b: &Browser, path: &str, fields: serde_json::Value) -> u64 {
    let v = b
        .client
        .execute_async(
            "const [path, fields, done] = arguments; fetch(path, {method: 'POST', body: new URLSearchParams(fields)}).then(r => done(r.status), e => done(0));",
            vec![serde_json::json!(path), fields],
        )
        .await
        .unwrap();
    v.as_u64().unwrap()
}
