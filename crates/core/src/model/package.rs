//! The validated package model and `resolve`, which turns a `RawPackage` into it while
//! collecting every problem (not just the first).

use super::catalog;
use super::problem::{Problem, Severity};
use super::raw::*;
use super::template::{RenderError, TEMPLATE_VARIABLES, TemplateContext, TemplateMachine, render};
use super::types::*;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Package {
    pub id: PackageId,
    pub kind: Kind,
    pub title: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    pub payload: Vec<String>,
    pub install: Command,
    pub uninstall: Option<Command>,
    pub reboot: RebootPolicy,
    pub when: When,
    /// Packages this one replaces (`core::lifecycle`).
    pub supersedes: Vec<PackageRef>,
    /// Packages that must be applied on a machine before this one (`core::lifecycle`).
    pub requires: Vec<PackageRef>,
}

/// Which list of other packages an entry is in.
#[derive(Debug, Clone, Copy)]
enum Field {
    Supersedes,
    Requires,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::Supersedes => "supersedes",
            Field::Requires => "requires",
        }
    }
}

/// Another package named by this one (`supersedes:`, `requires:`): an id, and the versions
/// of it (every version when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageRef {
    pub id: PackageId,
    pub versions: Option<VersionConstraint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    Hotfix {
        ms_number: Option<MsNumber>,
        kb: Option<KbNumber>,
    },
    ServicePack {
        level: SpLevel,
    },
    Application,
    /// The patchcast agent itself: applied when the agent's own version is at least the
    /// package's `version` (which resolve requires).
    Agent,
}

/// How long a new agent has to check in when `check_in_deadline` is not given.
pub const DEFAULT_CHECK_IN: Duration = Duration::from_secs(5 * 60);

/// A service pack level; SP2 is 2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct SpLevel {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for SpLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// A catalog OS id or product line.
    pub os: String,
    pub arch: Option<String>,
    /// Canonical lowercase BCP-47 tag; `None` means any language.
    pub language: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Rule {
    File {
        path: String,
        check: FileCheck,
    },
    InstalledUpdate {
        update: UpdateId,
    },
    ServicePack {
        level: SpLevel,
    },
    Registry {
        key: String,
        value: Option<String>,
        data: Option<String>,
    },
    Package {
        name: String,
        manager: Option<RawManager>,
        constraint: Option<VersionConstraint>,
    },
    Probe {
        command: String,
        exit_code: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum FileCheck {
    /// The file exists (with at least `version` / exactly `sha256` when given).
    New {
        version: Option<FileVersion>,
        sha256: Option<Sha256>,
    },
    /// The file has exactly this version or content.
    Rewrite {
        version: Option<FileVersion>,
        sha256: Option<Sha256>,
    },
    /// The file's version is at least this.
    VersionUp { version: FileVersion },
    /// The file is absent.
    Delete,
}

impl FileCheck {
    pub fn version(&self) -> Option<FileVersion> {
        match self {
            FileCheck::New { version, .. } | FileCheck::Rewrite { version, .. } => *version,
            FileCheck::VersionUp { version } => Some(*version),
            FileCheck::Delete => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
}

/// `>= 1.2.0-1`: compared with the dpkg or rpm ordering of the machine's package manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionConstraint {
    pub op: Op,
    pub version: String,
}

impl std::str::FromStr for VersionConstraint {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let s = s.trim();
        let (op, rest) = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            (">>", Op::Gt),
            ("<<", Op::Lt),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("=", Op::Eq),
        ]
        .iter()
        .find_map(|(p, op)| s.strip_prefix(p).map(|r| (*op, r)))
        .unwrap_or((Op::Eq, s));
        let version = rest.trim();
        let ok = !version.is_empty()
            && version.as_bytes()[0].is_ascii_alphanumeric()
            && version
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".+-~:_^".contains(&c));
        if ok {
            Ok(VersionConstraint {
                op,
                version: version.to_string(),
            })
        } else {
            Err(FormatError(format!(
                "`{s}` is not a package version constraint; expected e.g. `>= 1.2.0-1`, `= 2.4`, `< 3`"
            )))
        }
    }
}

impl std::fmt::Display for VersionConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">",
        };
        write!(f, "{op} {}", self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Command {
    pub template: String,
    pub success_exit_codes: Vec<i32>,
    pub reboot_exit_codes: Vec<i32>,
    #[serde(with = "as_secs")]
    pub timeout: Duration,
}

mod as_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebootPolicy {
    Never,
    IfRequired,
    Always,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Resolves a raw package into a validated one, collecting every problem.
/// Returns the package only when no problem is an error.
pub fn resolve(raw: &RawPackage) -> (Option<Package>, Vec<Problem>) {
    let mut r = Resolver::default();
    let pkg = r.package(raw);
    let ok = !r.problems.iter().any(|p| p.severity == Severity::Error);
    (pkg.filter(|_| ok), r.problems)
}

#[derive(Default)]
struct Resolver {
    problems: Vec<Problem>,
}

impl Resolver {
    fn err(
        &mut self,
        code: &'static str,
        path: impl Into<String>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.problems.push(Problem::error(code, path, msg, help));
    }

    fn warn(
        &mut self,
        code: &'static str,
        path: impl Into<String>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.problems.push(Problem::warning(code, path, msg, help));
    }

    fn parse<T: std::str::FromStr<Err = FormatError>>(
        &mut self,
        code: &'static str,
        path: &str,
        s: &str,
        help: &str,
    ) -> Option<T> {
        match s.parse() {
            Ok(v) => Some(v),
            Err(FormatError(msg)) => {
                self.err(code, path, msg, help);
                None
            }
        }
    }

    fn package(&mut self, raw: &RawPackage) -> Option<Package> {
        let id = self.parse::<PackageId>(
            "invalid-id",
            "id",
            &raw.id,
            "rename the package, e.g. `ms08-067-ws2003-ja`",
        );
        if raw.title.trim().is_empty() {
            self.err(
                "missing-title",
                "title",
                "title is empty",
                "give a one-line title, shown in results",
            );
        }
        let kind = self.kind(raw);
        let targets = self.targets(&raw.targets);
        let rules: Vec<Rule> = raw
            .identification
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.rule(&format!("identification[{i}]"), r))
            .collect();
        self.identifiability(raw, &kind);
        let targets_ok = !self.problems.iter().any(|p| p.path.starts_with("targets"));
        self.problems
            .extend(super::pitfalls::check(raw, targets_ok));
        let payload = self.payload(&raw.payload);
        // Lint renders with a sample machine of the package's kind (Windows or not: the shell
        // the command is quoted for); any variable that exists on every machine will do.
        let windows = raw
            .targets
            .first()
            .is_some_and(|t| t.os.starts_with("windows"));
        let (os, workdir) = if windows {
            ("windows-10", "C:\\ProgramData\\patchcast\\work\\example")
        } else {
            ("debian-12", "/var/lib/patchcast/work/example")
        };
        let sample = TemplateMachine {
            os: os.into(),
            arch: "x64".into(),
            language: "en".into(),
            hostname: "example".into(),
        };
        let ctx = TemplateContext::new(raw, workdir, sample);
        let install = match (&raw.install, raw.kind) {
            (Some(_), RawKind::Agent) => {
                self.err(
                    "agent-install-command",
                    "install",
                    "an agent package has no install command: the running agent puts the new binary in place of its own and restarts into it",
                    "remove `install:`; give the time the new agent has to check in as `check_in_deadline`",
                );
                self.agent(raw);
                None
            }
            (Some(c), _) => self.command("install", c, &ctx),
            (None, RawKind::Agent) => self.agent(raw),
            (None, _) => {
                self.err(
                    "missing-key",
                    "",
                    "missing field `install`: every package but `kind: agent` needs its install command",
                    "add `install:` with its `command`; the schema (`patchcast schema package`) lists the required keys",
                );
                None
            }
        };
        let uninstall = raw
            .uninstall
            .as_ref()
            .map(|u| self.command("uninstall", u, &ctx));
        let supersedes = self.refs(raw, &raw.supersedes, Field::Supersedes);
        let requires = self.refs(raw, &raw.requires, Field::Requires);
        let default_reboot = if raw.kind == RawKind::Agent {
            RawRebootPolicy::Never
        } else {
            RawRebootPolicy::IfRequired
        };
        let reboot = match raw.reboot.unwrap_or(default_reboot) {
            RawRebootPolicy::Never => RebootPolicy::Never,
            RawRebootPolicy::IfRequired => RebootPolicy::IfRequired,
            RawRebootPolicy::Always => RebootPolicy::Always,
        };
        Some(Package {
            id: id?,
            kind: kind?,
            title: raw.title.clone(),
            version: raw.version.clone(),
            description: raw.description.clone(),
            targets,
            rules,
            payload: payload?,
            install: install?,
            uninstall: match uninstall {
                Some(u) => Some(u?),
                None => None,
            },
            reboot,
            when: raw.when.unwrap_or_default(),
            supersedes,
            requires,
        })
    }

    /// `supersedes:` or `requires:` entries; a package can neither replace nor require
    /// itself (it would never be delivered).
    fn refs(&mut self, raw: &RawPackage, list: &[RawPackageRef], f: Field) -> Vec<PackageRef> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let at = format!("{}[{i}]", f.key());
            let Some(id) = self.parse::<PackageId>(
                "invalid-id",
                &at,
                s.id(),
                "name the other package by its id, e.g. `kb981550-ws2008-fileversion`",
            ) else {
                continue;
            };
            if s.id() == raw.id {
                let (code, what, fix) = match f {
                    Field::Supersedes => (
                        "supersedes-itself",
                        "supersedes itself",
                        "list the ids of the older packages this one replaces, not its own",
                    ),
                    Field::Requires => (
                        "requires-itself",
                        "requires itself",
                        "list the ids of the packages that must be applied before this one, not its own",
                    ),
                };
                self.err(
                    code,
                    &at,
                    format!(
                        "package `{}` {what}, so it would never be delivered",
                        raw.id
                    ),
                    fix,
                );
                continue;
            }
            let versions = match s {
                RawPackageRef::Versions(RawPackageVersions {
                    version: Some(v), ..
                }) => {
                    match self.parse::<VersionConstraint>(
                        "package-version-format",
                        &format!("{at}.version"),
                        v,
                        "write a constraint such as `< 2.0`, or omit `version` to mean every version",
                    ) {
                        Some(c) => Some(c),
                        None => continue,
                    }
                }
                _ => None,
            };
            out.push(PackageRef { id, versions });
        }
        out
    }

    fn kind(&mut self, raw: &RawPackage) -> Option<Kind> {
        let ms = raw.ms_number.as_deref().and_then(|s| {
            self.parse::<MsNumber>(
                "ms-number-format",
                "ms_number",
                s,
                "write the bulletin as MSyy-nnn, e.g. MS08-067",
            )
        });
        let kb = raw.kb.as_deref().and_then(|s| {
            self.parse::<KbNumber>(
                "kb-number-format",
                "kb",
                s,
                "write the KB number as KB and its digits, e.g. KB958644",
            )
        });
        if raw.check_in_deadline.is_some() && raw.kind != RawKind::Agent {
            self.err(
                "field-for-other-kind",
                "check_in_deadline",
                "`check_in_deadline` is only meaningful for kind: agent",
                "remove `check_in_deadline`, or set kind: agent",
            );
        }
        // Each kind-specific key belongs to one kind; elsewhere it is a mistake, not ignored.
        for (key, set, owner) in [
            ("ms_number", raw.ms_number.is_some(), RawKind::Hotfix),
            ("kb", raw.kb.is_some(), RawKind::Hotfix),
            (
                "service_pack",
                raw.service_pack.is_some(),
                RawKind::ServicePack,
            ),
        ] {
            if set && raw.kind != owner {
                let owner = if owner == RawKind::Hotfix {
                    "hotfix"
                } else {
                    "service_pack"
                };
                self.err(
                    "field-for-other-kind",
                    key,
                    format!("`{key}` is only meaningful for kind: {owner}"),
                    format!("remove `{key}`, or set kind: {owner}"),
                );
            }
        }
        match (raw.kind, raw.service_pack) {
            (RawKind::Hotfix, _) => Some(Kind::Hotfix { ms_number: ms, kb }),
            (RawKind::Application, _) => Some(Kind::Application),
            (RawKind::Agent, _) => Some(Kind::Agent),
            (RawKind::ServicePack, Some(sp)) => Some(Kind::ServicePack {
                level: SpLevel {
                    major: sp.major,
                    minor: sp.minor,
                },
            }),
            (RawKind::ServicePack, None) => {
                self.err(
                    "service-pack-level-missing",
                    "kind",
                    "a Service Pack needs its major and minor version; without them it can never be identified as applied",
                    "add `service_pack: { major: 2, minor: 0 }` (SP2 = 2.0)",
                );
                None
            }
        }
    }

    /// The checks of an agent package (`kind: agent`), and its "install": no command, the
    /// check-in deadline as its time limit.
    fn agent(&mut self, raw: &RawPackage) -> Option<Command> {
        let mut ok = true;
        if raw.version.as_deref().is_none_or(|v| v.trim().is_empty()) {
            self.err(
                "agent-version-missing",
                // Point at the empty version, or (when there is none) at the kind asking for it.
                if raw.version.is_some() { "version" } else { "kind" },
                "an agent package needs the version its agent reports (`patchcast-agent --version`): a machine is upgraded when its agent reports an older one",
                "add `version:` with the new agent's version, e.g. `0.1.0+b2`",
            );
            ok = false;
        }
        if raw.payload.len() != 1 {
            self.err(
                "agent-payload",
                "payload",
                format!(
                    "an agent package ships exactly one file, the new agent binary; this one lists {}",
                    raw.payload.len()
                ),
                "list the agent binary alone, e.g. `payload: [patchcast-agent]`",
            );
            ok = false;
        }
        let forbidden = [
            (
                "identification",
                !raw.identification.is_empty(),
                "an agent package is identified by the version the agent reports; rules would not be read",
            ),
            (
                "uninstall",
                raw.uninstall.is_some(),
                "an agent cannot uninstall itself; deliver an agent package of the older build instead",
            ),
            (
                "when",
                raw.when == Some(When::NextBoot),
                "the agent replaces itself while running; `when: next_boot` does not apply",
            ),
            (
                "reboot",
                raw.reboot.is_some_and(|r| r != RawRebootPolicy::Never),
                "an agent upgrade restarts the agent, never the machine",
            ),
        ];
        for (key, set, why) in forbidden {
            if set {
                self.err(
                    "agent-field",
                    key,
                    format!("`{key}` is not allowed in an agent package: {why}"),
                    format!("remove `{key}`"),
                );
                ok = false;
            }
        }
        let timeout = match raw.check_in_deadline.as_deref().map(parse_duration) {
            None => DEFAULT_CHECK_IN,
            Some(Ok(d)) => d,
            Some(Err(FormatError(msg))) => {
                self.err(
                    "duration-format",
                    "check_in_deadline",
                    msg,
                    "e.g. `5m`, `90s`",
                );
                ok = false;
                DEFAULT_CHECK_IN
            }
        };
        ok.then(|| Command {
            template: String::new(),
            success_exit_codes: vec![0],
            reboot_exit_codes: Vec::new(),
            timeout,
        })
    }

    /// The FAQ's Q2: a package that can never be seen as applied is re-delivered forever.
    fn identifiability(&mut self, raw: &RawPackage, kind: &Option<Kind>) {
        let has_rules = !raw.identification.is_empty();
        match (raw.kind, kind) {
            (RawKind::Hotfix, Some(Kind::Hotfix { ms_number: None, kb: None })) if !has_rules => {
                // Point at the malformed number the author did write, if any.
                let at = if raw.ms_number.is_some() {
                    "ms_number"
                } else if raw.kb.is_some() {
                    "kb"
                } else {
                    "kind"
                };
                self.err(
                    "hotfix-unidentifiable",
                    at,
                    "this HotFix has no valid MS or KB number and no identification rules, so it can never be seen as applied and would be re-delivered at every auto-update",
                    "add a valid `ms_number` (MSyy-nnn) or `kb` (KBnnnnnn), or identification rules (e.g. a file with change: version_up)",
                );
            }
            (RawKind::ServicePack, _) if has_rules => self.warn(
                "service-pack-has-rules",
                "identification",
                "a Service Pack is identified by its major and minor version alone; these identification rules are ignored",
                "remove `identification` and check `service_pack: { major, minor }` instead",
            ),
            (RawKind::Application, _) if !has_rules => self.err(
                "application-unidentifiable",
                "kind",
                "an application without identification rules can never be seen as applied and would be re-delivered at every auto-update",
                "add identification rules: a file with sha256, a dpkg/rpm package version, a registry value or a probe command",
            ),
            _ => {}
        }
    }

    fn targets(&mut self, raw: &[RawTarget]) -> Vec<Target> {
        if raw.is_empty() {
            self.err(
                "no-targets",
                "targets",
                "the package has no targets, so it applies to no machine",
                "add at least one target, e.g. `- { os: windows-server-2008, arch: x64, language: ja }`",
            );
        }
        raw.iter()
            .enumerate()
            .map(|(i, t)| {
                let path = format!("targets[{i}]");
                let editions = catalog::os_matching(&t.os);
                if editions.is_empty() {
                    let hint = catalog::suggest(
                        &t.os,
                        catalog::OPERATING_SYSTEMS.iter().flat_map(|o| [o.id, o.line]),
                    )
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                    self.err(
                        "unknown-os",
                        format!("{path}.os"),
                        format!("unknown OS `{}`", t.os),
                        format!("{hint}`patchcast catalog os` lists every OS id and product line"),
                    );
                }
                if let Some(arch) = &t.arch {
                    if !catalog::ARCHITECTURES.contains(&arch.as_str()) {
                        self.err(
                            "unknown-arch",
                            format!("{path}.arch"),
                            format!("unknown architecture `{arch}`"),
                            "use x86, x64 or arm64",
                        );
                    } else if !editions.is_empty() && !editions.iter().any(|o| o.archs.contains(&arch.as_str())) {
                        self.err(
                            "unknown-arch",
                            format!("{path}.arch"),
                            format!("`{}` does not exist for {arch}", t.os),
                            format!("use one of: {}", editions[0].archs.join(", ")),
                        );
                    }
                }
                let language = match t.language.as_deref() {
                    None | Some("any") => None,
                    Some(l) => match catalog::language(l) {
                        Some(canon) => Some(canon),
                        None => {
                            let hint = catalog::suggest(&l.to_ascii_lowercase(), catalog::LANGUAGES.iter().map(|l| l.0))
                                .map(|s| format!("did you mean `{s}`? "))
                                .unwrap_or_default();
                            self.err(
                                "unknown-language",
                                format!("{path}.language"),
                                format!("unknown language `{l}`"),
                                format!("{hint}use a BCP-47 tag such as ja, en, fr, zh-TW, or `any`; `patchcast catalog languages` lists them"),
                            );
                            None
                        }
                    },
                };
                Target { os: t.os.clone(), arch: t.arch.clone(), language }
            })
            .collect()
    }

    fn rule(&mut self, path: &str, r: &RawRule) -> Option<Rule> {
        let kinds: Vec<&str> = [
            ("file", r.file.is_some()),
            ("installed_update", r.installed_update.is_some()),
            ("service_pack", r.service_pack.is_some()),
            ("registry", r.registry.is_some()),
            ("package", r.package.is_some()),
            ("probe", r.probe.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        let kind = match kinds.as_slice() {
            [one] => *one,
            [] => {
                self.err(
                    "rule-kind",
                    path,
                    "this rule says nothing to check",
                    "start it with one of: file, installed_update, service_pack, registry, package, probe",
                );
                return None;
            }
            many => {
                self.err(
                    "rule-kind",
                    path,
                    format!("this rule mixes {} kinds of check: {}", many.len(), many.join(", ")),
                    "split it into one rule per check; all rules must hold for the package to be applied",
                );
                return None;
            }
        };
        // Keys that belong to another kind of rule are mistakes, not silently ignored options.
        let allowed: &[&str] = match kind {
            "file" => &["change", "version", "sha256"],
            "registry" => &["value", "data"],
            "package" => &["manager", "version"],
            "probe" => &["exit_code"],
            _ => &[],
        };
        for (key, set) in [
            ("change", r.change.is_some()),
            ("version", r.version.is_some()),
            ("sha256", r.sha256.is_some()),
            ("value", r.value.is_some()),
            ("data", r.data.is_some()),
            ("manager", r.manager.is_some()),
            ("exit_code", r.exit_code.is_some()),
        ] {
            if set && !allowed.contains(&key) {
                self.err(
                    "rule-kind",
                    format!("{path}.{key}"),
                    format!("`{key}` does not apply to a {kind} rule"),
                    format!(
                        "remove `{key}`; a {kind} rule takes: {}",
                        if allowed.is_empty() {
                            "nothing else".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                );
            }
        }
        match kind {
            "file" => self.file_rule(path, r),
            "installed_update" => {
                let s = r.installed_update.as_deref().unwrap_or_default();
                self.parse::<UpdateId>(
                    "installed-update-format",
                    &format!("{path}.installed_update"),
                    s,
                    "write KBnnnnnn or MSyy-nnn",
                )
                .map(|update| Rule::InstalledUpdate { update })
            }
            "service_pack" => r.service_pack.map(|sp| Rule::ServicePack {
                level: SpLevel {
                    major: sp.major,
                    minor: sp.minor,
                },
            }),
            "registry" => {
                let key = r.registry.clone().unwrap_or_default();
                let hives = [
                    "HKLM\\",
                    "HKEY_LOCAL_MACHINE\\",
                    "HKCU\\",
                    "HKEY_CURRENT_USER\\",
                    "HKCR\\",
                    "HKEY_CLASSES_ROOT\\",
                    "HKU\\",
                    "HKEY_USERS\\",
                ];
                if !hives
                    .iter()
                    .any(|h| key.to_ascii_uppercase().starts_with(h))
                {
                    self.err(
                        "registry-key-format",
                        format!("{path}.registry"),
                        format!("`{key}` does not start with a registry hive"),
                        "write the full key with backslashes, e.g. HKLM\\SOFTWARE\\Vendor\\Product",
                    );
                    return None;
                }
                Some(Rule::Registry {
                    key,
                    value: r.value.clone(),
                    data: r.data.clone(),
                })
            }
            "package" => {
                let name = r.package.clone().unwrap_or_default();
                let constraint = match &r.version {
                    Some(v) => Some(self.parse::<VersionConstraint>(
                        "package-version-format",
                        &format!("{path}.version"),
                        v,
                        "e.g. `>= 1.2.0-1`",
                    )?),
                    None => None,
                };
                Some(Rule::Package {
                    name,
                    manager: r.manager,
                    constraint,
                })
            }
            _ => {
                let command = r.probe.clone().unwrap_or_default();
                if command.trim().is_empty() {
                    self.err("probe-empty", format!("{path}.probe"), "the probe command is empty", "give a read-only command whose exit code tells whether the package is applied");
                    return None;
                }
                Some(Rule::Probe {
                    command,
                    exit_code: r.exit_code.unwrap_or(0),
                })
            }
        }
    }

    fn file_rule(&mut self, path: &str, r: &RawRule) -> Option<Rule> {
        let file = r.file.clone().unwrap_or_default();
        if file.trim().is_empty() {
            self.err(
                "file-path-empty",
                format!("{path}.file"),
                "the file path is empty",
                "give the file's full path on the machine",
            );
            return None;
        }
        let version = match &r.version {
            Some(v) => Some(self.parse::<FileVersion>(
                "file-version-format",
                &format!("{path}.version"),
                v,
                "write the version as in the file's properties, e.g. 5.2.3790.4392",
            )?),
            None => None,
        };
        let sha256 = match &r.sha256 {
            Some(s) => Some(self.parse::<Sha256>(
                "sha256-format",
                &format!("{path}.sha256"),
                s,
                "compute it with `sha256sum FILE`",
            )?),
            None => None,
        };
        let Some(change) = r.change else {
            self.err(
                "file-change-missing",
                path,
                "a file rule needs a change type",
                "add `change:` new (exists), rewrite (exact version or content), version_up (version at least) or delete (absent)",
            );
            return None;
        };
        let check = match change {
            RawChange::New => FileCheck::New { version, sha256 },
            RawChange::Rewrite => {
                if version.is_none() && sha256.is_none() {
                    self.err(
                        "rewrite-needs-version-or-hash",
                        format!("{path}.change"),
                        "change: rewrite needs the file's new `version` or `sha256`; otherwise a rewritten file cannot be told from the old one",
                        "add `version:` (files with a version resource) or `sha256:` (any file)",
                    );
                    return None;
                }
                FileCheck::Rewrite { version, sha256 }
            }
            RawChange::VersionUp => match version {
                Some(version) => FileCheck::VersionUp { version },
                None => {
                    self.err(
                        "version-up-needs-version",
                        format!("{path}.change"),
                        "change: version_up needs the minimum `version`",
                        "add `version:` with the file version the package installs, e.g. 5.2.3790.4392",
                    );
                    return None;
                }
            },
            RawChange::Delete => {
                if version.is_some() || sha256.is_some() {
                    self.err(
                        "delete-with-version",
                        format!("{path}.change"),
                        "change: delete means the file is absent; a version or sha256 cannot be checked on an absent file",
                        "remove `version` and `sha256` from this rule",
                    );
                    return None;
                }
                FileCheck::Delete
            }
        };
        Some(Rule::File { path: file, check })
    }

    fn payload(&mut self, raw: &[String]) -> Option<Vec<String>> {
        let mut ok = true;
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in raw.iter().enumerate() {
            let path = format!("payload[{i}]");
            if let Err(why) = check_relative_path(p) {
                self.err("payload-path", &path, format!("payload path `{p}` {why}"), "list files by their path relative to the package directory, e.g. `setup.exe` or `bin/tool.dll`");
                ok = false;
            } else if p == "package.yaml" || p == "manifest.json" || p == "manifest.sig" {
                self.err(
                    "payload-path",
                    &path,
                    format!("`{p}` is a reserved name"),
                    "rename the file",
                );
                ok = false;
            } else if !seen.insert(p.as_str()) {
                self.err(
                    "payload-duplicate",
                    &path,
                    format!("`{p}` is listed twice"),
                    "remove the duplicate entry",
                );
                ok = false;
            }
        }
        if ok && let Some((a, b)) = colliding_paths(raw) {
            self.err(
                "payload-duplicate",
                "payload",
                format!("`{a}` and `{b}` would be the same file, or a file and a directory, on Windows or a case-insensitive file system"),
                "rename one of them",
            );
            ok = false;
        }
        ok.then(|| raw.to_vec())
    }

    fn command(&mut self, key: &str, raw: &RawCommand, ctx: &TemplateContext) -> Option<Command> {
        let mut ok = true;
        if raw.command.trim().is_empty() {
            self.err(
                "command-empty",
                format!("{key}.command"),
                "the command is empty",
                "give the command line, e.g. `{{payload.0}} /quiet /norestart`",
            );
            ok = false;
        } else if let Err(why) = render(&raw.command, ctx) {
            let variables = format!(
                "use only these variables: {TEMPLATE_VARIABLES} (payload.N must be below the number of payload files; kb and ms_number only when set)"
            );
            let (code, help) = match why {
                RenderError::Undefined(_) => ("template-undefined-variable", variables),
                RenderError::Invalid(_) => ("template-syntax", variables),
                RenderError::Unquotable(_) => (
                    "template-value-unquotable",
                    "values are quoted for the shell, but cmd cannot take `\"`, `%` or control characters literally: rename the title or file they come from".into(),
                ),
                RenderError::TooComplex(_) => (
                    "template-too-complex",
                    "write the command as one line with `{{variable}}`s; partials and decorators are refused, blocks (if, unless, each, with) nest at most 4 deep".into(),
                ),
            };
            self.err(
                code,
                format!("{key}.command"),
                format!("the {key} command template cannot be rendered: {why}"),
                help,
            );
            ok = false;
        }
        if raw.command.contains("\\{{") && !raw.command.contains("\\\\{{") {
            self.warn(
                "template-escaped-variable",
                format!("{key}.command"),
                "`\\{{` is handlebars' escape: the `{{…}}` after the backslash is kept as literal text, not replaced",
                "for a Windows path write a double backslash before the variable, e.g. `{{workdir}}\\\\{{kb}}.log`",
            );
        }
        let timeout = match &raw.timeout {
            Some(t) => match parse_duration(t) {
                Ok(d) => d,
                Err(FormatError(msg)) => {
                    self.err(
                        "duration-format",
                        format!("{key}.timeout"),
                        msg,
                        "e.g. `30m`, `90s`, `2h`",
                    );
                    ok = false;
                    DEFAULT_TIMEOUT
                }
            },
            None => DEFAULT_TIMEOUT,
        };
        let success = raw.success_exit_codes.clone().unwrap_or_else(|| vec![0]);
        // 3010: installed, restart required; 1641: installed, the installer started the restart.
        let reboot = raw
            .reboot_exit_codes
            .clone()
            .unwrap_or_else(|| vec![3010, 1641]);
        if let Some(c) = success.iter().find(|c| reboot.contains(c)) {
            self.err(
                "exit-code-overlap",
                // Point at the list the author wrote (the other may be a default).
                if raw.reboot_exit_codes.is_some() {
                    format!("{key}.reboot_exit_codes")
                } else {
                    format!("{key}.success_exit_codes")
                },
                format!("exit code {c} is listed both as success and as reboot required"),
                "list each exit code once: success_exit_codes for plain success, reboot_exit_codes for success that needs a restart",
            );
            ok = false;
        }
        ok.then(|| Command {
            template: raw.command.clone(),
            success_exit_codes: success,
            reboot_exit_codes: reboot,
            timeout,
        })
    }
}

/// A path inside a package or archive: relative, no `..`, no empty or `.` segments, no
/// backslashes or drive letters (so it means the same on Windows and Unix).
pub fn check_relative_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("is empty");
    }
    if p.starts_with('/') || p.contains('\\') || p.contains(':') {
        return Err("must be relative, with `/` separators and no drive letter");
    }
    for seg in p.split('/') {
        match seg {
            "" | "." => return Err("has an empty or `.` segment"),
            ".." => return Err("leaves the package directory with `..`"),
            _ if seg.bytes().any(|c| c < 0x20 || c == 0x7f) => {
                return Err("contains control characters");
            }
            // Commands name payload files inside quotes; none of these may end the quoting
            // or expand there, in sh or in cmd.
            _ if seg.contains(SHELL_SPECIAL) => {
                return Err(
                    "contains a character shells treat specially (\" ' ` $ % ! & | ; < > ^ * ?)",
                );
            }
            _ if seg.ends_with(['.', ' ']) => {
                return Err("has a segment ending in `.` or a space, which Windows drops");
            }
            _ if is_windows_device(seg) => {
                return Err("uses a name Windows reserves for a device (CON, NUL, COM1, …)");
            }
            _ => {}
        }
    }
    Ok(())
}

const SHELL_SPECIAL: [char; 14] = [
    '"', '\'', '`', '$', '%', '!', '&', '|', ';', '<', '>', '^', '*', '?',
];

/// `CON`, `nul.txt`, `COM1`…: names Windows opens as devices whatever their extension.
fn is_windows_device(seg: &str) -> bool {
    let stem = seg.split('.').next().unwrap_or("").to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit()
            && stem.as_bytes()[3] != b'0')
}

/// Two payload paths that are one file on Windows or a case-insensitive file system, or on a
/// normalising one (`é` precomposed and `e` + U+0301 are one name on macOS), or a file that is
/// also another's directory (`a` beside `a/b`): the first such pair.
pub fn colliding_paths(paths: &[String]) -> Option<(&str, &str)> {
    use unicode_normalization::UnicodeNormalization;
    let folded: Vec<String> = paths
        .iter()
        .map(|p| p.nfd().collect::<String>().to_lowercase().nfc().collect())
        .collect();
    for (i, a) in folded.iter().enumerate() {
        for (j, b) in folded.iter().enumerate().skip(i + 1) {
            let nested = |x: &str, y: &str| y.strip_prefix(x).is_some_and(|r| r.starts_with('/'));
            if a == b || nested(a, b) || nested(b, a) {
                return Some((&paths[i], &paths[j]));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_payload_names_shells_or_windows_would_mangle_are_refused() {
        for bad in [
            "a$(id).exe",
            "a`id`.sh",
            "x\"y",
            "50%.msi",
            "a;b",
            "CON",
            "nul.txt",
            "sub/COM1.dll",
            "trailing.",
            "space /x",
            "lpt9",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad}");
        }
        for good in [
            "setup.exe",
            "Windows6.0-KB2286198-x86.exe",
            "with space.msi",
            "COM10.txt",
            "con1.txt",
            "x (1).zip",
        ] {
            assert_eq!(check_relative_path(good), Ok(()), "{good}");
        }
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            colliding_paths(&v(&["Setup.exe", "setup.EXE"])),
            Some(("Setup.exe", "setup.EXE"))
        );
        assert_eq!(colliding_paths(&v(&["a", "a/b"])), Some(("a", "a/b")));
    }

    #[test]
    fn regression_unicode_normalisation_collisions_are_refused() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // precomposed é against e + combining acute; and in another case
        let nfc = "caf\u{e9}/setup.exe";
        let nfd = "cafe\u{301}/setup.exe";
        assert_eq!(colliding_paths(&v(&[nfc, nfd])), Some((nfc, nfd)));
        assert_eq!(
            colliding_paths(&v(&["CAFE\u{301}.msi", "caf\u{e9}.msi"])),
            Some(("CAFE\u{301}.msi", "caf\u{e9}.msi"))
        );
        // a directory under one form, a file under the other
        assert!(colliding_paths(&v(&["r\u{e9}sum\u{e9}", "re\u{301}sume\u{301}/a"])).is_some());
        assert_eq!(colliding_paths(&v(&["caf\u{e9}.msi", "cafe.msi"])), None);
        assert_eq!(colliding_paths(&v(&["a/b", "ab", "a.b"])), None);
    }

    #[test]
    fn version_constraints() {
        let c: VersionConstraint = ">= 1.2.0-1".parse().unwrap();
        assert_eq!((c.op, c.version.as_str()), (Op::Ge, "1.2.0-1"));
        assert_eq!("2.4".parse::<VersionConstraint>().unwrap().op, Op::Eq);
        assert_eq!("<< 3".parse::<VersionConstraint>().unwrap().op, Op::Lt);
        assert!(">= ".parse::<VersionConstraint>().is_err());
        assert!(">= 1.0; rm -rf /".parse::<VersionConstraint>().is_err());
    }
}
