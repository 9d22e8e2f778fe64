//! Administrators' actions, each implemented once for the admin API (the CLI) and the
//! console's forms: retry or cancel a delivery, cancel a scenario, pause, resume or abort a
//! rollout, start a scenario, assign automatic update. Each writes one audit entry (who, what,
//! when) in the transaction of the change it describes, so the audit never lists an action
//! that did not happen nor misses one that did. (Starting a scenario and assigning automatic
//! update write theirs in `scenarios` and `autoupdate`, in their own transactions.)

use crate::{Server, db};
use anyhow::Result;
use patchcast_core::delivery::{Event, Invalid};
use patchcast_core::model::rollout::RolloutVerb;
use patchcast_core::model::scenario::{DEFAULT_RETRY_DELAY_MS, Scenario};
use patchcast_core::model::types::PackageId;
use patchcast_proto::admin_api::{ActionDone, AuditEntry};
use patchcast_proto::schedule_api::Assign;

/// Who acts, as the audit shows it: `console:ACCOUNT` or `admin-token` (the CLI and scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn token() -> Actor {
        Actor("admin-token".into())
    }

    pub fn console(account: &str) -> Actor {
        Actor(format!("console:{account}"))
    }
}

/// Why an action was not done, in words for the person who asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No such delivery, scenario or rollout.
    NotFound(String),
    /// It exists, but its state does not allow the action.
    Conflict(String),
    /// The request itself is wrong (an unknown package or group, an empty field).
    Invalid(String),
}

impl Refused {
    pub fn message(&self) -> &str {
        match self {
            Refused::NotFound(m) | Refused::Conflict(m) | Refused::Invalid(m) => m,
        }
    }
}

/// Outer error: the server failed; inner: the action was refused.
pub type Outcome = Result<Result<ActionDone, Refused>>;

/// An action, as the API's routes and the console's form both name it.
#[derive(Debug, Clone)]
pub enum AdminAction {
    RetryDelivery(String),
    CancelDelivery(String),
    CancelScenario(String),
    Rollout(String, RolloutVerb),
    StartScenario(Box<Scenario>),
    Assign(Assign),
}

/// The console's quick scenario: install one published package on one group's machines,
/// with the options a scenario file gets by default.
pub fn quick_scenario(package: &str, group: &str) -> Result<Scenario, Refused> {
    let p: PackageId = package
        .trim()
        .parse()
        .map_err(|e: patchcast_core::model::types::FormatError| Refused::Invalid(e.0))?;
    let group = group.trim();
    if group.is_empty() {
        return Err(Refused::Invalid("choose a group".into()));
    }
    Ok(Scenario {
        name: format!("{p} on {group}"),
        action: patchcast_core::pipeline::Action::Install,
        packages: vec![p],
        machines: Vec::new(),
        groups: vec![group.to_string()],
        max_concurrent: None,
        max_unverified_runs: 3,
        max_attempts: 3,
        retry_delay_ms: DEFAULT_RETRY_DELAY_MS,
        allow_reboot: false,
        timeout_secs: None,
        when: None,
        versions: Default::default(),
        rollback: false,
    })
}

fn done(action: &str, target: &str, state: &str, detail: String) -> Result<ActionDone, Refused> {
    Ok(ActionDone {
        action: action.into(),
        target: target.into(),
        state: state.into(),
        detail,
    })
}

impl Server {
    /// Runs `a` for `who`.
    pub async fn act(&self, who: &Actor, a: &AdminAction) -> Outcome {
        match a {
            AdminAction::RetryDelivery(id) => self.delivery_action(who, id, true).await,
            AdminAction::CancelDelivery(id) => self.delivery_action(who, id, false).await,
            AdminAction::CancelScenario(id) => self.cancel_scenario(who, id).await,
            AdminAction::Rollout(id, verb) => self.rollout_action(who, id, *verb).await,
            AdminAction::StartScenario(s) => match self.create_scenario(s, who).await {
                Ok(c) => Ok(done(
                    "scenario.start",
                    &c.id,
                    "started",
                    format!(
                        "{} deliveries on {} machines",
                        c.deliveries,
                        c.machines.len()
                    ),
                )),
                // The scenario's checks (unknown group, unpublished package) speak to the admin.
                Err(e) => Ok(Err(Refused::Invalid(format!("{e:#}")))),
            },
            AdminAction::Assign(x) => match self.assign(x, who).await {
                Ok(_) => Ok(done(
                    if x.assign {
                        "autoupdate.assign"
                    } else {
                        "autoupdate.unassign"
                    },
                    &format!("{}/{}", x.group, x.package_id),
                    if x.assign { "assigned" } else { "unassigned" },
                    format!("package {} for group {}", x.package_id, x.group),
                )),
                Err(e) => Ok(Err(Refused::Invalid(format!("{e:#}")))),
            },
        }
    }

    /// Retry (a stopped delivery back to pending) or cancel (a waiting one, for good).
    async fn delivery_action(&self, who: &Actor, id: &str, retry: bool) -> Outcome {
        let (event, action) = if retry {
            (Event::Reset, "delivery.retry")
        } else {
            (Event::Cancel, "delivery.cancel")
        };
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        let r = match self.admin_event(&mut tx, id, &event).await? {
            None => {
                return Ok(Err(Refused::NotFound(format!(
                    "no delivery `{id}`; `patchcast results --json` lists them"
                ))));
            }
            Some(Err(Invalid { state, .. })) => {
                return Ok(Err(Refused::Conflict(if retry {
                    format!(
                        "delivery `{id}` is {state}: only a failed or loop-detected delivery is retried"
                    )
                } else {
                    format!(
                        "delivery `{id}` is {state}: only a pending or awaiting-retry delivery is cancelled (one on its machine finishes there first)"
                    )
                })));
            }
            Some(Ok(r)) => r,
        };
        // The machine by name for the reader, and by id, which names it for good.
        let hostname = db::machines::addressing(&mut tx, &r.machine_id)
            .await?
            .map(|(_, inventory)| inventory.hostname)
            .unwrap_or_default();
        let detail = format!(
            "{} of {} on {hostname} [{}] ({}), scenario {}",
            if retry { "retry" } else { "cancel" },
            r.package_id,
            r.machine_id,
            r.d.state.name(),
            r.scenario_id
        );
        db::audit::insert(&mut tx, &who.0, action, id, &detail, db::now_ms()).await?;
        tx.commit().await?;
        drop(_w);
        tracing::info!(delivery = %id, machine = %r.machine_id, actor = %who.0, action, "administrator action");
        if retry {
            self.wake(&r.machine_id);
        }
        Ok(done(action, id, r.d.state.name(), detail))
    }

    /// Cancels every waiting delivery of a scenario; those on their machines finish there.
    async fn cancel_scenario(&self, who: &Actor, id: &str) -> Outcome {
        if db::scenarios::header(&self.db, id).await?.is_none() {
            return Ok(Err(Refused::NotFound(format!(
                "no scenario `{id}`; see `patchcast scenario list`"
            ))));
        }
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        let n = self.cancel_waiting(&mut tx, id).await?;
        if n == 0 {
            return Ok(Err(Refused::Conflict(format!(
                "scenario `{id}` has no waiting delivery to cancel (those on their machines finish there)"
            ))));
        }
        let detail = format!("{n} waiting deliveries cancelled");
        db::audit::insert(
            &mut tx,
            &who.0,
            "scenario.cancel",
            id,
            &detail,
            db::now_ms(),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(scenario = %id, cancelled = n, actor = %who.0, "scenario cancelled");
        Ok(done("scenario.cancel", id, "cancelled", detail))
    }

    /// Cancels the scenario's waiting deliveries in `tx`; how many.
    async fn cancel_waiting(&self, tx: &mut db::Conn, scenario: &str) -> Result<u64> {
        let mut n = 0;
        for d in db::deliveries::waiting_of(tx, scenario).await? {
            if let Some(Ok(_)) = self.admin_event(tx, &d, &Event::Cancel).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn rollout_action(&self, who: &Actor, id: &str, verb: RolloutVerb) -> Outcome {
        let action = format!("rollout.{}", verb.name());
        let _w = self.write().await?;
        let mut tx = self.db.begin().await?;
        let Some((from, wave)) = db::rollouts::state_and_wave(&mut tx, id).await? else {
            return Ok(Err(Refused::NotFound(format!(
                "no rollout `{id}`; see `patchcast rollout status`"
            ))));
        };
        let to = match verb.apply(&from) {
            Ok(to) => to,
            Err(why) => return Ok(Err(Refused::Conflict(format!("rollout `{id}`: {why}")))),
        };
        let reason = match verb {
            RolloutVerb::Resume => String::new(),
            _ => format!("{} by {}", to.name(), who.0),
        };
        let now = self.now();
        if !db::rollouts::change_state(&mut tx, id, &from, to, &reason, now).await? {
            return Ok(Err(Refused::Conflict(format!(
                "rollout `{id}` changed meanwhile; look at `patchcast rollout status {id}`"
            ))));
        }
        let mut detail = format!("{from} → {}", to.name());
        if verb == RolloutVerb::Abort {
            let mut n = 0;
            for w in 0..=wave.max(0) as usize {
                n += self
                    .cancel_waiting(&mut tx, &crate::rollout::wave_scenario(id, w))
                    .await?;
            }
            detail.push_str(&format!("; {n} waiting deliveries cancelled"));
        }
        db::audit::insert(&mut tx, &who.0, &action, id, &detail, db::now_ms()).await?;
        tx.commit().await?;
        drop(_w);
        tracing::info!(rollout = %id, actor = %who.0, %action, "rollout changed by an administrator");
        if verb == RolloutVerb::Resume {
            // Its waiting deliveries may start now; the ticker may also open the next wave.
            for w in 0..=wave.max(0) as usize {
                let s = crate::rollout::wave_scenario(id, w);
                for m in db::deliveries::waiting_machines_of(&self.db, &s).await? {
                    self.wake(&m);
                }
            }
        }
        Ok(done(&action, id, to.name(), detail))
    }

    /// The newest `limit` audit entries, the newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        self.audit_page(limit.clamp(1, 10_000) as i64, 0).await
    }

    /// `limit` audit entries, the newest first, after the `skip` newest.
    pub async fn audit_page(&self, limit: i64, skip: i64) -> Result<Vec<AuditEntry>> {
        db::audit::newest(&self.db, limit, skip).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_scenario_installs_one_package_on_one_group() {
        let s = quick_scenario("kb981550-ws2008", "pilot").unwrap();
        assert_eq!(s.groups, vec!["pilot".to_string()]);
        assert_eq!(s.packages[0].as_str(), "kb981550-ws2008");
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        assert!(matches!(
            quick_scenario("Not An Id!", "pilot"),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            quick_scenario("kb1", " "),
            Err(Refused::Invalid(_))
        ));
    }
}
