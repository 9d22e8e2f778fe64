//! Decisions every delivery path shares, whoever carries them out (the agent on its own
//! machine, the server's SSH worker on a remote one): how much disk a package needs, what
//! an install's exit means, which code a failed run reports.

use crate::core::delivery::Execution;
use crate::core::errors::Code;
use crate::core::identify::Verdict;
use crate::model::package::{Package, RebootPolicy};

/// Free disk a package needs on the target: three times its archive (the FAQ's rule: the
/// archive, the extracted payload, and room for the installer's own work).
pub fn required_disk(archive_size: u64) -> u64 {
    archive_size.saturating_mul(3)
}

/// Whether a probe's verdict calls for an install (else the delivery ends at the probe).
pub fn needs_install(v: &Verdict) -> bool {
    matches!(v, Verdict::NotApplied | Verdict::Indeterminate(_))
}

/// What an install's exit code (None: killed at its time limit) means for `pkg`.
pub fn execution(pkg: &Package, exit: Option<i32>) -> Execution {
    match exit {
        None => Execution::TimedOut,
        Some(c) if pkg.install.success_exit_codes.contains(&c) => {
            if pkg.reboot == RebootPolicy::Always {
                Execution::RebootRequired { code: c }
            } else {
                Execution::Succeeded { code: c }
            }
        }
        Some(c) if pkg.install.reboot_exit_codes.contains(&c) => {
            Execution::RebootRequired { code: c }
        }
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
            let e = execution(&p, *exit);
            assert_eq!(&e, want, "{exit:?}");
            assert_eq!(execution_code(&e), *code, "{exit:?}");
        }
        assert_eq!(
            execution(&pkg("always"), Some(0)),
            Execution::RebootRequired { code: 0 }
        );
        assert_eq!(required_disk(100 << 20), 300 << 20);
        assert_eq!(required_disk(u64::MAX), u64::MAX);
        assert!(needs_install(&Verdict::NotApplied));
        assert!(!needs_install(&Verdict::Applied));
    }
}
