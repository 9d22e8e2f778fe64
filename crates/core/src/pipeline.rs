//! One delivery, as decisions: which step comes next after what a step found, and what is
//! reported on the way. Whoever carries a delivery out — the agent on its own machine, an
//! emulated endpoint, the server's SSH worker on a remote host — runs the same steps
//! (`runner`) and asks this module what they mean, so the steps, refusals, codes and the
//! failing rule are decided once.
//!
//! `next(step, outcome, package)` is the whole state machine of one attempt on the machine;
//! `core::delivery` is the server's view of the same attempt, fed by the reports made here.

use crate::delivery::{Event, Execution};
use crate::errors::{Code, Params};
use crate::faults::{self, Fault, Shell};
use crate::identify::{Check, Identification, TARGET_CHECK, Verdict};
use crate::model::package::{Command, Package, RebootPolicy};
use crate::model::raw::When;
use serde::{Deserialize, Serialize};

/// The step a delivery is at: the step about to run (or running when the carrier stopped).
/// Agents journal it, so its serialized form is kept stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    Probe,
    Disk,
    Fetch,
    Extract,
    /// `pgid`: the install's process group once started; found at restart, it is killed and
    /// the install runs again from a freshly verified payload.
    Execute {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pgid: Option<i32>,
    },
    /// `when: next_boot`: the verified payload stays staged; the boot it was staged in is
    /// read and reported.
    Stage,
    /// Staged, waiting for the machine to start again: the install runs at the first start
    /// after `boot_id`, before any other work.
    AwaitBoot {
        boot_id: String,
    },
    Verify,
    /// Waiting for the restart the install asked for. `boot_id` is the boot it was installed
    /// in; `reboot_requested`: the server allowed the agent to restart; `rebooted`: a restart
    /// was recorded (tests) or observed.
    RebootPending {
        boot_id: String,
        #[serde(default)]
        reboot_requested: bool,
        #[serde(default)]
        rebooted: bool,
    },
    /// `kind: agent`: the new binary is staged beside the running agent and the running one
    /// kept as `.previous`; next, the new one is renamed over the current one (again after a
    /// kill: the rename is idempotent) and a watchdog is started.
    AgentSwap,
    /// `kind: agent`: the new binary is in place and the agent restarted into it (or is about
    /// to); it must check in with the server before `deadline_ms` (Unix milliseconds), else
    /// the watchdog restores the previous binary and reports E30.
    AgentCheckIn {
        deadline_ms: i64,
    },
    Done,
}

/// What a delivery is for: the package's install command until identification says
/// applied, or its uninstall command until it says not applied. Both run the same steps;
/// an uninstall's "done" is the package gone, so the server's states (applied, loop
/// detected…) mean "goal reached" and "goal never verified" for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Install,
    Uninstall,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Install => "install",
            Action::Uninstall => "uninstall",
        })
    }
}

impl Action {
    pub fn is_install(&self) -> bool {
        *self == Action::Install
    }

    /// The command this action runs; None: the package has no uninstall command.
    pub fn command<'p>(&self, pkg: &'p Package) -> Option<&'p Command> {
        match self {
            Action::Install => Some(&pkg.install),
            Action::Uninstall => pkg.uninstall.as_ref(),
        }
    }

    /// The identification read toward this action's goal: for an uninstall, "applied" means
    /// there is work to do and "not applied" that the goal is reached. The checks stay as
    /// they were observed.
    pub fn toward(&self, ident: Identification) -> Identification {
        let verdict = match (self, ident.verdict) {
            (Action::Uninstall, Verdict::Applied) => Verdict::NotApplied,
            (Action::Uninstall, Verdict::NotApplied) => Verdict::Applied,
            (_, v) => v,
        };
        Identification { verdict, ..ident }
    }

    /// The rule to name when the goal was not reached: the first that could not be judged
    /// when the verdict is indeterminate (E23), else the first that did not pass for an
    /// install, the first that still holds for an uninstall.
    pub fn failing_rule(&self, ident: &Identification) -> Option<String> {
        match (self, &ident.verdict) {
            (_, Verdict::Applied) => None,
            (_, Verdict::Indeterminate(_)) => ident
                .explanation
                .iter()
                .find(|c| c.outcome == crate::identify::Outcome::Unknown)
                .map(|c| c.check.clone()),
            (Action::Install, _) => ident.failing_check().map(|c| c.check.clone()),
            (Action::Uninstall, _) => ident
                .explanation
                .iter()
                .find(|c| c.outcome == crate::identify::Outcome::Pass && c.check != TARGET_CHECK)
                .map(|c| format!("{} (still holds after the uninstall)", c.check)),
        }
    }
}

/// Why a delivery cannot go on: the code reported, with what its message names.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: Code,
    pub params: Params,
}

impl Refusal {
    pub fn new(code: Code, params: Params) -> Refusal {
        Refusal { code, params }
    }

    /// A refusal whose message only needs a free-text detail.
    pub fn detail(code: Code, detail: impl Into<String>) -> Refusal {
        Refusal::new(
            code,
            Params {
                detail: Some(detail.into()),
                ..Params::default()
            },
        )
    }
}

/// What results show beside the state: figures, exit code, output, explanation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Detail {
    /// The code the agent raised, with the figures its message needs (E06: free and required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(default)]
    pub params: Params,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last 64 KiB of the install command's output (stdout and stderr interleaved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explanation: Vec<Check>,
    /// Where the content came from (server, relay, URL, share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What a step found, as typed data (never message text).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The probe's identification (before anything is transferred).
    Probed(Identification),
    /// Free bytes where the package would be staged.
    FreeSpace(u64),
    /// The archive is on the machine, its hash checked.
    Fetched,
    /// The payload is extracted and verified; `source` says where it came from.
    Extracted { source: String },
    /// The payload is staged for the next start; `boot_id` is the current boot.
    Staged { boot_id: String },
    /// The install ran: its exit code (None: killed at its time limit), output, and the
    /// boot it ran in.
    Ran {
        exit: Option<i32>,
        output: String,
        boot_id: String,
        /// What ran the command: under `sh`, 126 and 127 are the shell's own.
        shell: Shell,
    },
    /// The identification after the install.
    Verified(Identification),
    /// `kind: agent`: the new binary is staged and the running one kept as `.previous`.
    AgentStaged,
    /// `kind: agent`: the agent now running reached the server (TLS with the pin, its
    /// credential accepted); its identification (its own version against the package's).
    CheckedIn(Identification),
    /// The step could not be carried out.
    Refused(Refusal),
}

/// What to report, if anything, and where to go next.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub report: Option<(Event, Detail)>,
    pub next: Step,
}

impl Decision {
    fn go(next: Step) -> Decision {
        Decision { report: None, next }
    }
    fn report(event: Event, detail: Detail, next: Step) -> Decision {
        Decision {
            report: Some((event, detail)),
            next,
        }
    }
}

/// A refusal of package `package_id`: reported, and nothing after it runs.
pub fn refused(package_id: &str, r: Refusal) -> Decision {
    let Refusal { code, params } = r;
    Decision::report(
        Event::Refused { code },
        Detail {
            code: Some(code),
            params: Params {
                package: Some(package_id.to_string()),
                ..params
            },
            ..Detail::default()
        },
        Step::Done,
    )
}

/// The next step after `step` found `outcome`, for `action` on the signed package `pkg` of an
/// archive of `archive_size` bytes, run `when` says. (Before the manifest's signature is
/// checked there is no package: a bad signature is a `refused` decision.)
pub fn next(
    step: &Step,
    outcome: Outcome,
    pkg: &Package,
    action: Action,
    when: When,
    archive_size: u64,
) -> Decision {
    match (step, outcome) {
        (_, Outcome::Refused(r)) => refused(pkg.id.as_str(), r),
        (Step::Probe, Outcome::Probed(ident)) => {
            let ident = action.toward(ident);
            let next = if needs_install(&ident.verdict) {
                Step::Disk
            } else {
                Step::Done
            };
            Decision::report(
                Event::Probed {
                    verdict: ident.verdict,
                },
                Detail {
                    explanation: ident.explanation,
                    ..Detail::default()
                },
                next,
            )
        }
        (Step::Disk, Outcome::FreeSpace(free)) => {
            let required = required_disk(archive_size);
            if free < required {
                let params = Params {
                    free_bytes: Some(free),
                    required_bytes: Some(required),
                    ..Params::default()
                };
                refused(pkg.id.as_str(), Refusal::new(Code::E06, params))
            } else {
                Decision::go(Step::Fetch)
            }
        }
        (Step::Fetch, Outcome::Fetched) => Decision::go(Step::Extract),
        (Step::Extract, Outcome::Extracted { source }) => Decision::report(
            Event::Transferred,
            Detail {
                source: Some(source),
                ..Detail::default()
            },
            match when {
                When::Immediately => Step::Execute { pgid: None },
                When::NextBoot => Step::Stage,
            },
        ),
        (Step::Stage, Outcome::Staged { boot_id }) => Decision::report(
            Event::StagedForBoot,
            Detail::default(),
            Step::AwaitBoot { boot_id },
        ),
        (
            Step::Execute { .. },
            Outcome::Ran {
                exit,
                output,
                boot_id,
                shell,
            },
        ) => {
            let Some(command) = action.command(pkg) else {
                return refused(pkg.id.as_str(), no_uninstall());
            };
            if let Some(why) = exit.and_then(|c| {
                let listed = command.success_exit_codes.contains(&c)
                    || command.reboot_exit_codes.contains(&c);
                faults::not_started(shell, c, listed)
            }) {
                // The shell's own complaint ("Permission denied", "not found") ends the output.
                let said = output
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                return refused(
                    pkg.id.as_str(),
                    Fault::InstallerNotStarted.refusal(None, format!("{why}: {}", said.trim())),
                );
            }
            let execution = execution(pkg, command, exit);
            let next = match execution {
                Execution::Succeeded { .. } => Step::Verify,
                Execution::RebootRequired { .. } => Step::RebootPending {
                    boot_id,
                    reboot_requested: false,
                    rebooted: false,
                },
                Execution::Failed { .. } | Execution::TimedOut => Step::Done,
            };
            Decision::report(
                Event::Executed {
                    execution: execution.clone(),
                },
                Detail {
                    code: execution_code(&execution),
                    params: Params {
                        package: Some(pkg.id.as_str().to_string()),
                        exit_code: exit,
                        ..Params::default()
                    },
                    exit_code: exit,
                    output_tail: Some(output),
                    ..Detail::default()
                },
                next,
            )
        }
        (Step::Execute { .. }, Outcome::AgentStaged) => Decision::go(Step::AgentSwap),
        (Step::AgentCheckIn { .. }, Outcome::CheckedIn(ident)) => match ident.verdict {
            Verdict::Applied => Decision::report(
                Event::Executed {
                    execution: Execution::Succeeded { code: 0 },
                },
                Detail {
                    params: Params {
                        package: Some(pkg.id.as_str().to_string()),
                        ..Params::default()
                    },
                    exit_code: Some(0),
                    output_tail: Some(
                        ident
                            .explanation
                            .iter()
                            .map(|c| format!("{}: {}", c.check, c.detail))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
                    ..Detail::default()
                },
                Step::Verify,
            ),
            _ => refused(
                pkg.id.as_str(),
                Refusal::detail(Code::E30, wrong_build(&ident)),
            ),
        },
        (Step::Verify, Outcome::Verified(ident)) => {
            let ident = action.toward(ident);
            Decision::report(
                Event::Verified {
                    failing_rule: action.failing_rule(&ident),
                    verdict: ident.verdict,
                },
                Detail {
                    explanation: ident.explanation,
                    ..Detail::default()
                },
                Step::Done,
            )
        }
        // An outcome that does not belong to the step (a carrier's bug) stops the attempt
        // without a report; the server's no-reply rule settles it.
        (step, outcome) => {
            debug_assert!(false, "{outcome:?} does not follow {step:?}");
            Decision::go(Step::Done)
        }
    }
}

/// What an agent-upgrade watchdog does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// The new agent checked in (or the delivery moved on): the watchdog's work is done.
    Kept,
    /// Not yet: look again shortly.
    Wait,
    /// Restore the previous binary and report E30 with this reason.
    RollBack(String),
}

/// The watchdog's decision: `checked_in` (the new agent claimed the upgrade, or the delivery
/// is no longer waiting for it), whether the agent process is `alive`, and the time against
/// the deadline (Unix milliseconds). A check-in always wins; an agent that died before it,
/// or is still silent at the deadline, is rolled back.
pub fn watch(checked_in: bool, alive: bool, now_ms: i64, deadline_ms: i64) -> Watch {
    if checked_in {
        Watch::Kept
    } else if !alive {
        Watch::RollBack("the new agent exited before it checked in with the server".into())
    } else if now_ms >= deadline_ms {
        Watch::RollBack(
            "the new agent did not check in with the server before its deadline (check_in_deadline)".into(),
        )
    } else {
        Watch::Wait
    }
}

/// Why an agent whose version does not satisfy the agent package cannot keep the upgrade.
pub fn wrong_build(ident: &Identification) -> String {
    format!(
        "the agent that checked in is not the new build ({})",
        ident
            .explanation
            .iter()
            .map(|c| format!("{}: {}", c.check, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// At an agent's start (or `patchcast-agent recover` before it): an upgrade journaled at
/// `step` that no watchdog watches any more (`watched` false: stopped with the service, say)
/// and that the new agent has not claimed is rolled back, for the returned reason, once its
/// binary was swapped (`AgentCheckIn`, or `AgentSwap` with the staged `EXE.new` gone: no
/// watchdog was started yet). Nothing is swapped before that (`AgentSwap` resumes).
pub fn orphaned(step: &Step, new_staged: bool, watched: bool, claimed: bool) -> Option<String> {
    let swapped = match step {
        Step::AgentCheckIn { .. } => true,
        Step::AgentSwap => !new_staged,
        _ => false,
    };
    (swapped && !watched && !claimed).then(|| {
        "the new agent binary was in place but no watchdog watched it any more (stopped with the service?) and it had not checked in".into()
    })
}

/// The watchdog restored the previous agent binary of `package_id` for `why`: E30.
pub fn rolled_back(package_id: &str, why: &str) -> Decision {
    refused(package_id, Refusal::detail(Code::E30, why))
}

/// An uninstall of a package that has none (the server refuses such scenarios; a carrier
/// that gets one anyway refuses it too).
pub fn no_uninstall() -> Refusal {
    Refusal::detail(
        Code::E12,
        "the package has no uninstall command; add `uninstall:` to it and publish it again",
    )
}

/// Whether a delivery staged for the next start runs now: the machine has started again
/// since it was staged.
pub fn boot_came(step: &Step, current_boot: &str) -> bool {
    matches!(step, Step::AwaitBoot { boot_id } if boot_id != current_boot)
}

/// What a carrier waiting for a restart does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterReboot {
    /// The machine restarted since the install: verify.
    Verify,
    /// The server allowed a restart and the package permits one: restart (or record it).
    Restart,
    /// Keep waiting for someone to restart the machine.
    Wait,
}

/// The decision while in `RebootPending`, given the current boot id and the package's policy.
pub fn after_reboot(step: &Step, current_boot: &str, policy: RebootPolicy) -> AfterReboot {
    match step {
        Step::RebootPending { rebooted: true, .. } => AfterReboot::Verify,
        Step::RebootPending { boot_id, .. } if boot_id != current_boot => AfterReboot::Verify,
        Step::RebootPending {
            reboot_requested: true,
            ..
        } if policy != RebootPolicy::Never => AfterReboot::Restart,
        _ => AfterReboot::Wait,
    }
}

/// Free disk a package needs on the target: three times its archive (the FAQ's rule: the
/// archive, the extracted payload, and room for the installer's own work).
pub fn required_disk(archive_size: u64) -> u64 {
    archive_size.saturating_mul(3)
}

/// Whether a probe's verdict calls for an install (else the delivery ends at the probe).
pub fn needs_install(v: &Verdict) -> bool {
    matches!(v, Verdict::NotApplied | Verdict::Indeterminate(_))
}

/// What the exit code of `pkg`'s `command` (None: killed at its time limit) means.
pub fn execution(pkg: &Package, command: &Command, exit: Option<i32>) -> Execution {
    match exit {
        None => Execution::TimedOut,
        Some(c) if command.success_exit_codes.contains(&c) => {
            if pkg.reboot == RebootPolicy::Always {
                Execution::RebootRequired { code: c }
            } else {
                Execution::Succeeded { code: c }
            }
        }
        Some(c) if command.reboot_exit_codes.contains(&c) => Execution::RebootRequired { code: c },
        Some(c) => Execution::Failed { code: c },
    }
}

/// The code an execution reports: E20 timed out, E21 failed, W22 restart needed.
pub fn execution_code(e: &Execution) -> Option<Code> {
    match e {
        Execution::TimedOut => Some(Code::E20),
        Execution::Failed { .. } => Some(Code::E21),
        Execution::RebootRequired { .. } => Some(Code::W22),
        Execution::Succeeded { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(reboot: &str) -> Package {
        let yaml = format!(
            "id: t\nkind: application\ntitle: t\nversion: 1.0.0\ntargets:\n  - {{ os: debian }}\n\
             identification:\n  - probe: 'true'\n    exit_code: 0\npayload: [a.sh]\nreboot: {reboot}\n\
             install:\n  command: 'sh a.sh'\n  timeout: 1m\n"
        );
        let raw: crate::model::raw::RawPackage = serde_saphyr::from_str(&yaml).unwrap();
        let (p, problems) = crate::model::package::resolve(&raw);
        p.unwrap_or_else(|| panic!("{problems:?}"))
    }

    #[test]
    fn exits() {
        let p = pkg("if_required");
        let cases: &[(Option<i32>, Execution, Option<Code>)] = &[
            (Some(0), Execution::Succeeded { code: 0 }, None),
            (
                Some(3010),
                Execution::RebootRequired { code: 3010 },
                Some(Code::W22),
            ),
            (Some(1), Execution::Failed { code: 1 }, Some(Code::E21)),
            (None, Execution::TimedOut, Some(Code::E20)),
        ];
        for (exit, want, code) in cases {
            let e = execution(&p, &p.install, *exit);
            assert_eq!(&e, want, "{exit:?}");
            assert_eq!(execution_code(&e), *code, "{exit:?}");
        }
        assert_eq!(
            execution(&pkg("always"), &pkg("always").install, Some(0)),
            Execution::RebootRequired { code: 0 }
        );
        assert_eq!(required_disk(100 << 20), 300 << 20);
        assert_eq!(required_disk(u64::MAX), u64::MAX);
        assert!(needs_install(&Verdict::NotApplied));
        assert!(!needs_install(&Verdict::Applied));
    }

    fn ident(verdict: Verdict, failing: Option<&str>) -> Identification {
        use crate::identify::{Check, Outcome as Checked};
        Identification {
            verdict,
            explanation: failing
                .map(|rule| Check {
                    check: rule.into(),
                    outcome: Checked::Fail,
                    detail: String::new(),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn one_attempt_step_by_step() {
        let p = pkg("if_required");
        let at =
            |step: Step, o: Outcome| next(&step, o, &p, Action::Install, When::Immediately, 100);
        // Already applied at the probe: reported, and nothing is transferred.
        let d = at(Step::Probe, Outcome::Probed(ident(Verdict::Applied, None)));
        assert_eq!(d.next, Step::Done);
        assert!(matches!(d.report, Some((Event::Probed { .. }, _))));
        assert_eq!(
            at(
                Step::Probe,
                Outcome::Probed(ident(Verdict::NotApplied, Some("r")))
            )
            .next,
            Step::Disk
        );
        // Three times the archive, or E06 with both figures.
        assert_eq!(at(Step::Disk, Outcome::FreeSpace(300)).next, Step::Fetch);
        let d = at(Step::Disk, Outcome::FreeSpace(299));
        let (event, detail) = d.report.unwrap();
        assert_eq!(event, Event::Refused { code: Code::E06 });
        assert_eq!(
            (
                detail.params.free_bytes,
                detail.params.required_bytes,
                detail.params.package.as_deref()
            ),
            (Some(299), Some(300), Some("t"))
        );
        assert_eq!(d.next, Step::Done);
        assert_eq!(at(Step::Fetch, Outcome::Fetched).next, Step::Extract);
        let d = at(Step::Extract, Outcome::Extracted { source: "s".into() });
        assert_eq!(d.next, Step::Execute { pgid: None });
        assert_eq!(d.report.unwrap().1.source.as_deref(), Some("s"));
        let ran = |exit| Outcome::Ran {
            exit,
            output: "o".into(),
            boot_id: "b1".into(),
            shell: Shell::Posix,
        };
        assert_eq!(
            at(Step::Execute { pgid: None }, ran(Some(0))).next,
            Step::Verify
        );
        assert_eq!(
            at(Step::Execute { pgid: None }, ran(Some(3010))).next,
            Step::RebootPending {
                boot_id: "b1".into(),
                reboot_requested: false,
                rebooted: false
            }
        );
        let d = at(Step::Execute { pgid: None }, ran(Some(1)));
        assert_eq!(
            (d.next, d.report.unwrap().1.code),
            (Step::Done, Some(Code::E21))
        );
        // Under sh, 126 and 127 are the shell's: the installer never started (E12), and
        // nothing ran, so it is a refusal rather than a failed run.
        for exit in [126, 127] {
            let d = at(Step::Execute { pgid: None }, ran(Some(exit)));
            assert_eq!(
                (d.next, d.report.unwrap().0),
                (Step::Done, Event::Refused { code: Code::E12 })
            );
        }
        let other = Outcome::Ran {
            exit: Some(127),
            output: "o".into(),
            boot_id: "b1".into(),
            shell: Shell::Other,
        };
        let d = at(Step::Execute { pgid: None }, other);
        assert_eq!(d.report.unwrap().1.code, Some(Code::E21));
        // The verify names the first rule that did not pass; an applied one names none.
        let d = at(
            Step::Verify,
            Outcome::Verified(ident(Verdict::NotApplied, Some("MS08-067"))),
        );
        assert_eq!(
            d.report.unwrap().0,
            Event::Verified {
                verdict: Verdict::NotApplied,
                failing_rule: Some("MS08-067".into())
            }
        );
        assert_eq!(
            Action::Install.failing_rule(&ident(Verdict::Applied, Some("x"))),
            None
        );
        // Indeterminate: the rule that could not be judged, not one that failed before it.
        let mut undecided = ident(
            Verdict::Indeterminate("probe".into()),
            Some("file /x exists"),
        );
        undecided.explanation.push(crate::identify::Check {
            check: "probe `p` exits 0".into(),
            outcome: crate::identify::Outcome::Unknown,
            detail: "killed".into(),
        });
        for action in [Action::Install, Action::Uninstall] {
            assert_eq!(
                action.failing_rule(&undecided).as_deref(),
                Some("probe `p` exits 0")
            );
        }
        // Any step's refusal ends the attempt with its code.
        let d = at(
            Step::Fetch,
            Outcome::Refused(Refusal::detail(Code::E10, "gone")),
        );
        assert_eq!(
            (d.next, d.report.unwrap().0),
            (Step::Done, Event::Refused { code: Code::E10 })
        );
    }

    #[test]
    fn an_uninstall_aims_at_not_applied() {
        use crate::identify::{Check, Outcome as Checked};
        let mut p = pkg("if_required");
        let at = |p: &Package, step: Step, o: Outcome| {
            next(&step, o, p, Action::Uninstall, When::Immediately, 100)
        };
        let holds = Identification {
            verdict: Verdict::Applied,
            explanation: vec![Check {
                check: "file /opt/x exists".into(),
                outcome: Checked::Pass,
                detail: String::new(),
            }],
        };
        // No uninstall command: refused at the install step with E12.
        let ran = Outcome::Ran {
            exit: Some(0),
            output: String::new(),
            boot_id: "b".into(),
            shell: Shell::Posix,
        };
        let d = at(&p, Step::Execute { pgid: None }, ran.clone());
        assert_eq!(d.report.unwrap().0, Event::Refused { code: Code::E12 });
        p.uninstall = Some(p.install.clone());
        // Installed: there is work; already absent: the goal is reached at the probe.
        let d = at(&p, Step::Probe, Outcome::Probed(holds.clone()));
        assert_eq!(d.next, Step::Disk);
        let gone = ident(Verdict::NotApplied, Some("file /opt/x exists"));
        let d = at(&p, Step::Probe, Outcome::Probed(gone.clone()));
        assert_eq!(
            (d.next, d.report.unwrap().0),
            (
                Step::Done,
                Event::Probed {
                    verdict: Verdict::Applied
                }
            )
        );
        assert_eq!(at(&p, Step::Execute { pgid: None }, ran).next, Step::Verify);
        // Still there after the uninstall: not reached, naming the rule that still holds.
        let d = at(&p, Step::Verify, Outcome::Verified(holds));
        assert_eq!(
            d.report.unwrap().0,
            Event::Verified {
                verdict: Verdict::NotApplied,
                failing_rule: Some("file /opt/x exists (still holds after the uninstall)".into())
            }
        );
        let d = at(&p, Step::Verify, Outcome::Verified(gone));
        assert_eq!(
            d.report.unwrap().0,
            Event::Verified {
                verdict: Verdict::Applied,
                failing_rule: None
            }
        );
    }

    #[test]
    fn next_boot_stages_then_waits_for_a_new_boot() {
        let p = pkg("if_required");
        let at = |step: Step, o: Outcome| next(&step, o, &p, Action::Install, When::NextBoot, 100);
        let d = at(Step::Extract, Outcome::Extracted { source: "s".into() });
        assert_eq!(
            (d.next, d.report.unwrap().0),
            (Step::Stage, Event::Transferred)
        );
        let d = at(
            Step::Stage,
            Outcome::Staged {
                boot_id: "b1".into(),
            },
        );
        let waiting = Step::AwaitBoot {
            boot_id: "b1".into(),
        };
        assert_eq!(
            (d.next, d.report.unwrap().0),
            (waiting.clone(), Event::StagedForBoot)
        );
        assert!(!boot_came(&waiting, "b1"), "same boot: keep waiting");
        assert!(
            boot_came(&waiting, "b2"),
            "the machine started again: install"
        );
        assert!(!boot_came(&Step::Verify, "b2"));
    }

    #[test]
    fn waiting_for_a_restart() {
        let waiting = |requested, rebooted| Step::RebootPending {
            boot_id: "b1".into(),
            reboot_requested: requested,
            rebooted,
        };
        assert_eq!(
            after_reboot(&waiting(false, false), "b2", RebootPolicy::Never),
            AfterReboot::Verify
        );
        assert_eq!(
            after_reboot(&waiting(false, true), "b1", RebootPolicy::Never),
            AfterReboot::Verify
        );
        assert_eq!(
            after_reboot(&waiting(false, false), "b1", RebootPolicy::Always),
            AfterReboot::Wait
        );
        assert_eq!(
            after_reboot(&waiting(true, false), "b1", RebootPolicy::IfRequired),
            AfterReboot::Restart
        );
        assert_eq!(
            after_reboot(&waiting(true, false), "b1", RebootPolicy::Never),
            AfterReboot::Wait
        );
    }

    fn agent_pkg() -> Package {
        let yaml = "id: agent\nkind: agent\ntitle: agent\nversion: 0.1.0+b2\ntargets:\n  - { os: debian }\n\
                    payload: [patchcast-agent]\ncheck_in_deadline: 90s\n";
        let raw: crate::model::raw::RawPackage = serde_saphyr::from_str(yaml).unwrap();
        let (p, problems) = crate::model::package::resolve(&raw);
        p.unwrap_or_else(|| panic!("{problems:?}"))
    }

    fn agent_facts(version: Option<&str>) -> crate::identify::Facts {
        crate::identify::Facts {
            os: "debian-12".into(),
            arch: "x64".into(),
            language: "en".into(),
            agent_version: version.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn an_agent_package_is_applied_by_the_version_its_agent_reports() {
        let p = agent_pkg();
        assert_eq!(p.install.timeout, std::time::Duration::from_secs(90));
        assert_eq!(p.reboot, RebootPolicy::Never);
        let verdict = |v| crate::identify::identify(&p, &agent_facts(v)).verdict;
        assert_eq!(verdict(Some("0.1.0+b2")), Verdict::Applied);
        assert_eq!(verdict(Some("0.1.0+b3")), Verdict::Applied);
        assert_eq!(verdict(Some("0.1.0+b1")), Verdict::NotApplied);
        assert_eq!(verdict(Some("0.1.0")), Verdict::NotApplied);
        assert!(matches!(verdict(None), Verdict::Indeterminate(_)));
    }

    #[test]
    fn an_agent_upgrade_swaps_then_checks_in_then_verifies() {
        let p = agent_pkg();
        let at =
            |step: Step, o: Outcome| next(&step, o, &p, Action::Install, When::Immediately, 100);
        let d = at(Step::Execute { pgid: None }, Outcome::AgentStaged);
        assert_eq!((d.next, d.report), (Step::AgentSwap, None));
        let checked = |v| Outcome::CheckedIn(crate::identify::identify(&p, &agent_facts(Some(v))));
        let step = Step::AgentCheckIn { deadline_ms: 5 };
        // The new build checked in: executed, then verified like any install.
        let d = at(step.clone(), checked("0.1.0+b2"));
        assert_eq!(d.next, Step::Verify);
        assert_eq!(
            d.report.unwrap().0,
            Event::Executed {
                execution: Execution::Succeeded { code: 0 }
            }
        );
        // Whatever checked in is the old build (the swap was undone): E30, never applied.
        let d = at(step, checked("0.1.0+b1"));
        assert_eq!(d.next, Step::Done);
        let (event, detail) = d.report.unwrap();
        assert_eq!(event, Event::Refused { code: Code::E30 });
        assert!(
            detail.params.detail.unwrap().contains("0.1.0+b1"),
            "names the version that checked in"
        );
    }

    #[test]
    fn the_watchdog_keeps_a_check_in_and_rolls_back_a_death_or_silence() {
        // A check-in wins even when the process is gone or the deadline passed.
        let check_in = Step::AgentCheckIn { deadline_ms: 5 };
        assert!(orphaned(&check_in, false, false, false).is_some());
        assert!(orphaned(&check_in, false, true, false).is_none());
        assert!(orphaned(&check_in, false, false, true).is_none());
        assert!(orphaned(&Step::AgentSwap, false, false, false).is_some());
        assert!(orphaned(&Step::AgentSwap, true, false, false).is_none());
        assert!(orphaned(&Step::Execute { pgid: None }, false, false, false).is_none());
        assert_eq!(watch(true, false, 10, 5), Watch::Kept);
        assert_eq!(watch(true, true, 10, 5), Watch::Kept);
        assert_eq!(watch(false, true, 4, 5), Watch::Wait);
        assert!(matches!(watch(false, false, 4, 5), Watch::RollBack(w) if w.contains("exited")));
        assert!(matches!(watch(false, true, 5, 5), Watch::RollBack(w) if w.contains("deadline")));
        let d = rolled_back("agent", "why");
        assert_eq!(d.next, Step::Done);
        assert_eq!(d.report.unwrap().0, Event::Refused { code: Code::E30 });
    }

    #[test]
    fn agent_packages_refuse_what_an_agent_cannot_do() {
        let problems = |extra: &str| {
            let yaml = format!(
                "id: agent\nkind: agent\ntitle: agent\ntargets:\n  - {{ os: debian }}\n{extra}"
            );
            let raw: crate::model::raw::RawPackage = serde_saphyr::from_str(&yaml).unwrap();
            let (p, problems) = crate::model::package::resolve(&raw);
            assert!(p.is_none());
            problems
                .into_iter()
                .map(|p| format!("{}@{}", p.code, p.path))
                .collect::<Vec<_>>()
        };
        let got = problems(
            "payload: [a, b]\ninstall: { command: 'sh a' }\nuninstall: { command: 'rm a' }\n\
             identification:\n  - probe: 'true'\nwhen: next_boot\nreboot: always\n",
        );
        for want in [
            "agent-install-command@install",
            "agent-field@identification",
            "agent-field@uninstall",
            "agent-field@when",
            "agent-field@reboot",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} in {got:?}");
        }
        let got = problems("version: '1'\npayload: [a]\ncheck_in_deadline: soon\n");
        assert!(
            got.contains(&"duration-format@check_in_deadline".to_string()),
            "{got:?}"
        );
        let got = problems("payload: [a]\n");
        assert!(
            got.contains(&"agent-version-missing@kind".to_string()),
            "{got:?}"
        );
        let got = problems("version: '1'\npayload: [a, b]\n");
        assert!(
            got.contains(&"agent-payload@payload".to_string()),
            "{got:?}"
        );
    }
}
