//! Reporting at fleet size (issue 17, goals 5 and 6), against the real `patchcast server` on
//! SQLite and PostgreSQL:
//! `paged_lists_and_streamed_exports`: 1,050 machines (more than two of the server's
//! 500-machine batches) with a pending delivery each; `results --limit` pages and the
//! console's machine pages return every row exactly once; the machines CSV and JSON exports
//! (streamed batch by batch) hold every machine once with its counts; the compliance summary
//! counts them all.
//! The same run pages the scenario page (100 deliveries a page, its counts by state from the
//! database), streams the scenario's CSV and JSON exports, the results API and `patchcast
//! results` (table, `--json`, `--csv`) without a page, and compares each with the whole
//! answer the paged path gives.
//! `paged_history_and_audit`: a machine with 105 deliveries shows them newest first in pages
//! of 100, each once; the audit pages its entries the same way.
//! `retention_prunes_superseded_history`: with `--history-retention 1h` and the test clock
//! moved two hours on, each finished delivery keeps only its latest transition, and the
//! results are unchanged.

use crate::common::server_harness::{Backend, TestServer, both_backends, scenario};
use crate::common::web_client::WebClient;
use futures_util::StreamExt;
use patchcast::loadgen::{Behaviour, SimAgent, inventory};
use patchcast::transport::admin_api::ResultsQuery;
use patchcast::transport::client::Client;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const MACHINES: usize = 1050;

/// Enrolls `n` simulated agents in `group` over one shared connection pool.
async fn enroll_many(s: &TestServer, n: usize, group: &str) -> Vec<SimAgent> {
    let token = s.group_token(group).await;
    let anon = Client::new(&s.url, &s.fingerprint, None).unwrap();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (anon, token) = (anon.clone(), token.clone());
            async move {
                let inv = inventory(&format!("{group}-{i:05}"), i as u32 + 1);
                SimAgent::enroll_with(&anon, &token, inv, Behaviour::Apply)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// The machine ids a console machines page links to, in page order.
fn linked_machines(html: &str) -> Vec<String> {
    html.split("class=\"machine-link\" href=\"/machines/")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

async fn paged_lists_and_streamed_exports(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("fleet-pkg").await;
    let agents = enroll_many(&s, MACHINES, "fleet").await;
    let admin = s.admin();
    let created = admin
        .run_scenario(&scenario("everyone", "fleet", &["fleet-pkg"]))
        .await
        .unwrap();
    assert_eq!(created.deliveries as usize, MACHINES);
    let mut ids: Vec<String> = agents.iter().map(|a| a.machine_id.clone()).collect();
    ids.sort();

    // `results --limit 250`: five pages, every delivery exactly once, in the unpaged order.
    let all = admin
        .results(&ResultsQuery {
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.deliveries.len(), MACHINES);
    assert_eq!(all.total, None, "an unpaged answer has no total");
    let mut paged = Vec::new();
    for page in 0.. {
        let r = admin
            .results_page(
                &ResultsQuery {
                    lang: "en".into(),
                    ..Default::default()
                },
                Some((250, page)),
            )
            .await
            .unwrap();
        assert_eq!(r.total, Some(MACHINES as u64));
        // The package summary counts every delivery selected, whatever the page.
        assert_eq!(r.packages.len(), 1);
        assert_eq!(r.packages[0].in_progress as usize, MACHINES);
        if r.deliveries.is_empty() {
            assert_eq!(page, 5, "1050 rows in pages of 250 end after page 4");
            break;
        }
        assert!(r.deliveries.len() <= 250);
        paged.extend(r.deliveries.into_iter().map(|d| d.delivery_id));
    }
    let unpaged: Vec<String> = all
        .deliveries
        .iter()
        .map(|d| d.delivery_id.clone())
        .collect();
    assert_eq!(paged, unpaged, "pages, joined, are the unpaged list");

    // The CLI pages too.
    let out = s.cli(&["results", "--limit", "100", "--page", "11", "--lang", "en"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("page 11 of 11 (1050 deliveries, 100 a page)"),
        "{text}"
    );

    // The console's list: pages of 100, every machine exactly once, next/previous links.
    let mut web = WebClient::new(&s.url, &s.fingerprint);
    let mut seen = Vec::new();
    for page in 0.. {
        let r = web
            .get_bearer(&format!("/machines?page={page}"), &s.token)
            .await;
        assert_eq!(r.status, reqwest::StatusCode::OK);
        let on_page = linked_machines(&r.body);
        assert_eq!(r.body.contains("id=\"prev-page\""), page > 0, "page {page}");
        seen.extend(on_page.iter().cloned());
        if !r.body.contains("id=\"next-page\"") {
            assert_eq!(on_page.len(), MACHINES % 100, "the last page");
            break;
        }
        assert_eq!(on_page.len(), 100, "page {page}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no machine on two pages");
    assert_eq!(sorted, ids, "every machine on some page");
    // A filter pages the machines it keeps: one host name.
    let one = web
        .get_bearer("/machines?q=fleet-01049", &s.token)
        .await
        .body;
    assert_eq!(linked_machines(&one).len(), 1);
    assert!(!one.contains("id=\"next-page\""));

    // The CSV export, streamed: a header and one row per machine, each with its counts.
    let csv = web.get_bearer("/export/machines.csv", &s.token).await;
    assert_eq!(csv.status, reqwest::StatusCode::OK);
    assert!(csv.header("content-type").starts_with("text/csv"));
    let lines: Vec<&str> = csv.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines[0],
        "machine_id,hostname,os,os_version,arch,language,groups,labels,peer_address,\
         last_seen_utc,agent_state,applied,not_applied,not_applicable,failed,in_progress,codes"
    );
    assert_eq!(lines.len(), MACHINES + 1);
    let mut csv_ids = Vec::new();
    let mut hosts = Vec::new();
    for l in &lines[1..] {
        let cells: Vec<&str> = l.split(',').collect();
        assert_eq!(cells.len(), 17, "{l}");
        assert_eq!(cells[2], "debian-12");
        assert_eq!(cells[6], "fleet", "{l}");
        // applied, not_applied, not_applicable, failed, in_progress: the pending delivery.
        assert_eq!(&cells[11..16], ["0", "0", "0", "0", "1"], "{l}");
        csv_ids.push(cells[0].to_string());
        hosts.push(cells[1].to_string());
    }
    let mut sorted_hosts = hosts.clone();
    sorted_hosts.sort();
    assert_eq!(hosts, sorted_hosts, "rows in host name order");
    csv_ids.sort();
    assert_eq!(csv_ids, ids, "every machine once");

    // The JSON export, streamed the same way, is one array of every machine.
    let json = web.get_bearer("/export/machines.json", &s.token).await;
    let v: Vec<serde_json::Value> = serde_json::from_str(&json.body).unwrap();
    let mut json_ids: Vec<String> = v
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    json_ids.sort();
    assert_eq!(json_ids, ids);

    // Compliance, counted by the database.
    let c = web.get_bearer("/export/compliance.json", &s.token).await;
    let c: Vec<serde_json::Value> = serde_json::from_str(&c.body).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["package_id"], "fleet-pkg");
    assert_eq!(c[0]["in_progress"], MACHINES as u64);
    let dash = web.get_bearer("/", &s.token).await;
    assert_eq!(dash.status, reqwest::StatusCode::OK);
    assert!(dash.body.contains("fleet-pkg"), "{}", dash.body);

    scenario_pages_and_streams(&s, &mut web, &created.id, &unpaged).await;

    // Time settings under a policy: every machine of the group (read 500 at a time, more
    // than two batches), by host name; with `--machine` that machine's only.
    admin
        .set_policy(&patchcast::model::group_policy::load("p.yaml", "group: fleet\n").unwrap())
        .await
        .unwrap();
    let r = admin
        .results_page(
            &ResultsQuery {
                lang: "en".into(),
                ..Default::default()
            },
            Some((1, 0)),
        )
        .await
        .unwrap();
    let hosts: Vec<&str> = r.settings.iter().map(|m| m.hostname.as_str()).collect();
    let mut sorted = hosts.clone();
    sorted.sort();
    assert_eq!(hosts, sorted, "settings in host name order");
    let mut setting_ids: Vec<String> = r.settings.iter().map(|m| m.machine_id.clone()).collect();
    setting_ids.sort();
    assert_eq!(
        setting_ids, ids,
        "a setting row for every machine of the group"
    );
    assert!(r.settings.iter().all(|m| m.wanted > 0 && m.applied == 0));
    let one = admin
        .results_page(
            &ResultsQuery {
                machine: Some(ids[7].clone()),
                lang: "en".into(),
                ..Default::default()
            },
            Some((1, 0)),
        )
        .await
        .unwrap();
    assert_eq!(one.settings.len(), 1);
    assert_eq!(one.settings[0].machine_id, ids[7]);
}
both_backends!(paged_lists_and_streamed_exports);

/// The delivery ids a page's rows name (`id="delivery-…"`), in page order.
fn delivery_ids(html: &str) -> Vec<String> {
    html.split("id=\"delivery-")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

/// Walks a paged console list from page 0 by its next links: the ids `ids` reads on each
/// page, checking the links and that no page holds more than 100.
async fn walk_pages(
    web: &mut WebClient,
    token: &str,
    path: &str,
    ids: fn(&str) -> Vec<String>,
) -> Vec<String> {
    let mut seen = Vec::new();
    for page in 0.. {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = web
            .get_bearer(&format!("{path}{sep}page={page}"), token)
            .await;
        assert_eq!(r.status, reqwest::StatusCode::OK, "{path} page {page}");
        assert_eq!(
            r.body.contains("id=\"prev-page\""),
            page > 0,
            "{path} page {page}"
        );
        let on_page = ids(&r.body);
        assert!(
            on_page.len() <= 100,
            "{path} page {page}: {}",
            on_page.len()
        );
        seen.extend(on_page.iter().cloned());
        if !r.body.contains("id=\"next-page\"") {
            break;
        }
        assert_eq!(
            on_page.len(),
            100,
            "{path} page {page} before the last is full"
        );
    }
    seen
}

/// The scenario page, its exports, the results API and `patchcast results`, unpaged and
/// streamed, against what the paged (whole) answers hold: `order` is the results' order.
async fn scenario_pages_and_streams(
    s: &TestServer,
    web: &mut WebClient,
    id: &str,
    order: &[String],
) {
    // The page: 100 a page, every delivery once, in results order; the counts on each page.
    let first = web.get_bearer(&format!("/scenarios/{id}"), &s.token).await;
    assert!(
        first
            .body
            .contains(&format!("data-count=\"pending\">{MACHINES}<")),
        "the pending count: {}",
        first.body
    );
    assert!(
        first
            .body
            .contains(&format!("data-count=\"total\">{MACHINES}<"))
    );
    let paged = walk_pages(web, &s.token, &format!("/scenarios/{id}"), delivery_ids).await;
    assert_eq!(
        paged, order,
        "the scenario's pages, joined, are its deliveries in order"
    );

    // The status: counts of all, a page of 1,000 rows and the cursor of the rest; `scenario
    // status --all` walks the pages (5,000 a page, and 300 a page) into the whole list.
    let first = s.admin().status(id, "en").await.unwrap();
    assert_eq!(first.total, MACHINES as u64);
    assert_eq!(first.counts.get("pending"), Some(&(MACHINES as u64)));
    assert_eq!(first.deliveries.len(), 1000);
    assert!(first.next.is_some());
    let all = |extra: &[&str]| {
        let mut args = vec!["--json", "scenario", "status", id, "--all", "--lang", "en"];
        args.extend(extra);
        let out = s.cli(&args);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let whole = all(&[]);
    assert_eq!(whole, all(&["--page-size", "300"]), "any page size");
    assert_eq!(whole["total"], MACHINES as u64);
    assert!(whole.get("next").is_none());
    let rows: Vec<&str> = whole["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(rows, order, "--all: every delivery once, in order");

    // The exports, streamed: the JSON is the whole status's rows; the CSV the same rows.
    let json = web
        .get_bearer(&format!("/export/scenarios/{id}/deliveries.json"), &s.token)
        .await;
    assert_eq!(json.status, reqwest::StatusCode::OK);
    assert_eq!(json.header("content-type"), "application/json");
    let exported: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(
        exported, whole["deliveries"],
        "the JSON export is the whole list"
    );
    let csv = web
        .get_bearer(&format!("/export/scenarios/{id}/deliveries.csv"), &s.token)
        .await;
    assert!(
        csv.header("content-disposition")
            .contains(&format!("deliveries-{id}.csv"))
    );
    let lines: Vec<&str> = csv.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(
        lines[0].starts_with("delivery_id,scenario_id,machine_id,hostname"),
        "{}",
        lines[0]
    );
    let csv_ids: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(
        csv_ids, order,
        "the CSV export: every delivery once, in order"
    );
    let missing = web
        .get_bearer("/export/scenarios/no-such/deliveries.csv", &s.token)
        .await;
    assert_eq!(missing.status, reqwest::StatusCode::NOT_FOUND);

    // The results API without a page, streamed: the paged answer's content, without `total`.
    let streamed = web
        .get_bearer("/api/v1/admin/results?lang=en&history=false", &s.token)
        .await;
    assert_eq!(streamed.status, reqwest::StatusCode::OK);
    let streamed: serde_json::Value = serde_json::from_str(&streamed.body).unwrap();
    let mut whole = web
        .get_bearer(
            "/api/v1/admin/results?lang=en&history=false&limit=100000&page=0",
            &s.token,
        )
        .await
        .body
        .parse::<serde_json::Value>()
        .unwrap();
    assert_eq!(whole["total"], MACHINES as u64);
    whole.as_object_mut().unwrap().remove("total");
    assert_eq!(
        streamed, whole,
        "the streamed answer holds what the whole one does"
    );
    assert_eq!(streamed["deliveries"].as_array().unwrap().len(), MACHINES);
    // An unknown machine is still an error status, not a cut body.
    let unknown = web
        .get_bearer(
            "/api/v1/admin/results?lang=en&machine=no-such-host",
            &s.token,
        )
        .await;
    assert!(!unknown.status.is_success(), "{}", unknown.body);

    // `patchcast results`, streamed, prints what the one-page answer prints (less the page
    // line and `total`), in each format.
    let run = |args: &[&str]| {
        let out = s.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let one_page = ["--limit", "100000", "--page", "1"];
    for (format, strip) in [
        (
            None,
            format!("page 1 of 1 ({MACHINES} deliveries, 100000 a page)\n"),
        ),
        (Some("--json"), format!(",\n  \"total\": {MACHINES}")),
        (Some("--csv"), String::new()),
    ] {
        let mut args = vec!["results", "--lang", "en"];
        args.extend(format);
        let streamed = run(&args);
        args.extend(one_page);
        let whole = run(&args);
        assert!(
            strip.is_empty() || whole.contains(&strip),
            "{format:?}: {whole}"
        );
        assert_eq!(streamed, whole.replace(&strip, ""), "{format:?}");
        assert!(
            streamed.len() > MACHINES * 20,
            "{format:?}: every row printed"
        );
    }
    // A reader that goes away (`patchcast results --csv | true`) ends it quietly, by SIGPIPE.
    #[cfg(unix)]
    {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_patchcast"))
            .args(["results", "--csv"])
            .env("PATCHCAST_DATA", &s.data)
            .env_remove("PATCHCAST_SERVER")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        crate::common::assert_ended_by_sigpipe(&o);
    }
}

/// The rows of `whole` (a status or results answer) as JSON values.
fn rows_json(rows: &[patchcast::transport::admin_api::DeliveryRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect()
}

/// `scenario status` paged by cursor: 24 machines under 6 host names (so the key's ties are
/// broken by machine id), two packages each (and by position): 48 deliveries.
async fn scenario_status_pages(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("st-a").await;
    s.publish_sample("st-b").await;
    let token = s.group_token("st").await;
    let anon = Client::new(&s.url, &s.fingerprint, None).unwrap();
    for i in 0..24u32 {
        let inv = inventory(&format!("st-{}", i % 6), i + 1);
        SimAgent::enroll_with(&anon, &token, inv, Behaviour::Apply)
            .await
            .unwrap();
    }
    let admin = s.admin();
    let id = admin
        .run_scenario(&scenario("paged", "st", &["st-a", "st-b"]))
        .await
        .unwrap()
        .id;
    // What the status listed whole before it was paged: the scenario's results, in order.
    let whole = admin
        .results(&ResultsQuery {
            scenario: Some(id.clone()),
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .deliveries;
    assert_eq!(whole.len(), 48);

    let counts = admin.status_page(&id, "en", Some(0), None).await.unwrap();
    assert!(counts.deliveries.is_empty() && counts.next.is_none());
    assert_eq!(counts.total, 48);
    assert_eq!(counts.counts.values().sum::<u64>(), 48);

    // Pages of 7 by cursor: 6 full pages and one of 6, every row once, in order; each page
    // carries the counts of every delivery.
    let mut paged = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let p = admin
            .status_page(&id, "en", Some(7), after.as_deref())
            .await
            .unwrap();
        pages += 1;
        assert_eq!(
            (p.total, &p.counts, p.done),
            (counts.total, &counts.counts, counts.done),
            "page {pages}"
        );
        assert_eq!(p.deliveries.len(), if pages < 7 { 7 } else { 6 });
        paged.extend(p.deliveries);
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 7);
    assert_eq!(
        rows_json(&paged),
        rows_json(&whole),
        "the pages are the whole list"
    );

    // The default page holds all 48 (under 1,000), with no cursor.
    let default = admin.status(&id, "en").await.unwrap();
    assert_eq!(rows_json(&default.deliveries), rows_json(&whole));
    assert!(default.next.is_none());

    // A cursor the server did not hand out, and a scenario it does not have.
    match admin.status_page(&id, "en", Some(7), Some("zz")).await {
        Err(patchcast::transport::client::CallError::Status { status, body, .. }) => {
            assert_eq!(status, 400);
            assert!(
                body.error.contains("`next` of the page before"),
                "{}",
                body.error
            );
        }
        other => panic!("a foreign cursor: {other:?}"),
    }
    match admin.status("no-such-scenario", "en").await {
        Err(patchcast::transport::client::CallError::Status { status, .. }) => {
            assert_eq!(status, 404)
        }
        other => panic!("an unknown scenario: {other:?}"),
    }

    // The CLI: `--all` (pages of 5) prints what the whole list printed, as a table and as
    // JSON; `--limit` prints its page and says how to see the rest.
    let run = |args: &[&str]| {
        let out = s.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for json in [false, true] {
        let mut args = vec!["scenario", "status", &id, "--lang", "en"];
        if json {
            args.push("--json");
        }
        let one_page = run(&args);
        args.extend(["--all", "--page-size", "5"]);
        let streamed = run(&args);
        if json {
            let a: serde_json::Value = serde_json::from_str(&streamed).unwrap();
            let b: serde_json::Value = serde_json::from_str(&one_page).unwrap();
            assert_eq!(a, b, "--all --json");
            assert_eq!(a["deliveries"].as_array().unwrap().len(), 48);
        } else {
            assert_eq!(streamed, one_page, "--all");
            assert!(streamed.contains(&format!("scenario {id} (paged): 48 deliveries")));
        }
    }
    let five = run(&["scenario", "status", &id, "--limit", "5", "--lang", "en"]);
    assert!(
        five.contains(&format!(
            "(first 5 of 48; `patchcast scenario status {id} --all` shows every delivery)"
        )),
        "{five}"
    );
    // Rows begin with their host name (`st-N`).
    let rows = five.lines().filter(|l| l.starts_with("st-")).count();
    assert_eq!(rows, 5, "the first five rows only: {five}");
}
both_backends!(scenario_status_pages);

/// A machine's history and the audit, each longer than a page.
async fn paged_history_and_audit(backend: Backend) {
    let Some(s) = TestServer::start(backend, &[]).await else {
        return;
    };
    s.publish_sample("solo-pkg").await;
    let agents = s.enroll(1, "solo", Behaviour::Apply).await;
    let admin = s.admin();
    const RUNS: usize = 105;
    let mut created = Vec::new();
    for i in 0..RUNS {
        let c = admin
            .run_scenario(&scenario(&format!("run-{i}"), "solo", &["solo-pkg"]))
            .await
            .unwrap();
        assert_eq!(c.deliveries, 1);
        created.push(c.id);
    }
    let all = admin
        .results(&ResultsQuery {
            lang: "en".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.deliveries.len(), RUNS);
    let newest_first: Vec<String> = all
        .deliveries
        .iter()
        .rev()
        .map(|d| d.delivery_id.clone())
        .collect();

    let mut web = WebClient::new(&s.url, &s.fingerprint);
    let machine = &agents[0].machine_id;
    let history = walk_pages(
        &mut web,
        &s.token,
        &format!("/machines/{machine}"),
        delivery_ids,
    )
    .await;
    assert_eq!(
        history, newest_first,
        "the history: every delivery once, newest first"
    );

    // The audit: each scenario's start is an entry; every entry once across the pages.
    fn entries(html: &str) -> Vec<String> {
        html.split("<tr><td class=\"n\">")
            .skip(1)
            .map(|rest| rest[..rest.find('<').unwrap()].to_string())
            .collect()
    }
    let audited = walk_pages(&mut web, &s.token, "/audit", entries).await;
    let expected: Vec<String> = admin
        .audit(10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.n.to_string())
        .collect();
    assert!(expected.len() >= RUNS, "{}", expected.len());
    assert_eq!(
        audited, expected,
        "the audit's pages, joined, are every entry, newest first"
    );
}
both_backends!(paged_history_and_audit);

/// (state, attempts, code, exit code, updated) of each delivery, and its history's (n, state, at).
type Snapshot = BTreeMap<String, (String, u32, Option<String>, Option<i32>, i64)>;

async fn snapshot(s: &TestServer) -> (Snapshot, BTreeMap<String, Vec<(u64, String, i64)>>) {
    let r = s
        .admin()
        .results(&ResultsQuery {
            lang: "en".into(),
            history: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut results = Snapshot::new();
    let mut history = BTreeMap::new();
    for d in r.deliveries {
        results.insert(
            d.delivery_id.clone(),
            (
                d.state.name().to_string(),
                d.attempts,
                d.last_code.map(|c| c.to_string()),
                d.detail.exit_code,
                d.updated_at_ms,
            ),
        );
        history.insert(
            d.delivery_id,
            d.history
                .iter()
                .map(|e| (e.n, e.state.clone(), e.at_ms))
                .collect(),
        );
    }
    (results, history)
}

async fn retention_prunes_superseded_history(backend: Backend) {
    let Some(s) = TestServer::start(backend, &["--test-clock", "--history-retention", "1h"]).await
    else {
        return;
    };
    s.publish_sample("kept-pkg").await;
    let agents = s.enroll(2, "kept", Behaviour::Apply).await;
    let admin = s.admin();
    let created = admin
        .run_scenario(&scenario("kept", "kept", &["kept-pkg"]))
        .await
        .unwrap();
    let guard = Instant::now();
    loop {
        let st = admin.status(&created.id, "en").await.unwrap();
        if st.done {
            assert_eq!(st.counts.get("applied"), Some(&2), "{:?}", st.counts);
            break;
        }
        assert!(guard.elapsed() < Duration::from_secs(120), "hang guard");
        for a in &agents {
            a.step(50).await.unwrap();
        }
    }
    let (before, history_before) = snapshot(&s).await;
    for (id, h) in &history_before {
        assert!(h.len() > 1, "{id} has a history to prune: {h:?}");
    }
    // Within the retention nothing goes (the task has run at least once by now or will).
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        snapshot(&s).await.1,
        history_before,
        "recent history is kept"
    );

    // Two hours on: the finished deliveries' superseded history is older than the limit.
    admin
        .clock(&patchcast::transport::schedule_api::ClockChange {
            advance_ms: Some(2 * 3600 * 1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let guard = Instant::now();
    let (after, history_after) = loop {
        let (r, h) = snapshot(&s).await;
        if h.values().all(|e| e.len() == 1) {
            break (r, h);
        }
        assert!(
            guard.elapsed() < Duration::from_secs(120),
            "hang guard: history still {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(after, before, "the results are unchanged");
    for (id, h) in &history_after {
        assert_eq!(
            h[0],
            *history_before[id].last().unwrap(),
            "{id} keeps its latest transition"
        );
    }
}
both_backends!(retention_prunes_superseded_history);
