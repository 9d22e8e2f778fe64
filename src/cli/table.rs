//! Plain-text tables: each column as wide as its widest cell, counted in terminal columns
//! (Japanese characters take two), so long ids, `loop_detected(rule)` and Japanese labels stay
//! aligned.

use unicode_width::UnicodeWidthStr;

pub struct Table {
    widths: Vec<usize>,
    /// Columns aligned right (numbers).
    right: Vec<bool>,
}

impl Table {
    pub fn new(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> Table {
        let mut t = Table {
            widths: header.iter().map(|h| h.width()).collect(),
            right: right.to_vec(),
        };
        for r in rows {
            t.widen(r);
        }
        t
    }

    /// Makes each column wide enough for `row` too (rows met one at a time).
    pub fn widen<S: AsRef<str>>(&mut self, row: &[S]) {
        for (w, c) in self.widths.iter_mut().zip(row) {
            *w = (*w).max(c.as_ref().width());
        }
    }

    /// One row, padded to the columns, without trailing spaces.
    pub fn line<S: AsRef<str>>(&self, cells: &[S]) -> String {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&self.widths).enumerate() {
            let c = c.as_ref();
            let pad = " ".repeat(w.saturating_sub(c.width()));
            if i > 0 {
                out.push_str("  ");
            }
            if self.right.get(i).copied().unwrap_or(false) {
                out.push_str(&pad);
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&pad);
            }
        }
        out.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_in_terminal_columns() {
        let rows = vec![
            vec![
                "ws2008-ja".to_string(),
                "再配信ループ停止".into(),
                "3".into(),
            ],
            vec![
                "a-very-long-hostname-01".to_string(),
                "applied".into(),
                "12".into(),
            ],
        ];
        let t = Table::new(&["MACHINE", "STATE", "N"], &rows, &[false, false, true]);
        assert_eq!(
            t.line(&["MACHINE", "STATE", "N"]),
            format!("MACHINE{}STATE{}N", " ".repeat(18), " ".repeat(14))
        );
        // 再配信ループ停止 is 8 characters but 16 columns wide.
        assert_eq!(
            t.line(&rows[0]),
            format!("ws2008-ja{}再配信ループ停止   3", " ".repeat(16))
        );
        assert_eq!(
            t.line(&rows[1]),
            format!("a-very-long-hostname-01  applied{}12", " ".repeat(11))
        );
    }
}
