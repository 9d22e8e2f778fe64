//! `patchcast sources set|show|test` against a real server (SQLite and PostgreSQL): a list is
//! stored and read back, a machine's address picks the first matching entry, shape errors are
//! placed at file:line:column before anything is sent, and the server's address checks (an
//! IPv6 entry whose source has only an IPv4 address, an unknown relay, more than 1024 entries)
//! refuse the list, placed in the file too, and leave the stored list unchanged.

use crate::common::server_harness::{Backend, TestServer, both_backends};
use crate::common::sources_harness::set_sources;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const LIST: &str = "\
fallback:
  components: server
  programs_and_hotfixes: not_at_all
entries:
  - addresses: 10.1.0.1-10.1.0.254
    sources:
      - smb: smb://10.1.0.5:445/patches/pcpkg
      - https: https://10.1.0.6/patches
      - server
  - addresses: 10.0.0.0-10.255.255.255
    sources: [server]
";

async fn set_show_test(backend: Backend) {
    let Some(server) = TestServer::start(backend, &[]).await else {
        return;
    };
    let (ok, err) = set_sources(&server, LIST);
    assert!(ok, "{err}");

    let o = server.cli(&["--json", "sources", "show"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let entries = v["sources"]["list"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["sources"][0]["kind"], "smb");
    assert_eq!(
        v["sources"]["list"]["fallback"]["programs_and_hotfixes"],
        "not_at_all"
    );
    assert_eq!(
        v["sources"]["list"]["fallback"]["domain_settings"],
        "server"
    );

    // First match wins: 10.1.0.7 is in both ranges and gets the first entry.
    let o = server.cli(&["--json", "sources", "test", "10.1.0.7"]);
    assert!(o.status.success(), "{o:?}");
    let t: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for p in t["plans"].as_array().unwrap() {
        assert_eq!(p["entry"], 0, "{p}");
        assert_eq!(p["sources"].as_array().unwrap().len(), 3);
        // The server is listed, so it is not tried again as the fallback.
        assert_eq!(p["fallback_to_server"], false);
    }
    let o = server.cli(&["sources", "test", "10.2.0.7"]);
    assert!(stdout(&o).contains("10.2.0.7: entry 1"), "{}", stdout(&o));
    let o = server.cli(&["sources", "test", "192.168.0.1"]);
    assert!(
        stdout(&o).contains("no entry matches; the machine fetches from the server"),
        "{}",
        stdout(&o)
    );
    let o = server.cli(&["sources", "test", "not-an-address"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an IPv4 or IPv6 address"));

    // Text output of show names the switches and the order.
    let o = server.cli(&["sources", "show"]);
    let text = stdout(&o);
    assert!(text.contains("programs and hotfixes: not at all"), "{text}");
    assert!(
        text.contains("smb://10.1.0.5:445/patches/pcpkg -> https://10.1.0.6/patches -> server"),
        "{text}"
    );
}
both_backends!(set_show_test);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_entry_with_an_ipv4_only_source_is_refused_in_place() {
    let server = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    let (ok, err) = set_sources(&server, LIST);
    assert!(ok, "{err}");
    let bad = "\
entries:
  - addresses: 2001:db8::/32
    sources:
      - server
      - smb: smb://127.0.0.1:4450/patches
  - addresses: 10.0.0.1-10.0.0.9
    sources:
      - relay: no-such-machine
";
    let (ok, err) = set_sources(&server, bad);
    assert!(!ok, "accepted: {err}");
    // The server listens on 127.0.0.1 only, so it has no IPv6 address either.
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error[")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains(":4:9: error[sources-address]")
            && lines[0].contains("IPv6 entry but server has no IPv6 address"),
        "{err}"
    );
    assert!(
        lines[1].contains(":5:9: error[sources-address]")
            && lines[1]
                .contains("smb://127.0.0.1:4450/patches has no IPv6 address (it has: 127.0.0.1)"),
        "{err}"
    );
    assert!(
        lines[2].contains(":8:9:") && lines[2].contains("relay no-such-machine is not known"),
        "{err}"
    );
    // Nothing was saved: the earlier list is still the one in force.
    let o = server.cli(&["--json", "sources", "show"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["sources"]["list"]["entries"].as_array().unwrap().len(), 2);

    // An IPv4 entry with the same share is fine.
    let good = "entries:\n  - addresses: 127.0.0.1\n    sources:\n      - smb: smb://127.0.0.1:4450/patches\n";
    let (ok, err) = set_sources(&server, good);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape_errors_are_placed_before_anything_is_sent() {
    let server = TestServer::start(Backend::Sqlite, &[]).await.unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "entries:\n  - addresses: 10.0.0.9-10.0.0.1\n    sources: [server]\n",
            ":2:16: error[sources-range]: the range `10.0.0.9-10.0.0.1` ends before it starts",
        ),
        (
            "entries:\n  - addresses: 10.0.0.1\n    sources:\n      - relay: r1\n        https: https://x/y\n",
            ":4:9: error[sources-source]: a source names exactly one of relay, smb, https (2 given)",
        ),
        ("fallback:\n  programs: server\n", ":2:3: error[yaml]"),
        (
            "fallback:\n  components: sometimes\n",
            ":2:15: error[sources-fallback]: `sometimes` is not a fallback",
        ),
    ];
    for (yaml, want) in cases {
        let (ok, err) = set_sources(&server, yaml);
        assert!(!ok, "{yaml}");
        assert!(err.contains(want), "{yaml}\n---\n{err}");
        assert!(err.contains("not applied"), "{err}");
    }
    // More than 1024 entries.
    let mut big = String::from("entries:\n");
    for _ in 0..1025 {
        big.push_str("  - addresses: 10.0.0.1\n    sources: [server]\n");
    }
    let (ok, err) = set_sources(&server, &big);
    assert!(!ok);
    assert!(err.contains("1025 entries; at most 1024"), "{err}");
    let o = server.cli(&["--json", "sources", "show"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["sources"]["list"]["entries"].as_array().unwrap().len(), 0);
}

#[test]
fn sources_schema_is_current() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(["schema", "sources"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/sources.schema.json"),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        committed,
        "schemas/sources.schema.json is stale: run `cargo run -- schema sources > schemas/sources.schema.json`"
    );
}
