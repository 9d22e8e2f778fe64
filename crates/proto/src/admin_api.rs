//! The admin API: what `patchcast token/group/machine/package/scenario/results` send to the
//! server. JSON over the same HTTPS listener as the agent protocol; every request carries
//! `Authorization: Bearer <admin token>` (the server's `DATA/admin.token`).
//!
//! | method | path | body → reply |
//! |---|---|---|
//! | POST | `/api/v1/admin/tokens` | `TokenRequest` → `TokenCreated` |
//! | GET | `/api/v1/admin/machines` | → `Vec<MachineView>` |
//! | POST | `/api/v1/admin/machines/{id}/labels` | `Labels` → `MachineView` |
//! | GET/POST | `/api/v1/admin/groups` | `Group` → `Vec<GroupView>` / `GroupView` |
//! | GET/POST | `/api/v1/admin/packages` | archive bytes (streamed) → `PackageView` |
//! | POST | `/api/v1/admin/scenarios` | `Scenario` → `ScenarioCreated` |
//! | GET | `/api/v1/admin/scenarios/{id}` | → `ScenarioStatus` |
//! | GET | `/api/v1/admin/results?machine=&package=&lang=&history=` | → `Results` |
//! | POST | `/api/v1/admin/deliveries/{id}/retry` and `…/cancel` | → `ActionDone` |
//! | POST | `/api/v1/admin/scenarios/{id}/cancel` | → `ActionDone` |
//! | GET | `/api/v1/admin/audit?limit=` | → `Vec<AuditEntry>`, the newest first |

use crate::protocol::{Detail, Inventory};
use patchcast_core::delivery::{Bucket, State};
use patchcast_core::errors::{Code, Params, Rendered};
use patchcast_core::pipeline::Action;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const TOKENS: &str = "/api/v1/admin/tokens";
pub const MACHINES: &str = "/api/v1/admin/machines";
pub const GROUPS: &str = "/api/v1/admin/groups";
pub const PACKAGES: &str = "/api/v1/admin/packages";
pub const SCENARIOS: &str = "/api/v1/admin/scenarios";
pub const RESULTS: &str = "/api/v1/admin/results";
pub const DELIVERIES: &str = "/api/v1/admin/deliveries";
pub const AUDIT: &str = "/api/v1/admin/audit";

/// What an administrator's action did (`server::actions`): the audit entry it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDone {
    /// `delivery.cancel`, `rollout.pause`, …
    pub action: String,
    /// The delivery, scenario or rollout id (or `group/package` of an assignment).
    pub target: String,
    /// The target's state afterwards (`cancelled`, `paused`, `pending`, …).
    pub state: String,
    /// One sentence for people (also the audit entry's detail).
    pub detail: String,
}

/// One audit entry: who did what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Ascending: a later entry has a larger number.
    pub n: u64,
    pub at_ms: i64,
    /// `console:ACCOUNT` or `admin-token`.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Group the enrolled machines join.
    #[serde(default)]
    pub group: Option<String>,
    /// How many enrollments the token allows (None: unlimited until it expires).
    #[serde(default)]
    pub uses: Option<u64>,
    /// Lifetime in seconds.
    pub expires_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Shown once; the server keeps only its SHA-256.
    pub token: String,
    /// How `token list` and `token revoke` name it (the start of its SHA-256, not a secret).
    #[serde(default)]
    pub id: String,
    pub expires_at_ms: i64,
}

/// An enrollment token as listed: never the token itself, which the server does not keep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub group: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub uses: u64,
    pub max_uses: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineView {
    pub id: String,
    pub hostname: String,
    /// The address the server saw the agent's last request come from.
    pub peer_address: String,
    pub inventory: Inventory,
    pub labels: Vec<String>,
    /// The group of the token the machine enrolled with.
    #[serde(default)]
    pub enroll_group: Option<String>,
    pub groups: Vec<String>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: i64,
    /// The agent's last reported state (`idle`, `busy`, `reboot_pending`).
    pub agent_state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Labels {
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A group: static members plus machines matching every given filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    /// Machine ids. An id or hostname may be sent; the server stores the id it resolves to.
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub filter: GroupFilter,
}

/// A machine matches when every set criterion matches; an empty filter matches nothing
/// (a group is static unless a filter is given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupFilter {
    /// OS id or its prefix (`debian`, `windows-server-2008`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Language tag prefix (`ja`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// CIDR (`10.0.0.0/8`): the peer address or any reported address inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl GroupFilter {
    pub fn is_empty(&self) -> bool {
        *self == GroupFilter::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    #[serde(flatten)]
    pub group: Group,
    /// Machine ids currently in the group.
    pub resolved: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageView {
    pub id: String,
    pub version: Option<String>,
    pub title: String,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub key_id: String,
    pub published_at_ms: i64,
}

/// One signed version published under a package id (`GET PACKAGES/{id}/versions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageVersionView {
    pub version: Option<String>,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub key_id: String,
    pub published_at_ms: i64,
    /// The version scenarios and automatic update deliver now.
    pub current: bool,
    /// Published as an explicit rollback (older than the version then current).
    #[serde(default)]
    pub rollback: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioCreated {
    pub id: String,
    /// Deliveries created (machines × packages).
    pub deliveries: u64,
    pub machines: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioStatus {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    /// Deliveries by state name.
    pub counts: BTreeMap<String, u64>,
    pub total: u64,
    /// Every delivery is in a terminal state.
    pub done: bool,
    /// One page of them, in `results`' order (hostname, machine, position).
    pub deliveries: Vec<DeliveryRow>,
    /// The cursor of the next page (`after=`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One package on one machine, with what results show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub delivery_id: String,
    pub scenario_id: String,
    pub machine_id: String,
    pub hostname: String,
    /// The machine's MAC address (its first interface that has one), shown beside its name
    /// as the FAQ's result list does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub package_id: String,
    /// The scenario's action: for an uninstall, `applied` means removed (verified absent).
    #[serde(default, skip_serializing_if = "Action::is_install")]
    pub action: Action,
    pub state: State,
    pub attempts: u32,
    pub unverified_runs: u32,
    pub last_code: Option<Code>,
    /// Message and remedy of `last_code` in the requested language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<Rendered>,
    pub detail: Detail,
    pub updated_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

impl DeliveryRow {
    /// The state's name as shown: `removed` for an uninstall that reached its goal.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Applied if !self.action.is_install() => "removed",
            ref s => s.name(),
        }
    }

    /// The compliance bucket: an uninstall that reached its goal leaves the package not
    /// applied on the machine.
    pub fn bucket(&self) -> Bucket {
        match self.state.bucket() {
            Bucket::Applied if !self.action.is_install() => Bucket::NotApplied,
            b => b,
        }
    }
}

/// One persisted transition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub n: u64,
    pub attempt: u32,
    /// The report's seq (0 for server-side events: dispatch, retry, no reply).
    pub seq: u32,
    pub event: serde_json::Value,
    /// State after the event.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(default)]
    pub params: Params,
    pub at_ms: i64,
}

impl HistoryEntry {
    /// The event's name (`dispatched`, `executed`, …), or `?` for an entry without one.
    pub fn name(&self) -> &str {
        self.event
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("?")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackageSummary {
    pub package_id: String,
    pub applied: u64,
    pub not_applied: u64,
    pub not_applicable: u64,
    pub failed: u64,
    pub in_progress: u64,
}

impl PackageSummary {
    /// The package and its counts, in column order, as table and export cells.
    pub fn cells(&self) -> Vec<String> {
        let counts = [
            self.applied,
            self.not_applied,
            self.not_applicable,
            self.failed,
            self.in_progress,
        ];
        std::iter::once(self.package_id.clone())
            .chain(counts.iter().map(u64::to_string))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub deliveries: Vec<DeliveryRow>,
    pub packages: Vec<PackageSummary>,
    /// The auto-update time setting each machine has (W15/W16 when it could not be given one).
    #[serde(default)]
    pub settings: Vec<crate::schedule_api::MachineSetting>,
    /// With a page size (`limit`): how many deliveries the filters select in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// The admin API's client side, shared by the CLI, the load generator and tests.
#[derive(Clone)]
pub struct Admin(pub crate::client::Client);

impl Admin {
    pub fn new(url: &str, fingerprint: &str, token: &str) -> anyhow::Result<Admin> {
        Ok(Admin(crate::client::Client::new(
            url,
            fingerprint,
            Some(token.to_string()),
        )?))
    }

    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenCreated, CallError> {
        self.0.post(TOKENS, req).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>, CallError> {
        self.0.get(TOKENS).await
    }

    /// Revokes the token `id` names (from `tokens`): it enrolls nothing from then on.
    pub async fn revoke_token(&self, id: &str) -> Result<(), CallError> {
        self.delete(&format!("{TOKENS}/{id}")).await
    }

    pub async fn machines(&self) -> Result<Vec<MachineView>, CallError> {
        self.0.get(MACHINES).await
    }

    /// Removes a machine (id or hostname): its agent is refused from then on.
    pub async fn remove_machine(&self, machine: &str) -> Result<(), CallError> {
        self.delete(&format!("{MACHINES}/{}", encode(machine)))
            .await
    }

    /// Starts a stopped (failed or loop-detected) delivery again.
    pub async fn retry_delivery(&self, id: &str) -> Result<serde_json::Value, CallError> {
        self.0
            .post(
                &format!("{DELIVERIES}/{}/retry", encode(id)),
                &serde_json::json!({}),
            )
            .await
    }

    /// Withdraws a delivery that waits (pending, awaiting retry): it is never handed out again.
    pub async fn cancel_delivery(&self, id: &str) -> Result<ActionDone, CallError> {
        self.action(&format!("{DELIVERIES}/{}/cancel", encode(id)))
            .await
    }

    /// Withdraws every waiting delivery of a scenario.
    pub async fn cancel_scenario(&self, id: &str) -> Result<ActionDone, CallError> {
        self.action(&format!("{SCENARIOS}/{}/cancel", encode(id)))
            .await
    }

    /// A bodiless action POST.
    pub async fn action(&self, path: &str) -> Result<ActionDone, CallError> {
        self.0.post(path, &serde_json::json!({})).await
    }

    /// The newest `limit` audit entries, the newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, CallError> {
        self.0.get(&format!("{AUDIT}?limit={limit}")).await
    }

    /// Unpublishes a package no delivery under way or automatic update uses.
    pub async fn remove_package(&self, id: &str) -> Result<(), CallError> {
        self.delete(&format!("{PACKAGES}/{}", encode(id))).await
    }

    /// Deletes a group no policy or automatic update uses.
    pub async fn delete_group(&self, name: &str) -> Result<(), CallError> {
        self.delete(&format!("{GROUPS}/{}", encode(name))).await
    }

    async fn delete(&self, path: &str) -> Result<(), CallError> {
        self.0
            .send(self.0.request(reqwest::Method::DELETE, path), path)
            .await
    }

    pub async fn label(&self, machine: &str, labels: &Labels) -> Result<MachineView, CallError> {
        self.0
            .post(&format!("{MACHINES}/{machine}/labels"), labels)
            .await
    }

    pub async fn put_group(&self, g: &Group) -> Result<GroupView, CallError> {
        self.0.post(GROUPS, g).await
    }

    pub async fn groups(&self) -> Result<Vec<GroupView>, CallError> {
        self.0.get(GROUPS).await
    }

    pub async fn packages(&self) -> Result<Vec<PackageView>, CallError> {
        self.0.get(PACKAGES).await
    }

    /// Every version published under a package id, the most recent first.
    pub async fn package_versions(&self, id: &str) -> Result<Vec<PackageVersionView>, CallError> {
        self.0
            .get(&format!("{PACKAGES}/{}/versions", encode(id)))
            .await
    }

    /// Uploads a signed archive, streamed from disk.
    pub async fn publish(
        &self,
        archive: &std::path::Path,
    ) -> anyhow::Result<Result<PackageView, CallError>> {
        self.publish_with(archive, false).await
    }

    /// Uploads a signed archive; `rollback` accepts a version older than the current one
    /// (which normal publishes refuse) and makes it current.
    pub async fn publish_with(
        &self,
        archive: &std::path::Path,
        rollback: bool,
    ) -> anyhow::Result<Result<PackageView, CallError>> {
        use anyhow::Context;
        let f = tokio::fs::File::open(archive)
            .await
            .with_context(|| format!("opening {}", archive.display()))?;
        let len = f.metadata().await?.len();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10));
        let path = if rollback {
            format!("{PACKAGES}?rollback=true")
        } else {
            PACKAGES.to_string()
        };
        let rb = self
            .0
            .request(reqwest::Method::POST, &path)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        Ok(self.0.send(rb, &path).await)
    }

    pub async fn run_scenario(
        &self,
        s: &patchcast_core::model::scenario::Scenario,
    ) -> Result<ScenarioCreated, CallError> {
        self.0.post(SCENARIOS, s).await
    }

    /// Every scenario, the newest first, counted by state (without delivery rows).
    pub async fn scenarios(&self) -> Result<Vec<ScenarioStatus>, CallError> {
        self.0.get(SCENARIOS).await
    }

    /// A scenario's counts and the first page of its deliveries (the server's default size).
    pub async fn status(&self, id: &str, lang: &str) -> Result<ScenarioStatus, CallError> {
        self.status_page(id, lang, None, None).await
    }

    /// A scenario's counts and `limit` of its deliveries (None: the server's default page,
    /// 0: none) after `after`, the `next` of the page before.
    pub async fn status_page(
        &self,
        id: &str,
        lang: &str,
        limit: Option<u64>,
        after: Option<&str>,
    ) -> Result<ScenarioStatus, CallError> {
        let mut path = format!("{SCENARIOS}/{}?lang={}", encode(id), encode(lang));
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        self.0.get(&path).await
    }

    pub async fn results(&self, query: &ResultsQuery) -> Result<Results, CallError> {
        self.results_page(query, None).await
    }

    /// Every result, as the answer that is still arriving: read its body with
    /// [`read_results`] (a status other than success is the usual error).
    pub async fn results_response(
        &self,
        query: &ResultsQuery,
    ) -> Result<reqwest::Response, CallError> {
        let path = results_path(query, None);
        let resp = self
            .0
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .map_err(|e| self.0.unreachable(&path, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self
            .0
            .decode::<serde::de::IgnoredAny>(resp, &path)
            .await
            .expect_err("a status other than success is an error"))
    }

    /// One page of results: `Some((limit, page))` asks for `limit` deliveries of page
    /// `page` (from 0), read by the server with LIMIT/OFFSET; `total` then says how many
    /// the filters select. None: every delivery.
    pub async fn results_page(
        &self,
        query: &ResultsQuery,
        page: Option<(u64, u64)>,
    ) -> Result<Results, CallError> {
        self.0.get(&results_path(query, page)).await
    }
}

/// `results` as it is read: each delivery of `deliveries` handed to `row` as soon as it is
/// decoded, the rest returned (with `deliveries` empty). The server streams an unpaged answer
/// a batch at a time; reading it this way keeps the reader's memory bounded too. `reader`
/// should be buffered (`serde_json` reads it a byte at a time).
pub fn read_results(
    reader: impl std::io::Read,
    mut row: impl FnMut(DeliveryRow) -> std::io::Result<()>,
) -> serde_json::Result<Results> {
    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess};
    type RowFn<'f> = &'f mut dyn FnMut(DeliveryRow) -> std::io::Result<()>;
    struct Rows<'f>(RowFn<'f>);
    impl<'de> DeserializeSeed<'de> for Rows<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> de::Visitor<'de> for Rows<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of deliveries")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(d) = seq.next_element::<DeliveryRow>()? {
                (self.0)(d).map_err(de::Error::custom)?;
            }
            Ok(())
        }
    }
    struct Whole<'f>(RowFn<'f>);
    impl<'de> de::Visitor<'de> for Whole<'_> {
        type Value = Results;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("the results object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Results, A::Error> {
            let mut out = Results {
                deliveries: Vec::new(),
                packages: Vec::new(),
                settings: Vec::new(),
                total: None,
            };
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "deliveries" => map.next_value_seed(Rows(&mut *self.0))?,
                    "packages" => out.packages = map.next_value()?,
                    "settings" => out.settings = map.next_value()?,
                    "total" => out.total = map.next_value()?,
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_reader(reader);
    let out = (&mut de).deserialize_map(Whole(&mut row))?;
    de.end()?;
    Ok(out)
}

/// The results API's path and query for `query` (and a page: `(limit, page)`).
fn results_path(query: &ResultsQuery, page: Option<(u64, u64)>) -> String {
    let mut q = vec![
        format!("lang={}", query.lang),
        format!("history={}", query.history),
    ];
    if let Some((limit, page)) = page {
        q.push(format!("limit={limit}"));
        q.push(format!("page={page}"));
    }
    for (k, v) in [
        ("machine", &query.machine),
        ("package", &query.package),
        ("scenario", &query.scenario),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", encode(v)));
        }
    }
    format!("{RESULTS}?{}", q.join("&"))
}

/// What `patchcast results` asks for.
#[derive(Debug, Clone, Default)]
pub struct ResultsQuery {
    pub machine: Option<String>,
    pub package: Option<String>,
    pub scenario: Option<String>,
    pub history: bool,
    pub lang: String,
}

/// Percent-encodes a query value (ids and hostnames are mostly safe already).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

use crate::client::CallError;
