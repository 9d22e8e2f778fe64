//! Install and uninstall command templates: their variables, and rendering bounded in size,
//! nesting and output.
//!
//! Templates are rendered wherever a signed manifest is read (lint, build, publish, verify and
//! the agent's probe step), so a hostile one must fail fast with a located error rather than
//! recurse or grind: partials and decorators (the only way to recurse) are refused, blocks are
//! limited to `if`, `unless`, `each` and `with` with a bounded depth and no `each` inside
//! another, and the output has a budget.
//!
//! Every value is quoted for the shell that runs the command (`sh -c` on Linux and SSH
//! hosts, `cmd /C` on Windows), according to where it lands in the rendered line: bare, or
//! inside the author's own double or single quotes. Values are rendered between two
//! private-use markers, then the line is read as the shell would read it, so `"{{payload.0}}"`
//! and `{{payload.0}}` both give one word whatever the value holds. A value that cannot be
//! written safely for `cmd` (a `"`, a `%`) or holds a control character is refused.

use super::raw::RawPackage;
use serde::Serialize;

/// Largest template accepted (a command line; Windows' own limit is 32,767 characters).
pub const MAX_TEMPLATE_BYTES: usize = 4096;
/// Deepest nesting of blocks.
pub const MAX_BLOCK_DEPTH: usize = 4;
/// Largest rendered command.
pub const MAX_RENDERED_BYTES: usize = 32 * 1024;
const BLOCK_HELPERS: [&str; 4] = ["if", "unless", "each", "with"];

/// Variables an install or uninstall template may use; `TemplateContext` gives their shape.
pub const TEMPLATE_VARIABLES: &str = "payload.N, package.id, package.title, package.version, kb, ms_number, workdir, machine.os, machine.arch, machine.language, machine.hostname";

/// The machine a command is rendered for.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateMachine {
    pub os: String,
    pub arch: String,
    pub language: String,
    pub hostname: String,
}

/// The shell a command line is handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// `sh -c` (Linux agents, SSH hosts).
    Sh,
    /// `cmd /C` (Windows agents).
    Cmd,
}

impl TemplateMachine {
    pub fn shell(&self) -> Shell {
        if self.os.starts_with("windows") {
            Shell::Cmd
        } else {
            Shell::Sh
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct TemplatePackage {
    id: String,
    title: String,
    version: String,
}

/// The values a command template is rendered with on a machine.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateContext {
    payload: Vec<String>,
    package: TemplatePackage,
    #[serde(skip_serializing_if = "Option::is_none")]
    kb: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ms_number: Option<String>,
    workdir: String,
    machine: TemplateMachine,
}

impl TemplateContext {
    /// Built from the raw definition, which both the resolver and a signed manifest carry;
    /// payload paths become paths inside `workdir`.
    pub fn new(raw: &RawPackage, workdir: &str, machine: TemplateMachine) -> Self {
        let sep = if workdir.contains('\\') { '\\' } else { '/' };
        TemplateContext {
            payload: raw
                .payload
                .iter()
                .map(|p| format!("{workdir}{sep}{p}"))
                .collect(),
            package: TemplatePackage {
                id: raw.id.clone(),
                title: raw.title.clone(),
                version: raw.version.clone().unwrap_or_default(),
            },
            kb: raw.kb.clone(),
            ms_number: raw.ms_number.clone(),
            workdir: workdir.to_string(),
            machine,
        }
    }
}

/// Refuses what could make rendering recurse or take more than linear time, naming where.
pub fn check_bounds(template: &str) -> Result<(), RenderError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(RenderError::TooComplex(format!(
            "the template is {} bytes; at most {MAX_TEMPLATE_BYTES} are allowed",
            template.len()
        )));
    }
    let at = |pos: usize| {
        let before = &template[..pos];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("(template line {line}, column {column})")
    };
    let refuse =
        |pos: usize, what: String| Err(RenderError::TooComplex(format!("{what} {}", at(pos))));
    let mut open: Vec<&str> = Vec::new();
    let mut i = 0;
    while let Some(off) = template[i..].find("{{") {
        let start = i + off;
        let mut j = start + 2;
        if template[j..].starts_with("{{") {
            return refuse(start, "raw blocks (`{{{{`) are not allowed".into());
        }
        if template[j..].starts_with('{') {
            return refuse(
                start,
                "triple braces (`{{{`) would print a value unquoted; write `{{name}}`, values are quoted for the shell".into(),
            );
        }
        // Whitespace control and spaces come before the sigil.
        j += template[j..]
            .find(|c: char| c != '{' && c != '~' && !c.is_ascii_whitespace())
            .unwrap_or(template.len() - j);
        let rest = &template[j..];
        let (end_marker, skip) = if rest.starts_with("!--") {
            ("--}}", 4)
        } else {
            ("}}", 2)
        };
        let end = rest
            .find(end_marker)
            .map_or(template.len(), |k| j + k + skip);
        i = end;
        let mut sigil = rest.chars();
        match sigil.next() {
            Some('>') => return refuse(start, "partials (`{{>`) are not allowed".into()),
            Some('*') => return refuse(start, "decorators (`{{*`) are not allowed".into()),
            Some('#' | '^') => {
                let tail = sigil
                    .as_str()
                    .trim_start_matches(|c: char| c == '~' || c.is_ascii_whitespace());
                if tail.starts_with(['>', '*']) {
                    return refuse(
                        start,
                        "partial blocks and inline partials are not allowed".into(),
                    );
                }
                let name_len = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .unwrap_or(tail.len());
                let name = &tail[..name_len];
                if name.is_empty() {
                    continue; // `{{^}}` is `{{else}}`
                }
                let Some(helper) = BLOCK_HELPERS.iter().find(|h| **h == name) else {
                    return refuse(
                        start,
                        format!(
                            "the block `{name}` is not allowed; blocks may be {}",
                            BLOCK_HELPERS.join(", ")
                        ),
                    );
                };
                if *helper == "each" && open.contains(&"each") {
                    return refuse(
                        start,
                        "an `each` block inside another is not allowed".into(),
                    );
                }
                open.push(helper);
                if open.len() > MAX_BLOCK_DEPTH {
                    return refuse(
                        start,
                        format!("blocks are nested more than {MAX_BLOCK_DEPTH} deep"),
                    );
                }
            }
            Some('/') => {
                open.pop();
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why a command template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("`{0}` is not defined")]
    Undefined(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooComplex(String),
    /// A value the target shell cannot be given literally.
    #[error("{0}")]
    Unquotable(String),
}

/// Counts what is written and refuses to go past the budget.
struct Budget {
    out: Vec<u8>,
    exceeded: bool,
}

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > MAX_RENDERED_BYTES {
            self.exceeded = true;
            return Err(std::io::Error::other("render budget exceeded"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders a command template strictly: an undefined variable is an error, nothing is
/// HTML-escaped, and templates outside the bounds of `check_bounds` are refused unrendered.
pub fn render(template: &str, ctx: &TemplateContext) -> Result<String, RenderError> {
    check_bounds(template)?;
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(|v| format!("{VALUE_START}{v}{VALUE_END}"));
    let mut budget = Budget {
        out: Vec::new(),
        exceeded: false,
    };
    let rendered = hb.render_template_to_write(template, ctx, &mut budget);
    if budget.exceeded {
        return Err(RenderError::TooComplex(format!(
            "the rendered command is longer than {MAX_RENDERED_BYTES} bytes"
        )));
    }
    rendered.map_err(|e| match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(v)) => {
            RenderError::Undefined(v.clone())
        }
        other => {
            let at = match (e.line_no, e.column_no) {
                (Some(l), Some(c)) => format!(" (template line {l}, column {c})"),
                _ => String::new(),
            };
            // Handlebars appends a multi-line source snippet; lint output stays one line per problem.
            let reason = other.to_string();
            let first = reason
                .lines()
                .next()
                .unwrap_or("invalid template")
                .trim()
                .to_string();
            RenderError::Invalid(format!("{first}{at}"))
        }
    })?;
    let marked = String::from_utf8(budget.out)
        .map_err(|_| RenderError::Invalid("the rendered command is not UTF-8".into()))?;
    quote(&marked, ctx.machine.shell())
}

/// Where a value begins and ends in the marked rendering (Unicode private-use characters).
const VALUE_START: char = '\u{E000}';
const VALUE_END: char = '\u{E001}';

/// Reads a marked rendering as `shell` would, and writes each value so that it stays the
/// literal text it is where it lands: bare, inside double quotes or inside single quotes.
pub fn quote(marked: &str, shell: Shell) -> Result<String, RenderError> {
    #[derive(PartialEq)]
    enum In {
        Bare,
        Double,
        Single,
    }
    let mut state = In::Bare;
    let mut out = String::with_capacity(marked.len());
    let reserved = || RenderError::Invalid("a value holds a reserved character".into());
    let mut chars = marked.chars().peekable();
    while let Some(c) = chars.next() {
        if c == VALUE_END {
            return Err(reserved());
        }
        if c != VALUE_START {
            out.push(c);
            match (shell, &state, c) {
                (Shell::Sh, In::Bare | In::Double, '\\') => {
                    // The escaped character is literal: it opens or closes no quote.
                    if let Some(next) = chars.next_if(|n| *n != VALUE_START) {
                        out.push(next);
                    }
                }
                (_, In::Bare, '"') => state = In::Double,
                (_, In::Double, '"') => state = In::Bare,
                (Shell::Sh, In::Bare, '\'') => state = In::Single,
                (Shell::Sh, In::Single, '\'') => state = In::Bare,
                _ => {}
            }
            continue;
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some(VALUE_END) => break,
                Some(VALUE_START) | None => {
                    return Err(reserved());
                }
                Some(v) => value.push(v),
            }
        }
        if let Some(bad) = value.chars().find(|c| c.is_control()) {
            return Err(RenderError::Unquotable(format!(
                "the value `{}` holds a control character ({bad:?}) and cannot be put in a command line",
                value.escape_debug()
            )));
        }
        let safe = |c: char| c.is_ascii_alphanumeric() || "_./:=@+,-".contains(c);
        match shell {
            Shell::Sh => match state {
                In::Bare if !value.is_empty() && value.chars().all(safe) => out.push_str(&value),
                In::Bare => {
                    out.push('\'');
                    out.push_str(&value.replace('\'', "'\\''"));
                    out.push('\'');
                }
                In::Double => {
                    for v in value.chars() {
                        if matches!(v, '\\' | '"' | '$' | '`') {
                            out.push('\\');
                        }
                        out.push(v);
                    }
                }
                In::Single => out.push_str(&value.replace('\'', "'\\''")),
            },
            Shell::Cmd => {
                if let Some(bad) = value.chars().find(|c| matches!(c, '"' | '%')) {
                    return Err(RenderError::Unquotable(format!(
                        "the value `{value}` holds `{bad}`, which cmd cannot take literally; rename what it comes from"
                    )));
                }
                let bare_safe = !value.is_empty() && value.chars().all(|c| safe(c) || c == '\\');
                if state == In::Bare && !bare_safe {
                    out.push('"');
                    out.push_str(&value);
                    out.push('"');
                } else {
                    out.push_str(&value);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_in_templates() {
        let raw: RawPackage = serde_saphyr::from_str(
            "id: k\nkind: hotfix\ntitle: t\nkb: KB958644\ntargets: []\npayload: [setup.exe]\ninstall: { command: x }\n",
        )
        .unwrap();
        let machine = TemplateMachine {
            os: "windows-10".into(),
            arch: "x64".into(),
            language: "ja".into(),
            hostname: "pc1".into(),
        };
        let ctx = TemplateContext::new(&raw, "C:\\work", machine);
        assert_eq!(
            render("{{payload.0}} /log:{{workdir}}\\\\{{kb}}.log", &ctx).unwrap(),
            "C:\\work\\setup.exe /log:C:\\work\\KB958644.log"
        );
        // The trap lint warns about: a single backslash escapes the expression.
        assert_eq!(
            render("{{workdir}}\\{{kb}}", &ctx).unwrap(),
            "C:\\work{{kb}}"
        );
        assert_eq!(
            render("{{ms_number}}", &ctx),
            Err(RenderError::Undefined("ms_number".into()))
        );
    }

    fn ctx() -> TemplateContext {
        let raw: RawPackage = serde_saphyr::from_str(
            "id: k\nkind: hotfix\ntitle: t\nkb: KB958644\ntargets: []\npayload: [setup.exe]\ninstall: { command: x }\n",
        )
        .unwrap();
        let machine = TemplateMachine {
            os: "linux".into(),
            arch: "x64".into(),
            language: "en".into(),
            hostname: "h".into(),
        };
        TemplateContext::new(&raw, "/w", machine)
    }

    fn hostile(os: &str) -> TemplateContext {
        let raw: RawPackage = serde_saphyr::from_str(
            "id: k\nkind: application\ntitle: \"it's $(reboot) `id` \\\\ \\\"q\\\" & | ; *\"\ntargets: []\npayload: [setup.exe]\ninstall: { command: x }\n",
        )
        .unwrap();
        let machine = TemplateMachine {
            os: os.into(),
            arch: "x64".into(),
            language: "en".into(),
            hostname: "$(touch /tmp/pwned) ; echo".into(),
        };
        TemplateContext::new(&raw, "/w d", machine)
    }

    /// What `sh` makes of a command line: its words, one per line.
    fn sh_words(line: &str) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\n' {line}")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn regression_template_values_are_quoted_for_the_shell() {
        let ctx = hostile("debian-12");
        let title = "it's $(reboot) `id` \\ \"q\" & | ; *";
        let host = "$(touch /tmp/pwned) ; echo";
        // Bare, in the author's double quotes, in single quotes: one literal word each time.
        for t in [
            "{{package.title}} {{machine.hostname}}",
            "\"{{package.title}}\" \"{{machine.hostname}}\"",
            "'{{package.title}}' '{{machine.hostname}}'",
            "\"x{{package.title}}\"y{{machine.hostname}}",
        ] {
            let line = render(t, &ctx).unwrap();
            let words = sh_words(&line);
            let want = if t.starts_with("\"x") {
                format!("x{title}y{host}\n")
            } else {
                format!("{title}\n{host}\n")
            };
            assert_eq!(words, want, "{t} rendered as {line}");
        }
        // Values that need nothing stay readable.
        assert_eq!(render("dpkg -i {{package.id}}", &ctx).unwrap(), "dpkg -i k");
        assert_eq!(
            render("sh {{payload.0}}", &ctx).unwrap(),
            "sh '/w d/setup.exe'"
        );
    }

    #[test]
    fn cmd_values_are_quoted_or_refused() {
        let raw: RawPackage = serde_saphyr::from_str(
            "id: k\nkind: hotfix\ntitle: a & b\nkb: KB958644\ntargets: []\npayload: [setup.exe]\ninstall: { command: x }\n",
        )
        .unwrap();
        let machine = |hostname: &str| TemplateMachine {
            os: "windows-10".into(),
            arch: "x64".into(),
            language: "en".into(),
            hostname: hostname.into(),
        };
        let ctx = TemplateContext::new(&raw, "C:\\Program Files\\pc", machine("pc1"));
        assert_eq!(
            render("{{payload.0}} /log:{{package.title}}", &ctx).unwrap(),
            "\"C:\\Program Files\\pc\\setup.exe\" /log:\"a & b\""
        );
        assert_eq!(
            render("\"{{payload.0}}\" /quiet", &ctx).unwrap(),
            "\"C:\\Program Files\\pc\\setup.exe\" /quiet"
        );
        for bad in ["%PATH%", "a\"b", "a\nb"] {
            let ctx = TemplateContext::new(&raw, "C:\\w", machine(bad));
            assert!(
                matches!(
                    render("x {{machine.hostname}}", &ctx),
                    Err(RenderError::Unquotable(_))
                ),
                "{bad:?}"
            );
        }
        assert!(too_complex("{{{package.title}}}").contains("triple braces"));
    }

    fn too_complex(t: &str) -> String {
        match render(t, &ctx()) {
            Err(RenderError::TooComplex(m)) => m,
            other => panic!("{t:?} gave {other:?}"),
        }
    }

    #[test]
    fn regression_template_self_include_is_refused() {
        // This recursed until the stack overflowed and killed the server at publish.
        let m = too_complex("{{#*inline \"x\"}}{{> x}}{{/inline}}{{> x}}");
        assert!(
            m.contains("inline partials") && m.contains("line 1, column 1"),
            "{m}"
        );
        assert!(too_complex("a\n  {{> other}}").contains("line 2, column 3"));
        assert!(too_complex("{{~ > x}}").contains("partials"));
        assert!(too_complex("{{#> layout}}x{{/layout}}").contains("partial blocks"));
        assert!(too_complex("{{{{raw}}}}{{> x}}{{{{/raw}}}}").contains("raw blocks"));
    }

    #[test]
    fn regression_template_deep_nesting_is_refused() {
        let deep = "{{#if kb}}".repeat(3000) + &"{{/if}}".repeat(3000);
        assert!(too_complex(&deep).contains("at most 4096"));
        let five = "{{#if kb}}".repeat(5) + &"{{/if}}".repeat(5);
        assert!(too_complex(&five).contains("nested more than 4"));
        let four = "{{#if kb}}".repeat(4) + "{{kb}}" + &"{{/if}}".repeat(4);
        assert_eq!(render(&four, &ctx()).unwrap(), "KB958644");
        // Siblings do not add up to depth.
        let siblings = "{{#if kb}}a{{/if}}".repeat(50);
        assert_eq!(render(&siblings, &ctx()).unwrap(), "a".repeat(50));
    }

    #[test]
    fn template_blocks_are_limited() {
        assert!(
            too_complex("{{#each payload}}{{#each ../payload}}{{/each}}{{/each}}")
                .contains("inside another")
        );
        assert!(
            too_complex("{{#lookup payload 0}}{{/lookup}}").contains("`lookup` is not allowed")
        );
        assert_eq!(
            render(
                "{{#each payload}}[{{this}}]{{/each}}{{!-- }} {{> x}} --}}",
                &ctx()
            )
            .unwrap(),
            "[/w/setup.exe]"
        );
        assert_eq!(
            render("{{#unless ms_number}}no ms{{^}}ms{{/unless}}", &ctx()).unwrap(),
            "no ms"
        );
    }
}
