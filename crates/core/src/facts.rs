//! What a machine's own files and commands say, in the catalog's terms: `/etc/os-release`,
//! `uname -m`, the locale, dpkg and rpm output. Pure, so the agent (on its own machine) and
//! the SSH worker (on a remote host's output) read them with the same rules.

pub mod windows;

/// The catalog OS id (`debian-12`, `rocky-9`, `ubuntu-22.04`) from /etc/os-release's text.
pub fn os_id(os_release: &str) -> String {
    let field = |k: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let id = field("ID");
    let version = field("VERSION_ID");
    // Catalog ids use the major version for RHEL-like systems (rocky-9), the full one for Ubuntu.
    let version = match id.as_str() {
        "rhel" | "rocky" | "debian" => version.split('.').next().unwrap_or("").to_string(),
        _ => version,
    };
    format!("{id}-{version}")
}

/// The catalog architecture for a Rust `ARCH` or `uname -m` name.
pub fn arch_name(raw: &str) -> String {
    match raw {
        "x86_64" | "amd64" => "x64",
        "x86" | "i386" | "i486" | "i586" | "i686" => "x86",
        "aarch64" | "arm64" => "arm64",
        other => other,
    }
    .to_string()
}

/// `ja_JP.UTF-8` → `ja-JP`; the C/POSIX locale (or none) is English.
pub fn language_tag(raw: &str) -> String {
    let tag = raw.split(['.', '@']).next().unwrap_or("").replace('_', "-");
    if tag.is_empty() || tag == "C" || tag == "POSIX" {
        "en".into()
    } else {
        tag
    }
}

/// `dpkg-query -W -f='${Status}\t${Version}'` output → installed version, or None.
pub fn parse_dpkg(out: &str) -> Option<String> {
    match out.split_once('\t') {
        Some((status, v)) if status.ends_with(" installed") => Some(v.trim_end().to_string()),
        _ => None,
    }
}

/// `rpm -q --qf '%{EPOCH}:%{VERSION}-%{RELEASE}'` output of an installed package → version.
pub fn parse_rpm(out: &str) -> String {
    out.trim_end().replace("(none):", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let rel = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(os_id(rel), "debian-12");
        assert_eq!(os_id("ID=rocky\nVERSION_ID=\"9.3\"\n"), "rocky-9");
        assert_eq!(os_id("ID=ubuntu\nVERSION_ID=\"22.04\"\n"), "ubuntu-22.04");
        assert_eq!(arch_name("x86_64"), "x64");
        assert_eq!(arch_name("aarch64"), "arm64");
        assert_eq!(language_tag("ja_JP.UTF-8"), "ja-JP");
        assert_eq!(language_tag(""), "en");
        assert_eq!(language_tag("C.UTF-8"), "en");
        assert_eq!(
            parse_dpkg("install ok installed\t1.2.0-1"),
            Some("1.2.0-1".to_string())
        );
        assert_eq!(parse_dpkg("deinstall ok config-files\t1.0"), None);
        assert_eq!(parse_dpkg(""), None);
        assert_eq!(parse_rpm("(none):1.0-1.el9"), "1.0-1.el9");
    }
}
