//! How answers look: aligned tables and `field: value` lines for people, the API's own JSON
//! (one document per line) for scripts.

use std::io::Write;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// One value as a table cell: strings as they are, nothing as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows under headers, each column as wide as its widest cell.
pub fn table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(
        out,
        &headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>(),
    )?;
    for row in rows {
        line(out, row)?;
    }
    Ok(())
}

/// The `columns` of each item of a list.
pub fn list(out: &mut impl Write, items: &[Value], columns: &[&str]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
        .collect();
    table(out, columns, &rows)
}

/// An object as `field: value` lines, by field name.
pub fn object(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    let Some(fields) = v.as_object() else {
        return writeln!(out, "{}", cell(v));
    };
    let width = fields.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        writeln!(
            out,
            "{:<width$}  {}",
            format!("{k}:"),
            cell(v),
            width = width + 1
        )?;
    }
    Ok(())
}

/// The API's JSON, one document per line.
pub fn json(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    writeln!(out, "{v}")
}
