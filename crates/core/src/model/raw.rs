//! Raw package documents exactly as administrators write them in `package.yaml`.
//!
//! These types only describe the file format: strings and options, no validation beyond
//! "is this key known". `resolve` turns them into the validated types in `package.rs`.
//! The JSON Schema in `schemas/package.schema.json` is generated from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A patch package: a HotFix, a Service Pack or an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPackage {
    /// Stable identifier: lowercase letters, digits, `.`, `_` and `-` (e.g. `ms08-067-ws2003-ja`).
    pub id: String,
    /// What kind of package this is; it decides how the package is identified as applied.
    pub kind: RawKind,
    /// One-line title shown in results.
    pub title: String,
    /// Version of this package definition (free text, e.g. `1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// HotFix only: Microsoft security bulletin number, `MSyy-nnn` (e.g. `MS08-067`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms_number: Option<String>,
    /// HotFix only: Knowledge Base number, `KBnnnnnn` (e.g. `KB958644`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kb: Option<String>,
    /// Service Pack only: the level this package brings the machine to (SP2 = major 2, minor 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_pack: Option<RawServicePack>,
    /// Machines this package is meant for; a machine matching none is "not applicable".
    pub targets: Vec<RawTarget>,
    /// Rules that decide whether the package is already applied. All must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identification: Vec<RawRule>,
    /// Files shipped with the package, relative to the package directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<String>,
    /// How to install the package. Required for every kind but `agent`, which the agent
    /// installs itself (it replaces its own binary) and which must not have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<RawCommand>,
    /// Agent only: how long the new agent has, once it replaced the running one, to check
    /// in with the server before the watchdog restores the previous binary and reports E30,
    /// e.g. `5m`, `90s` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_in_deadline: Option<String>,
    /// How to remove the package, when it can be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstall: Option<RawCommand>,
    /// When the machine must restart after installing (default: `if_required`, i.e. on a reboot exit code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RawRebootPolicy>,
    /// When the install runs: `immediately` (default) or `next_boot`: the agent stages the
    /// verified payload and runs it at its first start after the machine restarts, before
    /// any other work (DeploymentManager's "execute at next start-up"; drivers, in-use files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Packages this one replaces (a cumulative hotfix, a newer application): a machine
    /// where this package is applied, or being delivered, never receives them; their
    /// delivery ends `superseded` and counts as applied. Each entry is a package id (every
    /// version of it) or `{ id, version }` with a version constraint such as `< 2.0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<RawPackageRef>,
    /// Packages that must be applied on a machine before this one is delivered there: a
    /// scenario or automatic update hands them out first and holds this delivery until they
    /// are applied; a requirement that fails fails this delivery (E29 naming it). Each entry
    /// is a package id (any version of it) or `{ id, version }` with a constraint such as
    /// `>= 2.0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<RawPackageRef>,
}

/// Another package named by a package (`supersedes:`, `requires:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawPackageRef {
    /// Every version of the package with this id.
    Id(String),
    /// The versions of a package that match a constraint.
    Versions(RawPackageVersions),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPackageVersions {
    /// The other package's id.
    pub id: String,
    /// Its versions meant, e.g. `< 2.0` or `>= 1.4` (dpkg ordering); omitted means every
    /// version. A constraint only matches a package that has a `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

// By hand rather than `untagged`: a mapping is read as `RawPackageVersions`, so a typo in
// it is reported as the unknown key it is, not as "did not match any variant".
impl<'de> Deserialize<'de> for RawPackageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawPackageRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a package id, or { id, version }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPackageRef, E> {
                Ok(RawPackageRef::Id(v.to_string()))
            }
            // An all-digit id (`- 2024`) reads as a number in YAML.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawPackageRef, E> {
                Ok(RawPackageRef::Id(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<RawPackageRef, A::Error> {
                RawPackageVersions::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RawPackageRef::Versions)
            }
        }
        d.deserialize_any(V)
    }
}

impl RawPackageRef {
    pub fn id(&self) -> &str {
        match self {
            RawPackageRef::Id(id) => id,
            RawPackageRef::Versions(v) => &v.id,
        }
    }
}

/// When an install runs on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum When {
    #[default]
    Immediately,
    NextBoot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawKind {
    /// Identified by its MS/KB number in the installed-update list, or by identification rules.
    Hotfix,
    /// Identified by the service pack level (major.minor) alone.
    ServicePack,
    /// Identified by its identification rules.
    Application,
    /// The patchcast agent itself: its one payload file is the new agent binary, which the
    /// running agent puts in place of its own, restarts into, and keeps only once it checked
    /// in (a watchdog restores the previous binary otherwise). Identified by the agent's
    /// version being at least the package's `version`.
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServicePack {
    pub major: u32,
    pub minor: u32,
}

/// One kind of machine the package is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// OS id from the catalog (`patchcast catalog os`), or a product line such as
    /// `windows-server-2003` that matches every edition.
    pub os: String,
    /// `x86`, `x64` or `arm64`; omitted means any architecture the OS exists for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// BCP-47 language (`ja`, `en`, `fr`, `zh-TW`, …) or `any`; omitted means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// One identification rule. Exactly one of `file`, `installed_update`, `service_pack`,
/// `registry`, `package` or `probe` says what kind of rule it is; the other keys refine it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// File rule: path of the file on the machine (environment variables such as `%SystemRoot%` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// File rule: `new` (exists), `rewrite` (exact version or content), `version_up`
    /// (version at least), `delete` (absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<RawChange>,
    /// File rule: file version `a.b.c.d` (only for files with a version resource: .exe, .dll, .sys, …).
    /// Package rule: version constraint such as `>= 1.2.0-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// File rule: expected SHA-256 of the file content (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Installed-update rule: `KBnnnnnn` or `MSyy-nnn` present in the machine's installed-update list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_update: Option<String>,
    /// Service-pack rule: the machine's service pack level is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_pack: Option<RawServicePack>,
    /// Registry rule: key path, e.g. `HKLM\SOFTWARE\Vendor\Product`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Registry rule: value name (omitted: the key's default value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Registry rule: expected data; omitted means "the value exists".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Package rule: dpkg/rpm package name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Package rule: `dpkg` or `rpm`; omitted means the target OS's own manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<RawManager>,
    /// Probe rule: command run on the machine (read-only check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// Probe rule: the exit code that means "applied" (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawChange {
    New,
    Rewrite,
    VersionUp,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawManager {
    Dpkg,
    Rpm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawRebootPolicy {
    /// Never restart, even when the installer asks for it (the result shows "reboot pending").
    Never,
    /// Restart when the installer exits with a reboot exit code.
    IfRequired,
    /// Always restart after a successful install.
    Always,
}

/// A command run on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    /// Handlebars template over package facts: `{{payload.0}}`, `{{package.id}}`, `{{kb}}`,
    /// `{{ms_number}}`, `{{workdir}}`, `{{machine.os}}`, `{{machine.arch}}`, `{{machine.language}}`.
    pub command: String,
    /// Exit codes that mean success (default `[0]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_exit_codes: Option<Vec<i32>>,
    /// Exit codes that mean "applied, restart required" (default `[3010, 1641]`: restart
    /// required, restart initiated by the installer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_exit_codes: Option<Vec<i32>>,
    /// Longest run before the command is killed, e.g. `30m`, `90s`, `1h` (default `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}
