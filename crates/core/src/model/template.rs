//! Install and uninstall command templates: their variables, and rendering bounded in size,
//! nesting and output.
//!
//! Templates are rendered wherever a signed manifest is read (lint, build, publish, verify and
//! the agent's probe step), so a hostile one must fail fast with a located error rather than
//! recurse or grind: partials and decorators (the only way to recurse) are refused, blocks are
//! limited to `if`, `unless`, `each` and `with` with a bounded depth and no `each` inside
//! another, and the output has a budget.

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
        // Triple-stash, whitespace control and spaces come before the sigil.
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
    hb.register_escape_fn(handlebars::no_escape);
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
    String::from_utf8(budget.out)
        .map_err(|_| RenderError::Invalid("the rendered command is not UTF-8".into()))
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
