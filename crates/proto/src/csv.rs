//! CSV as every export writes it (the console's downloads and `patchcast results --csv`):
//! RFC 4180 quoting, CRLF line ends, and cells that a spreadsheet would run as a formula
//! (`=`, `+`, `-`, `@`, tab, CR first) prefixed with `'` — hostnames and messages come from
//! endpoints.

/// One CSV cell.
pub fn cell(s: &str) -> String {
    let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
    let s = if risky {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// One CSV record with its CRLF: what a streamed export writes row by row.
pub fn line<S: AsRef<str>>(cells: &[S]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| cell(c.as_ref())).collect();
    cells.join(",") + "\r\n"
}

/// A whole CSV document: header row, then rows; CRLF line ends.
pub fn document(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = line(header);
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(cell(" padded"), "\" padded\"");
        assert_eq!(cell("日本語、テキスト"), "日本語、テキスト");
        assert_eq!(cell(""), "");
    }

    #[test]
    fn formulas_are_neutralised_but_numbers_are_not() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("-1073741819"), "-1073741819");
        assert_eq!(cell("+cmd"), "'+cmd");
    }

    #[test]
    fn documents_use_crlf() {
        let d = document(&["a", "b"], &[vec!["1".into(), "x,y".into()]]);
        assert_eq!(d, "a,b\r\n1,\"x,y\"\r\n");
        assert_eq!(line(&["=1+1", "a"]), "'=1+1,a\r\n");
    }
}
