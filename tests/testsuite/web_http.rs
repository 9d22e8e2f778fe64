//! The web console over HTTPS without a browser, on SQLite and PostgreSQL: sign-in refusals
//! that do not say which part was wrong, session cookie attributes, CSRF refusals, security
//! headers, escaping of endpoint-supplied text, exports for scripts with the admin token, and
//! sign-out ending the session. The browser story is in web_console.rs.

use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use crate::common::web_client::{WebClient, add_account, hidden};
use patchcast::loadgen::{Behaviour, SimAgent, inventory};
use patchcast::transport::admin_api::TokenRequest;
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery staple";

async fn console_auth(backend: Backend) {
    let Some(server) = TestServer::start(backend, &[]).await else {
        return;
    };
    // Accounts: the password comes on stdin; a short one is refused with the rule.
    let short = add_account(&server.data, "alice", "short");
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"),
        "{short:?}"
    );
    let ok = add_account(&server.data, "alice", PASSWORD);
    assert!(ok.status.success(), "{ok:?}");
    let list = server.cli(&["admin", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["name"], "alice");

    // An endpoint whose host name is markup: the console must show it as text.
    let token = server
        .admin()
        .create_token(&TokenRequest {
            group: Some("lab".into()),
            uses: None,
            expires_secs: 600,
        })
        .await
        .unwrap()
        .token;
    let evil = "<script>alert('x')</script>";
    SimAgent::enroll(
        &server.url,
        &server.fingerprint,
        &token,
        inventory(evil, 1),
        Behaviour::Apply,
    )
    .await
    .unwrap();

    let mut c = WebClient::new(&server.url, &server.fingerprint);
    let r = c.get("/").await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "not signed in: to the sign-in page"
    );
    assert_eq!(r.header("location"), "/login?next=%2F");

    // Security headers on every page.
    let login = c.get("/login").await;
    assert!(
        login
            .header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert!(
        !login
            .header("content-security-policy")
            .contains("unsafe-inline")
    );
    assert_eq!(login.header("x-frame-options"), "DENY");
    assert_eq!(login.header("cache-control"), "no-store");

    // Wrong password and unknown account: the same refusal, which names neither.
    let wrong = c.sign_in("alice", "not the password!").await;
    let unknown = c.sign_in("mallory", PASSWORD).await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(
            r.body.contains("the account name or password is incorrect"),
            "{}",
            r.body
        );
        assert!(r.set_cookie("__Host-patchcast_session").is_none());
    }
    let strip = |b: &str| b.replace(&hidden(b, "csrf"), "");
    assert_eq!(
        strip(&wrong.body),
        strip(&unknown.body),
        "indistinguishable"
    );

    // Sign-in without the form's token is refused.
    let r = c
        .post_form("/login", &[("account", "alice"), ("password", PASSWORD)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.set_cookie("__Host-patchcast_session").is_none());

    let r = c.sign_in("alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let cookie = r.set_cookie("__Host-patchcast_session").expect("a session");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }

    let machines = c.get("/machines").await;
    assert_eq!(machines.status, StatusCode::OK);
    assert!(machines.body.contains("alice"), "signed in as alice");
    assert!(
        machines.body.contains("&lt;script&gt;alert("),
        "{}",
        machines.body
    );
    assert!(
        !machines.body.contains(evil),
        "markup from an endpoint is escaped"
    );
    let csrf = hidden(&machines.body, "csrf");
    // Every page renders (strict templates), unknown ones are 404 pages.
    for page in [
        "/",
        "/scenarios",
        "/machines?os=debian&state=failed&q=x",
        "/audit",
    ] {
        let r = c.get(page).await;
        assert_eq!(r.status, StatusCode::OK, "{page}: {}", r.body);
    }

    // Actions: a form without the session's CSRF token, or with a wrong one, is refused with
    // 403 and changes nothing; with it, the action runs and the Audit page shows it, escaped.
    server.publish_sample("console-sample").await;
    let sid = server
        .admin()
        .run_scenario(&scenario(
            "<b>evil</b> scenario",
            "lab",
            &["console-sample"],
        ))
        .await
        .unwrap()
        .id;
    let pending = || async {
        server
            .admin()
            .status(&sid, "en")
            .await
            .unwrap()
            .counts
            .get("pending")
            .copied()
    };
    for form in [
        vec![("action", "scenario.cancel"), ("id", sid.as_str())],
        vec![
            ("action", "scenario.cancel"),
            ("id", sid.as_str()),
            ("csrf", "00ff"),
        ],
    ] {
        let r = c.post_form("/actions", &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{form:?}: {}", r.body);
        assert!(r.body.contains("CSRF token"), "{}", r.body);
    }
    assert_eq!(pending().await, Some(1), "nothing was cancelled");
    // The machine's page offers the waiting delivery's Cancel button (a form with the token).
    let st = server.admin().status(&sid, "en").await.unwrap();
    let d = &st.deliveries[0];
    let page = c.get(&format!("/machines/{}", d.machine_id)).await;
    let form = format!(
        "<input type=\"hidden\" name=\"action\" value=\"delivery.cancel\"><input type=\"hidden\" name=\"id\" value=\"{}\">",
        d.delivery_id
    );
    assert!(page.body.contains(&form), "{}", page.body);
    assert!(!page.body.contains("delivery.retry"), "nothing to retry");
    let mut anon = WebClient::new(&server.url, &server.fingerprint);
    let r = anon
        .post_form(
            "/actions",
            &[("action", "scenario.cancel"), ("id", &sid), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "another session's token, or none"
    );
    let r = c
        .post_form(
            "/actions",
            &[
                ("csrf", &csrf),
                ("action", "scenario.cancel"),
                ("id", &sid),
                ("back", "/audit"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.header("location"), "/audit");
    assert_eq!(pending().await, None);
    let r = c
        .post_form(
            "/actions",
            &[
                ("csrf", &csrf),
                ("action", "delivery.cancel"),
                ("id", "d-none"),
                ("back", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = c
        .post_form(
            "/actions",
            &[
                ("csrf", &csrf),
                ("action", "scenario.cancel"),
                ("id", &sid),
                ("back", "/"),
            ],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "nothing left to cancel: {}",
        r.body
    );
    let r = c
        .post_form(
            "/actions",
            &[
                ("csrf", &csrf),
                ("action", "autoupdate.assign"),
                ("group", "lab"),
                ("package", "console-sample"),
                ("back", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.header("location"), "/", "back stays on this site");
    let audit = c.get("/audit").await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(
        audit.body.contains("console:alice")
            && audit.body.contains("scenario.cancel")
            && audit.body.contains("autoupdate.assign"),
        "{}",
        audit.body
    );
    assert!(
        audit.body.contains("&lt;b&gt;evil&lt;/b&gt; scenario") && !audit.body.contains("<b>evil"),
        "the scenario's name is escaped: {}",
        audit.body
    );
    let r = c.get("/machines/no-such-machine").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("machine no-such-machine"), "{}", r.body);
    // The browser's language by default; Japanese on request.
    let ja = c.get_lang("/machines", "ja-JP,ja;q=0.9,en;q=0.5").await;
    assert!(
        ja.body.contains("コンピュータ") && ja.body.contains("lang=\"ja\""),
        "{}",
        ja.body
    );

    // Sign-out without or with a wrong token: refused, and the session lives on.
    assert_eq!(
        c.post_form("/logout", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let r = c.post_form("/logout", &[("csrf", "0123abcd")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("CSRF token"), "{}", r.body);
    assert_eq!(c.get("/").await.status, StatusCode::OK);

    // Scripts: the admin token reads exports; nothing else does.
    let mut anon = WebClient::new(&server.url, &server.fingerprint);
    assert_eq!(
        anon.get("/export/machines.csv").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        anon.get_bearer("/export/machines.csv", "pcadm_wrong")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let csv = anon.get_bearer("/export/machines.csv", &server.token).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.header("content-type").starts_with("text/csv"));
    let lines: Vec<&str> = csv.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "header and one machine: {lines:?}");
    assert!(lines[0].starts_with("machine_id,hostname,os,"));
    assert!(
        lines[1].contains(",<script>alert('x')</script>,debian-12,"),
        "{}",
        lines[1]
    );
    let json = anon
        .get_bearer("/export/machines.json", &server.token)
        .await;
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(v[0]["hostname"], evil);
    // The token is not a console session: pages still ask to sign in.
    assert_eq!(
        anon.get("/machines").await.status,
        StatusCode::SEE_OTHER,
        "no cookie, no page"
    );

    // Sign-out with the token ends the session server-side.
    let stolen = c.cookies.clone();
    let r = c.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let mut replay = WebClient::new(&server.url, &server.fingerprint);
    replay.cookies = stolen;
    assert_eq!(
        replay.get("/").await.status,
        StatusCode::SEE_OTHER,
        "a signed-out session cookie no longer works"
    );

    // Guessing: after five failures the account is refused, even with the right password,
    // and so is this address for any other account, for 15 minutes.
    let bob = add_account(&server.data, "bob", PASSWORD);
    assert!(bob.status.success(), "{bob:?}");
    let mut guesser = WebClient::new(&server.url, &server.fingerprint);
    for i in 0..5 {
        let r = guesser.sign_in("bob", &format!("guess number {i}")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
    for account in ["bob", "alice"] {
        let r = guesser.sign_in(account, PASSWORD).await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{account}: {}",
            r.body
        );
        assert!(
            r.body.contains("Too many failed sign-ins") && r.body.contains("15 minute(s)"),
            "{}",
            r.body
        );
        assert!(r.set_cookie("__Host-patchcast_session").is_none());
    }
}
both_backends!(console_auth);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_compile() {
    patchcast::web::templates().expect("every embedded template compiles");
}

/// "Not seen for 24 hours" is measured on the server's one clock, the clock `last_seen` is
/// written with (it compared the test clock's `last_seen` with the wall clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_not_seen_is_measured_on_the_servers_clock() {
    use patchcast::transport::schedule_api::ClockChange;
    let server = TestServer::start(Backend::Sqlite, &["--test-clock"])
        .await
        .unwrap();
    let day = 24 * 3600 * 1000;
    let wall = patchcast::server::db::now_ms();
    let admin = server.admin();
    let at = |set_ms| ClockChange {
        set_ms: Some(set_ms),
        advance_ms: None,
    };
    admin.clock(&at(wall - 2 * day)).await.unwrap();
    server.enroll(1, "lab", Behaviour::Apply).await;
    assert!(
        add_account(&server.data, "alice", PASSWORD)
            .status
            .success()
    );
    let mut c = WebClient::new(&server.url, &server.fingerprint);
    assert_eq!(
        c.sign_in("alice", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let fresh = c.get("/").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert!(
        !fresh.body.contains("id=\"stale\""),
        "seen just now on the server's clock"
    );
    admin
        .clock(&at(wall - 2 * day + day + 3_600_000))
        .await
        .unwrap();
    let later = c.get("/").await;
    assert!(
        later.body.contains("id=\"stale\""),
        "25 hours later it is stale"
    );
}
