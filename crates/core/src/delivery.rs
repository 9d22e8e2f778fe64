//! The delivery state machine: one package on one machine, events in, next state and action out.
//!
//! Pure. The server persists the returned `Delivery` before it carries out the `Action`, so a
//! crash between the two repeats the action rather than losing the transition; agents report
//! with the attempt number they were given, and a report for another attempt is refused
//! (`Invalid`), so a late or duplicated report can never move a delivery twice.
//!
//! Re-delivery until applied: a run that exits successfully but does not verify is delivered
//! again at the next opportunity; after `Policy::max_unverified_runs` such runs it stops in
//! `LoopDetected`, naming the rule that keeps failing (the FAQ's Q2, turned into a diagnosis).

use super::errors::{Code, Lang};
use super::identify::Verdict;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waiting for the machine's next opportunity (window, check-in).
    Pending,
    /// Work sent; the agent probes, checks disk and fetches.
    Transferring,
    Executing,
    Verifying,
    /// Installed with a reboot exit code; verification happens after the restart.
    RebootPending,
    /// Transferred and verified, to be run at the machine's next start (`when: next_boot`).
    StagedForBoot,
    /// Not applied yet; delivered again at the next opportunity.
    AwaitingRetry,
    Applied,
    NotApplicable {
        reason: String,
    },
    Failed {
        code: Code,
    },
    LoopDetected {
        rule: String,
    },
    /// An administrator withdrew it before it was handed out (or while it waited to be handed
    /// out again): never handed out again, and not applied.
    Cancelled,
    /// Never delivered: a package that supersedes it (`by`) is applied on the machine or
    /// being delivered to it (`core::lifecycle::superseded_by`). Counts as applied.
    Superseded {
        by: String,
    },
}

impl State {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            State::Applied
                | State::NotApplicable { .. }
                | State::Failed { .. }
                | State::LoopDetected { .. }
                | State::Cancelled
                | State::Superseded { .. }
        )
    }

    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            State::Transferring | State::Executing | State::Verifying
        )
    }

    /// Holding the machine: in flight, or waiting for it to start again (the restart an
    /// install asked for, or the next start a staged install runs at).
    pub fn is_busy(&self) -> bool {
        self.in_flight() || matches!(self, State::RebootPending | State::StagedForBoot)
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Transferring => "transferring",
            State::Executing => "executing",
            State::Verifying => "verifying",
            State::RebootPending => "reboot_pending",
            State::StagedForBoot => "staged_for_boot",
            State::AwaitingRetry => "awaiting_retry",
            State::Applied => "applied",
            State::NotApplicable { .. } => "not_applicable",
            State::Failed { .. } => "failed",
            State::LoopDetected { .. } => "loop_detected",
            State::Cancelled => "cancelled",
            State::Superseded { .. } => "superseded",
        }
    }

    /// Where this state counts in results, the console's compliance and rollout gates.
    pub fn bucket(&self) -> Bucket {
        Bucket::of_name(self.name())
    }
}

/// The one split of delivery states that results, compliance and rollout gates count by.
/// A loop stopped by the breaker is `NotApplied` (the package is not in place and will not
/// be delivered again by itself), distinct from a delivery that `Failed` with a code; a
/// rollout gate counts both against a wave. A `superseded` package counts as applied: its
/// successor, which is in place, replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Applied,
    NotApplicable,
    NotApplied,
    Failed,
    InProgress,
}

impl Bucket {
    /// The bucket of a state by its stored name (`State::name`).
    pub fn of_name(state: &str) -> Bucket {
        match state {
            "applied" | "superseded" => Bucket::Applied,
            "not_applicable" => Bucket::NotApplicable,
            // Not in place, and not delivered again by itself.
            "loop_detected" | "cancelled" => Bucket::NotApplied,
            "failed" => Bucket::Failed,
            _ => Bucket::InProgress,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bucket::Applied => "applied",
            Bucket::NotApplicable => "not_applicable",
            Bucket::NotApplied => "not_applied",
            Bucket::Failed => "failed",
            Bucket::InProgress => "in_progress",
        }
    }

    /// Whether a rollout gate counts it against a wave.
    pub fn fails_a_wave(self) -> bool {
        matches!(self, Bucket::NotApplied | Bucket::Failed)
    }
}

/// How an install command ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "exit", rename_all = "snake_case")]
pub enum Execution {
    /// Exit code in the success list.
    Succeeded {
        code: i32,
    },
    /// Exit code in the reboot list (3010): applied once the machine restarts.
    RebootRequired {
        code: i32,
    },
    Failed {
        code: i32,
    },
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The server handed attempt `attempt` to the agent.
    Dispatched,
    /// Identification before anything is transferred.
    Probed {
        verdict: Verdict,
    },
    /// The agent could not proceed: disk too small (E06), transfer or verification of content
    /// failed (E10, E11, E18, E19, E25), …
    Refused {
        code: Code,
    },
    Transferred,
    /// The payload waits on the machine for its next start (`when: next_boot`).
    StagedForBoot,
    Executed {
        execution: Execution,
    },
    /// Identification after the install; `failing_rule` names the first rule that did not pass.
    Verified {
        verdict: Verdict,
        failing_rule: Option<String>,
    },
    /// No completion reply within the deadline, or the connection dropped mid-delivery (E13).
    NoReply,
    /// The next auto-update opportunity for a delivery awaiting retry.
    RetryDue,
    /// An administrator restarts a delivery that stopped (failed, loop detected).
    Reset,
    /// An administrator withdraws a delivery that is waiting (pending, awaiting retry). One
    /// already on the machine (in flight, restart pending, staged) is not withdrawn: the
    /// machine would go on with it and the result would not say so.
    Cancel,
    /// The dispatcher found a package superseding this one applied or being delivered on
    /// the machine (`core::lifecycle::superseded_by`): it is never handed out.
    Superseded {
        by: String,
    },
    /// The dispatcher found a package this one requires failed on the machine, or never
    /// delivered to it (`core::lifecycle::requirements`): it fails with E29, never handed out.
    RequirementFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Runs that exit successfully yet do not verify before the loop breaker stops re-delivery.
    pub max_unverified_runs: u32,
    /// Whether the agent may restart the machine itself after a reboot exit code.
    pub allow_reboot: bool,
    /// Attempts after which a delivery that would be retried stops as failed with its last
    /// code instead; 0 retries until applied (automatic update). A scenario sets a limit so
    /// that it ends: a machine short of disk (E06) needs an administrator, not a 100th try.
    #[serde(default)]
    pub max_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_unverified_runs: 3,
            allow_reboot: false,
            max_attempts: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: State,
    /// Attempts handed out so far; reports carry the attempt they belong to.
    pub attempt: u32,
    /// Install runs that exited successfully but did not verify as applied.
    pub unverified_runs: u32,
    /// The code of the last problem, kept when the delivery moves on (for results).
    pub last_code: Option<Code>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            state: State::Pending,
            attempt: 0,
            unverified_runs: 0,
            last_code: None,
        }
    }
}

/// What the caller does after persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Nothing,
    /// Deliver again at the machine's next opportunity.
    ScheduleRetry,
    /// Tell the agent it may restart the machine now.
    Reboot,
    /// Stop and show the code to administrators.
    Alert {
        code: Code,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub delivery: Delivery,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event} does not apply to a delivery in state {state} (attempt {attempt})")]
pub struct Invalid {
    pub state: &'static str,
    pub event: String,
    pub attempt: u32,
}

/// The next state of `d` after `event` reported for `attempt`.
pub fn next(
    d: &Delivery,
    event: &Event,
    attempt: u32,
    policy: &Policy,
) -> Result<Transition, Invalid> {
    let t = step(d, event, attempt, policy)?;
    let out_of_attempts = policy.max_attempts > 0 && t.delivery.attempt >= policy.max_attempts;
    if t.action != Action::ScheduleRetry || !out_of_attempts {
        return Ok(t);
    }
    let code = t.delivery.last_code.unwrap_or(Code::E13);
    Ok(Transition {
        delivery: Delivery {
            state: State::Failed { code },
            ..t.delivery
        },
        action: Action::Alert { code },
    })
}

fn step(d: &Delivery, event: &Event, attempt: u32, policy: &Policy) -> Result<Transition, Invalid> {
    let invalid = || Invalid {
        state: d.state.name(),
        event: format!("{event:?}"),
        attempt,
    };
    let mut n = d.clone();
    let go = |mut n: Delivery, state: State, action: Action| {
        n.state = state;
        Ok(Transition {
            delivery: n,
            action,
        })
    };
    // Reports from another attempt (late, duplicated, replayed) never move the delivery.
    let reports_current = attempt == d.attempt && d.attempt > 0;
    match (&d.state, event) {
        (State::Pending, Event::Dispatched) => {
            n.attempt += 1;
            go(n, State::Transferring, Action::Nothing)
        }
        (_, Event::Dispatched) => Err(invalid()),

        (State::AwaitingRetry, Event::RetryDue) => go(n, State::Pending, Action::Nothing),
        (State::Failed { .. } | State::LoopDetected { .. }, Event::Reset) => {
            n.unverified_runs = 0;
            go(n, State::Pending, Action::Nothing)
        }
        (State::Pending | State::AwaitingRetry, Event::Cancel) => {
            go(n, State::Cancelled, Action::Nothing)
        }
        (_, Event::RetryDue | Event::Reset | Event::Cancel) => Err(invalid()),
        // Decided by the server before a hand-out, so only while nothing is on the agent.
        (State::Pending | State::AwaitingRetry, Event::Superseded { by }) => {
            go(n, State::Superseded { by: by.clone() }, Action::Nothing)
        }
        (_, Event::Superseded { .. }) => Err(invalid()),
        (State::Pending | State::AwaitingRetry, Event::RequirementFailed) => {
            n.last_code = Some(Code::E29);
            go(
                n,
                State::Failed { code: Code::E29 },
                Action::Alert { code: Code::E29 },
            )
        }
        (_, Event::RequirementFailed) => Err(invalid()),

        _ if !reports_current => Err(invalid()),

        (State::Transferring, Event::Probed { verdict }) => match verdict {
            Verdict::Applied => go(n, State::Applied, Action::Nothing),
            // E04 on the result line: the package is not for this machine (no failure).
            Verdict::NotApplicable(reason) => {
                n.last_code = Some(Code::E04);
                go(
                    n,
                    State::NotApplicable {
                        reason: reason.clone(),
                    },
                    Action::Nothing,
                )
            }
            // Not applied, or cannot tell yet: install, then verify decides.
            Verdict::NotApplied | Verdict::Indeterminate(_) => {
                go(n, State::Transferring, Action::Nothing)
            }
        },
        (
            State::Transferring | State::Executing | State::StagedForBoot,
            Event::Refused { code },
        ) => {
            n.last_code = Some(*code);
            if code.transient() {
                go(n, State::AwaitingRetry, Action::ScheduleRetry)
            } else {
                go(
                    n,
                    State::Failed { code: *code },
                    Action::Alert { code: *code },
                )
            }
        }
        (State::Transferring, Event::Transferred) => go(n, State::Executing, Action::Nothing),
        (State::Executing, Event::StagedForBoot) => go(n, State::StagedForBoot, Action::Nothing),
        (State::Executing | State::StagedForBoot, Event::Executed { execution }) => match execution
        {
            Execution::Succeeded { .. } => go(n, State::Verifying, Action::Nothing),
            Execution::RebootRequired { .. } => {
                n.last_code = Some(Code::W22);
                let action = if policy.allow_reboot {
                    Action::Reboot
                } else {
                    Action::Nothing
                };
                go(n, State::RebootPending, action)
            }
            Execution::Failed { .. } => {
                n.last_code = Some(Code::E21);
                go(n, State::AwaitingRetry, Action::ScheduleRetry)
            }
            Execution::TimedOut => {
                n.last_code = Some(Code::E20);
                go(n, State::AwaitingRetry, Action::ScheduleRetry)
            }
        },
        (
            State::Verifying | State::RebootPending,
            Event::Verified {
                verdict,
                failing_rule,
            },
        ) => match verdict {
            Verdict::Applied => go(n, State::Applied, Action::Nothing),
            // E04 on the result line: the package is not for this machine (no failure).
            Verdict::NotApplicable(reason) => {
                n.last_code = Some(Code::E04);
                go(
                    n,
                    State::NotApplicable {
                        reason: reason.clone(),
                    },
                    Action::Nothing,
                )
            }
            Verdict::Indeterminate(_) => {
                n.last_code = Some(Code::E23);
                go(
                    n,
                    State::Failed { code: Code::E23 },
                    Action::Alert { code: Code::E23 },
                )
            }
            Verdict::NotApplied => {
                n.unverified_runs += 1;
                if n.unverified_runs >= policy.max_unverified_runs {
                    n.last_code = Some(Code::E24);
                    let rule = failing_rule
                        .clone()
                        .unwrap_or_else(|| "no rule reported".into());
                    go(
                        n,
                        State::LoopDetected { rule },
                        Action::Alert { code: Code::E24 },
                    )
                } else {
                    go(n, State::AwaitingRetry, Action::ScheduleRetry)
                }
            }
        },
        (s, Event::NoReply) if s.in_flight() => {
            n.last_code = Some(crate::faults::no_reply(*s == State::Transferring).code());
            go(n, State::AwaitingRetry, Action::ScheduleRetry)
        }
        _ => Err(invalid()),
    }
}

/// Whether `name` (a stored state's name) names a terminal state.
pub fn is_terminal_name(name: &str) -> bool {
    every_state()
        .iter()
        .any(|s| s.name() == name && s.is_terminal())
}

/// Every state's name, in the order of the delivery's life.
pub fn state_names() -> Vec<&'static str> {
    every_state().iter().map(State::name).collect()
}

/// State names as people read them, in English and Japanese; `removed` is how an uninstall's
/// `applied` is shown.
const LABELS: &[(&str, &str, &str)] = &[
    ("pending", "Pending", "待機中"),
    ("transferring", "Transferring", "転送中"),
    ("executing", "Executing", "実行中"),
    ("verifying", "Verifying", "確認中"),
    ("reboot_pending", "Restart pending", "再起動待ち"),
    (
        "staged_for_boot",
        "Staged for next start",
        "次回起動時に実行",
    ),
    ("awaiting_retry", "Awaiting retry", "再試行待ち"),
    ("applied", "Applied", "適用済み"),
    ("removed", "Removed", "削除済み"),
    ("not_applicable", "Not applicable", "対象外"),
    ("failed", "Failed", "失敗"),
    (
        "loop_detected",
        "Re-delivery loop stopped",
        "再配信ループ停止",
    ),
    ("cancelled", "Cancelled", "キャンセル済み"),
    ("superseded", "Superseded", "置き換え済み"),
];

/// A state's label in `lang`; an unknown name is shown as it is.
pub fn state_label(name: &str, lang: Lang) -> &str {
    LABELS
        .iter()
        .find(|(k, _, _)| *k == name)
        .map_or(name, |(_, en, ja)| match lang {
            Lang::En => en,
            Lang::Ja => ja,
        })
}

/// One state of each kind, for tests (here and in the store) that check a rule against every
/// state; the match makes a new kind of state fail to compile here, so those rules are looked
/// at again.
pub fn every_state() -> Vec<State> {
    let all = vec![
        State::Pending,
        State::Transferring,
        State::Executing,
        State::Verifying,
        State::RebootPending,
        State::StagedForBoot,
        State::AwaitingRetry,
        State::Applied,
        State::NotApplicable { reason: "r".into() },
        State::Failed { code: Code::E06 },
        State::LoopDetected { rule: "r".into() },
        State::Cancelled,
        State::Superseded { by: "p".into() },
    ];
    for s in &all {
        match s {
            State::Pending
            | State::Transferring
            | State::Executing
            | State::Verifying
            | State::RebootPending
            | State::StagedForBoot
            | State::AwaitingRetry
            | State::Applied
            | State::NotApplicable { .. }
            | State::Failed { .. }
            | State::LoopDetected { .. }
            | State::Cancelled
            | State::Superseded { .. } => {}
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(events: &[Event], policy: &Policy) -> Delivery {
        let mut d = Delivery::default();
        for e in events {
            let attempt = if matches!(e, Event::Dispatched) {
                d.attempt + 1
            } else {
                d.attempt
            };
            d = next(&d, e, attempt, policy)
                .unwrap_or_else(|err| panic!("{err}"))
                .delivery;
        }
        d
    }

    fn verified(v: Verdict) -> Event {
        Event::Verified {
            verdict: v,
            failing_rule: Some("file C:\\x.dll version >= 1.0.0.0".into()),
        }
    }

    fn one_run(exit: Execution, verify: Option<Verdict>) -> Vec<Event> {
        let mut v = vec![
            Event::Dispatched,
            Event::Probed {
                verdict: Verdict::NotApplied,
            },
            Event::Transferred,
            Event::Executed { execution: exit },
        ];
        v.extend(verify.map(verified));
        v
    }

    #[test]
    fn happy_path_and_already_applied() {
        let p = Policy::default();
        assert_eq!(
            run(
                &one_run(Execution::Succeeded { code: 0 }, Some(Verdict::Applied)),
                &p
            )
            .state,
            State::Applied
        );
        assert_eq!(
            run(
                &[
                    Event::Dispatched,
                    Event::Probed {
                        verdict: Verdict::Applied
                    }
                ],
                &p
            )
            .state,
            State::Applied
        );
        let d = run(
            &[
                Event::Dispatched,
                Event::Probed {
                    verdict: Verdict::NotApplicable("en machine".into()),
                },
            ],
            &p,
        );
        assert_eq!(
            d.state,
            State::NotApplicable {
                reason: "en machine".into()
            }
        );
    }

    #[test]
    fn loop_breaker_after_three_unverified_runs() {
        let p = Policy::default();
        let mut events = Vec::new();
        for i in 0..3 {
            events.extend(one_run(
                Execution::Succeeded { code: 0 },
                Some(Verdict::NotApplied),
            ));
            let d = run(&events, &p);
            if i < 2 {
                assert_eq!(d.state, State::AwaitingRetry, "run {i}");
                events.push(Event::RetryDue);
            } else {
                assert_eq!(
                    d.state,
                    State::LoopDetected {
                        rule: "file C:\\x.dll version >= 1.0.0.0".into()
                    }
                );
                assert_eq!(
                    (d.attempt, d.unverified_runs, d.last_code),
                    (3, 3, Some(Code::E24))
                );
            }
        }
        // A reset starts counting again.
        let d = run(&events, &p);
        let t = next(&d, &Event::Reset, d.attempt, &p).unwrap();
        assert_eq!(
            (t.delivery.state, t.delivery.unverified_runs),
            (State::Pending, 0)
        );
    }

    #[test]
    fn only_waiting_deliveries_are_cancelled_and_stay_cancelled() {
        let p = Policy::default();
        let pending = Delivery::default();
        let t = next(&pending, &Event::Cancel, 0, &p).unwrap();
        assert_eq!(t.delivery.state, State::Cancelled);
        assert!(t.delivery.state.is_terminal());
        assert_eq!(t.delivery.state.bucket(), Bucket::NotApplied);
        let waiting = run(&one_run(Execution::Failed { code: 1 }, None), &p);
        assert_eq!(waiting.state, State::AwaitingRetry);
        assert_eq!(
            next(&waiting, &Event::Cancel, waiting.attempt, &p)
                .unwrap()
                .delivery
                .state,
            State::Cancelled
        );
        // On the machine: not withdrawn.
        let busy = run(&[Event::Dispatched], &p);
        assert!(next(&busy, &Event::Cancel, busy.attempt, &p).is_err());
        // Never handed out again, never reset, never cancelled twice.
        let c = t.delivery;
        for e in [
            Event::Dispatched,
            Event::RetryDue,
            Event::Reset,
            Event::Cancel,
        ] {
            assert!(next(&c, &e, c.attempt, &p).is_err(), "{e:?}");
        }
        assert_eq!(state_label("cancelled", Lang::Ja), "キャンセル済み");
    }

    #[test]
    fn failures_map_to_codes() {
        let p = Policy::default();
        let cases: Vec<(Vec<Event>, State, Option<Code>)> = vec![
            (
                one_run(Execution::Failed { code: 1603 }, None),
                State::AwaitingRetry,
                Some(Code::E21),
            ),
            (
                one_run(Execution::TimedOut, None),
                State::AwaitingRetry,
                Some(Code::E20),
            ),
            (
                one_run(
                    Execution::Succeeded { code: 0 },
                    Some(Verdict::Indeterminate("no version resource".into())),
                ),
                State::Failed { code: Code::E23 },
                Some(Code::E23),
            ),
            (
                vec![Event::Dispatched, Event::Refused { code: Code::E06 }],
                State::AwaitingRetry,
                Some(Code::E06),
            ),
            (
                vec![Event::Dispatched, Event::Refused { code: Code::E18 }],
                State::Failed { code: Code::E18 },
                Some(Code::E18),
            ),
            (
                vec![Event::Dispatched, Event::Transferred, Event::NoReply],
                State::AwaitingRetry,
                Some(Code::E13),
            ),
            (
                one_run(Execution::RebootRequired { code: 3010 }, None),
                State::RebootPending,
                Some(Code::W22),
            ),
            (
                one_run(
                    Execution::RebootRequired { code: 3010 },
                    Some(Verdict::Applied),
                ),
                State::Applied,
                Some(Code::W22),
            ),
        ];
        for (events, state, code) in cases {
            let d = run(&events, &p);
            assert_eq!((&d.state, d.last_code), (&state, code), "{events:?}");
        }
    }

    #[test]
    fn reboot_only_when_policy_allows() {
        let events = one_run(Execution::Succeeded { code: 0 }, None);
        let d = run(&events[..3], &Policy::default());
        let exec = Event::Executed {
            execution: Execution::RebootRequired { code: 3010 },
        };
        assert_eq!(
            next(&d, &exec, d.attempt, &Policy::default())
                .unwrap()
                .action,
            Action::Nothing
        );
        let allow = Policy {
            allow_reboot: true,
            ..Policy::default()
        };
        assert_eq!(
            next(&d, &exec, d.attempt, &allow).unwrap().action,
            Action::Reboot
        );
    }

    #[test]
    fn a_retry_limit_ends_in_failed_with_the_last_code() {
        let p = Policy {
            max_attempts: 2,
            ..Policy::default()
        };
        let refuse =
            |d: &Delivery| next(d, &Event::Refused { code: Code::E06 }, d.attempt, &p).unwrap();
        let d = next(&Delivery::default(), &Event::Dispatched, 0, &p)
            .unwrap()
            .delivery;
        let t = refuse(&d);
        assert_eq!(t.delivery.state, State::AwaitingRetry);
        let d = next(&t.delivery, &Event::RetryDue, 0, &p).unwrap().delivery;
        let d = next(&d, &Event::Dispatched, 0, &p).unwrap().delivery;
        let t = refuse(&d);
        assert_eq!(t.delivery.state, State::Failed { code: Code::E06 });
        assert_eq!(t.action, Action::Alert { code: Code::E06 });
        // The loop breaker still names the rule when it trips on the same attempt.
        let p = Policy {
            max_attempts: 3,
            ..Policy::default()
        };
        let unverified = one_run(Execution::Succeeded { code: 0 }, Some(Verdict::NotApplied));
        let mut events = unverified.clone();
        for _ in 0..2 {
            events.push(Event::RetryDue);
            events.extend(unverified.iter().cloned());
        }
        let d = run(&events, &p);
        assert!(
            matches!(d.state, State::LoopDetected { .. }),
            "{:?}",
            d.state
        );
    }

    #[test]
    fn terminal_names_follow_the_states() {
        for s in every_state() {
            assert_eq!(is_terminal_name(s.name()), s.is_terminal(), "{}", s.name());
        }
        assert!(!is_terminal_name("no such state"));
    }

    #[test]
    fn every_state_has_a_label_in_both_languages() {
        for name in state_names() {
            assert_ne!(state_label(name, Lang::En), name, "{name}");
            assert_ne!(state_label(name, Lang::Ja), name, "{name}");
        }
        assert_eq!(state_label("removed", Lang::Ja), "削除済み");
        assert_eq!(state_label("nonsense", Lang::Ja), "nonsense");
    }

    #[test]
    fn one_bucket_per_state() {
        let states = every_state();
        for s in &states {
            // Every terminal state has a bucket of its own; every other is in progress.
            assert_eq!(s.is_terminal(), s.bucket() != Bucket::InProgress, "{s:?}");
        }
        let looped = states
            .iter()
            .find(|s| matches!(s, State::LoopDetected { .. }));
        assert_eq!(looped.unwrap().bucket(), Bucket::NotApplied);
        assert!(Bucket::NotApplied.fails_a_wave() && Bucket::Failed.fails_a_wave());
        assert!(!Bucket::NotApplicable.fails_a_wave());
    }

    #[test]
    fn superseded_only_before_a_hand_out() {
        let p = Policy::default();
        let by = Event::Superseded {
            by: "hotfix-2".into(),
        };
        let d = next(&Delivery::default(), &by, 0, &p).unwrap();
        assert_eq!(
            d.delivery.state,
            State::Superseded {
                by: "hotfix-2".into()
            }
        );
        assert_eq!(d.delivery.state.bucket(), Bucket::Applied);
        assert!(d.delivery.state.is_terminal());
        // Waiting for a retry: nothing is on the agent, so it may still be superseded.
        let waiting = run(&one_run(Execution::Failed { code: 1 }, None), &p);
        assert_eq!(waiting.state, State::AwaitingRetry);
        assert!(next(&waiting, &by, 0, &p).is_ok());
        // On the agent, or finished: the dispatcher's decision no longer applies.
        let sent = next(&Delivery::default(), &Event::Dispatched, 1, &p)
            .unwrap()
            .delivery;
        assert!(next(&sent, &by, 1, &p).is_err());
        let applied = run(
            &one_run(Execution::Succeeded { code: 0 }, Some(Verdict::Applied)),
            &p,
        );
        assert!(next(&applied, &by, 1, &p).is_err());
    }

    #[test]
    fn a_failed_requirement_fails_only_before_a_hand_out() {
        let p = Policy::default();
        let e = Event::RequirementFailed;
        let d = next(&Delivery::default(), &e, 0, &p).unwrap();
        assert_eq!(d.delivery.state, State::Failed { code: Code::E29 });
        assert_eq!(d.delivery.last_code, Some(Code::E29));
        assert_eq!(d.action, Action::Alert { code: Code::E29 });
        let waiting = run(&one_run(Execution::Failed { code: 1 }, None), &p);
        assert_eq!(waiting.state, State::AwaitingRetry);
        assert!(next(&waiting, &e, 0, &p).is_ok());
        let sent = next(&Delivery::default(), &Event::Dispatched, 1, &p)
            .unwrap()
            .delivery;
        assert!(next(&sent, &e, 1, &p).is_err());
    }

    #[test]
    fn stale_reports_are_refused() {
        let p = Policy::default();
        let d = run(&one_run(Execution::Failed { code: 1 }, None), &p);
        let d = next(&d, &Event::RetryDue, 0, &p).unwrap().delivery;
        let d = next(&d, &Event::Dispatched, 2, &p).unwrap().delivery;
        // A duplicate of attempt 1's report arrives late.
        assert!(next(&d, &Event::Transferred, 1, &p).is_err());
        assert!(next(&d, &Event::Transferred, 2, &p).is_ok());
    }

    fn event() -> impl Strategy<Value = Event> {
        let verdict = prop_oneof![
            Just(Verdict::Applied),
            Just(Verdict::NotApplied),
            Just(Verdict::NotApplicable("x".into())),
            Just(Verdict::Indeterminate("y".into())),
        ];
        let exec = prop_oneof![
            Just(Execution::Succeeded { code: 0 }),
            Just(Execution::RebootRequired { code: 3010 }),
            Just(Execution::Failed { code: 1 }),
            Just(Execution::TimedOut),
        ];
        prop_oneof![
            Just(Event::Dispatched),
            verdict
                .clone()
                .prop_map(|verdict| Event::Probed { verdict }),
            prop_oneof![
                Just(Code::E06),
                Just(Code::E10),
                Just(Code::E19),
                Just(Code::E18)
            ]
            .prop_map(|code| Event::Refused { code }),
            Just(Event::Transferred),
            exec.prop_map(|execution| Event::Executed { execution }),
            verdict.prop_map(|verdict| Event::Verified {
                verdict,
                failing_rule: None
            }),
            Just(Event::NoReply),
            Just(Event::RetryDue),
            Just(Event::Reset),
            Just(Event::Cancel),
            Just(Event::Superseded { by: "p".into() }),
            Just(Event::RequirementFailed),
        ]
    }

    proptest! {
        /// A delivery never becomes applied except by an identification that says so, and
        /// never leaves a terminal state except by an explicit reset.
        #[test]
        fn applied_only_by_a_passing_identification(events in prop::collection::vec((event(), 0u32..4), 0..60)) {
            let p = Policy::default();
            let mut d = Delivery::default();
            for (e, attempt) in events {
                let Ok(t) = next(&d, &e, attempt, &p) else { continue };
                if t.delivery.state == State::Applied && d.state != State::Applied {
                    let passing = matches!(&e, Event::Probed { verdict: Verdict::Applied } | Event::Verified { verdict: Verdict::Applied, .. });
                    prop_assert!(passing, "{:?} made {:?} applied", e, d.state);
                }
                if d.state.is_terminal() && t.delivery.state != d.state {
                    prop_assert_eq!(&e, &Event::Reset);
                }
                prop_assert!(t.delivery.unverified_runs <= p.max_unverified_runs);
                d = t.delivery;
            }
        }
    }
}
