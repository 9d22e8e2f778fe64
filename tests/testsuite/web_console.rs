//! The web console in headless Chromium, against the real `patchcast server` and two real
//! `patchcast-agent` processes (emulated Windows Server 2008 endpoints, one with too little
//! disk for the package → E06):
//! sign in (a wrong password is refused), watch the scenario's counts change live (server-sent
//! events, no reload), read the dashboard, open the machine with the failed delivery and see
//! E06 with its remedy, switch to Japanese and see both in Japanese, export CSV and check its
//! rows; a sign-out form posted without or with a wrong CSRF token is refused with 403.
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
