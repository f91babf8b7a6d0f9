//! A tiny printer for the human output of the operator verbs: aligned
//! columns for lists and aligned `field: value` lines for single objects,
//! so people can read results without a JSON tool (no table crate needed).

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart; the last column is not padded. Empty cells print as `-`.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty and extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| cell(&c)).collect();
        cells.resize(self.header.len(), "-".to_owned());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |i: usize| {
            std::iter::once(&self.header[i])
                .chain(self.rows.iter().map(|r| &r[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            out.push_str(&join(line, &widths));
            out.push('\n');
        }
        out
    }
}

/// `field: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = format!("{k}:");
        out.push_str(format!("{key:<width$}  {}", cell(v)).trim_end());
        out.push('\n');
    }
    out
}

fn join(cells: &[String], widths: &[usize]) -> String {
    let last = cells.len().saturating_sub(1);
    let mut line = String::new();
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        if i == last {
            line.push_str(c);
        } else {
            line.push_str(c);
            line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
        }
    }
    line.trim_end().to_owned()
}

/// One printable cell: `-` when empty, control characters escaped so that a
/// value can never break the layout.
fn cell(s: &str) -> String {
    if s.is_empty() {
        return "-".to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_empty_cells_show_a_dash() {
        let mut t = Table::new(&["BLOCK", "FROM", "TO"]);
        t.row(vec!["telemetry".into(), "1.25.3".into(), "1.26.0".into()]);
        t.row(vec!["ui".into(), String::new(), "2.0.0".into()]);
        t.row(vec!["x".into()]);
        assert_eq!(
            t.render(),
            "BLOCK      FROM    TO\n\
             telemetry  1.25.3  1.26.0\n\
             ui         -       2.0.0\n\
             x          -       -\n"
        );
    }

    #[test]
    fn a_header_alone_for_no_rows() {
        assert_eq!(Table::new(&["ID", "NAME"]).render(), "ID  NAME\n");
    }

    #[test]
    fn cells_cannot_break_lines() {
        let mut t = Table::new(&["NAME", "VALUE"]);
        t.row(vec!["A".into(), "two\nlines\ttab".into()]);
        assert_eq!(t.render(), "NAME  VALUE\nA     two\\nlines\\ttab\n");
    }

    #[test]
    fn wide_characters_count_once() {
        let mut t = Table::new(&["N", "V"]);
        t.row(vec!["é".into(), "1".into()]);
        assert_eq!(t.render(), "N  V\né  1\n");
    }

    #[test]
    fn fields_align_their_values() {
        assert_eq!(
            fields(&[
                ("id", "r1".into()),
                ("fleet", "inverters".into()),
                ("env", String::new())
            ]),
            "id:     r1\nfleet:  inverters\nenv:    -\n"
        );
    }
}
