//! `patchcast package new`: a commented package skeleton to fill in.

use patchcast_core::model::raw::RawKind;

/// The `package.yaml` text for a new package of `kind` named `id`. `schema` is the path of
/// the JSON Schema relative to the new file, for editor completion.
pub fn skeleton(kind: RawKind, id: &str, schema: &str) -> String {
    let head = format!(
        "# yaml-language-server: $schema={schema}\n\
         # Check with `patchcast package lint DIR`; build with `patchcast package build DIR --key KEY`.\n\
         id: {id}\n"
    );
    let body = match kind {
        RawKind::Hotfix => HOTFIX,
        RawKind::ServicePack => SERVICE_PACK,
        RawKind::Application => APPLICATION,
        RawKind::Agent => AGENT,
    };
    format!("{head}{body}")
}

const HOTFIX: &str = r#"kind: hotfix
title: TODO one-line title, e.g. Server service remote code execution
version: "1.0"
# A HotFix is applied when its MS or KB number is in the machine's installed-update list.
# When the number cannot identify it, add identification rules below.
ms_number: MS00-000          # TODO the bulletin number, MSyy-nnn
kb: KB000000                 # TODO the KB number
targets:
  # OS ids: `patchcast catalog os`; a product line (windows-server-2003) matches every edition.
  - { os: windows-server-2008, arch: x64, language: ja }
# identification:
#   - file: '%SystemRoot%\system32\example.dll'
#     change: version_up     # new | rewrite | version_up | delete
#     version: 6.0.6002.18005  # only for files with a version resource (.exe, .dll, .sys)
payload:
  - TODO-installer.exe       # files in this directory, shipped with the package
install:
  command: '{{payload.0}} /quiet /norestart'
  success_exit_codes: [0]
  reboot_exit_codes: [3010]  # applied, restart required
  timeout: 30m
"#;

const SERVICE_PACK: &str = r#"kind: service_pack
title: TODO e.g. Windows Server 2008 Service Pack 2
version: "1.0"
# A Service Pack is identified by its level alone (SP2 = major 2, minor 0); it needs no
# identification rules.
service_pack: { major: 0, minor: 0 }   # TODO
targets:
  - { os: windows-server-2008, arch: x64, language: ja }
payload:
  - TODO-servicepack.exe
install:
  command: '{{payload.0}} /quiet /norestart'
  reboot_exit_codes: [3010]
  timeout: 2h
reboot: if_required          # never | if_required | always
"#;

const APPLICATION: &str = r#"kind: application
title: TODO one-line title
version: "1.0.0"
targets:
  - { os: debian-12 }
# An application is applied when every rule holds. Rule kinds: file (new | rewrite |
# version_up | delete, optional version and sha256), installed_update, service_pack,
# registry (value, data), package (dpkg/rpm name and version constraint), probe (exit_code).
identification:
  - package: TODO-package-name
    version: ">= 1.0.0"
payload:
  - TODO-installer.deb
install:
  command: 'dpkg -i {{payload.0}}'
  timeout: 10m
"#;

const AGENT: &str = r#"kind: agent
title: TODO e.g. patchcast agent 0.1.0+b2
# The agent's own version (`patchcast-agent --version`) once upgraded: the package is
# applied on a machine whose agent reports this version or a later one.
version: "0.0.0+TODO"
targets:
  - { os: debian-12 }
# The one payload file is the new agent binary. There is no install command: the running
# agent puts the binary in place of its own, restarts into it, and keeps it only if it
# checks in with the server within check_in_deadline; otherwise its watchdog restores the
# previous binary and the delivery fails with E30.
payload:
  - patchcast-agent
check_in_deadline: 5m
"#;
