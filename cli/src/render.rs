//! How answers are printed: JSON as the server sent it (`--output json`), or
//! plain tables and amounts for people. Commands decide what to show; this
//! module decides how it looks, so every table has the same style: no
//! borders, two spaces between columns, each column at least as wide as it
//! was when the CLI aligned them by hand (and wider when a value needs it).

use comfy_table::{presets::NOTHING, CellAlignment, ColumnConstraint, Table, Width};
use serde_json::Value;

/// What a client command prints: a table (or key-value lines) for people,
/// or the server's JSON for scripts.
#[derive(Clone, Copy)]
pub enum Output {
    Table,
    Json,
}

/// Prints `value` as indented JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One column of a [`TextTable`].
#[derive(Clone, Copy)]
pub struct Column {
    header: &'static str,
    /// Narrowest the column's text is (a wider value widens the column).
    width: u16,
    align: CellAlignment,
    /// Spaces after the column (none after the last).
    gap: u16,
}

impl Column {
    pub const fn left(header: &'static str, width: u16) -> Column {
        Column {
            header,
            width,
            align: CellAlignment::Left,
            gap: 2,
        }
    }

    pub const fn right(header: &'static str, width: u16) -> Column {
        Column {
            header,
            width,
            align: CellAlignment::Right,
            gap: 2,
        }
    }

    /// The same column with `gap` spaces after it instead of two.
    pub const fn gap(self, gap: u16) -> Column {
        Column { gap, ..self }
    }
}

/// A borderless table: a header line (unless every header is empty), then
/// one line per row; trailing spaces are trimmed.
pub struct TextTable {
    columns: Vec<Column>,
    indent: u16,
    table: Table,
}

impl TextTable {
    pub fn new(columns: &[Column]) -> TextTable {
        let mut table = Table::new();
        table.load_preset(NOTHING);
        if columns.iter().any(|column| !column.header.is_empty()) {
            table.set_header(columns.iter().map(|column| column.header));
        }
        TextTable {
            columns: columns.to_vec(),
            indent: 0,
            table,
        }
    }

    /// Every line starts with `indent` spaces (a table nested under a heading).
    pub fn indent(mut self, indent: u16) -> TextTable {
        self.indent = indent;
        self
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<comfy_table::Cell>,
    {
        self.table.add_row(cells);
    }

    /// The table's lines, each ending in a newline; nothing when it has
    /// neither a header nor rows.
    pub fn render(mut self) -> String {
        if self.table.header().is_none() && self.table.row_count() == 0 {
            return String::new();
        }
        let last = self.columns.len().saturating_sub(1);
        let indent = self.indent;
        for ((index, column), spec) in self.table.column_iter_mut().enumerate().zip(&self.columns) {
            let left = if index == 0 { indent } else { 0 };
            let right = if index == last { 0 } else { spec.gap };
            column.set_padding((left, right));
            column.set_cell_alignment(spec.align);
            if spec.width > 0 {
                // The bound counts the padding too.
                column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(
                    spec.width + left + right,
                )));
            }
        }
        let mut text = self.table.trim_fmt();
        text.push('\n');
        text
    }

    pub fn print(self) {
        print!("{}", self.render());
    }
}

/// `1.5 GiB`, `512 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let value = bytes as f64;
    if value >= GIB {
        format!("{:.1} GiB", value / GIB)
    } else {
        format!("{:.0} MiB", value / MIB)
    }
}

/// `allocated/capacity` of an amount object, each formatted by `format`.
pub fn amount(value: &Value, format: fn(u64) -> String) -> String {
    let allocated = value["allocated"].as_u64().unwrap_or(0);
    let capacity = value["capacity"].as_u64().unwrap_or(0);
    format!("{}/{}", format(allocated), format(capacity))
}

/// Millicores: `250m`.
pub fn millis(value: u64) -> String {
    format!("{value}m")
}

pub fn count(value: u64) -> String {
    value.to_string()
}

/// A string field, or `-` when it is missing.
pub fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_as_the_hand_aligned_ones_did() {
        let mut table = TextTable::new(&[
            Column::left("ID", 36),
            Column::left("COLUMN", 14),
            Column::right("POS", 3),
            Column::left("TITLE", 0),
        ]);
        table.row(["a", "backlog", "1", "first"]);
        table.row(["b", "planning", "12", "second"]);
        let mut expected = format!("{:<36}  {:<14}  {:>3}  TITLE\n", "ID", "COLUMN", "POS");
        for (id, column, position, title) in [
            ("a", "backlog", "1", "first"),
            ("b", "planning", "12", "second"),
        ] {
            expected += &format!("{id:<36}  {column:<14}  {position:>3}  {title}\n");
        }
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn a_wide_value_widens_its_column_and_trailing_spaces_go() {
        let mut table = TextTable::new(&[Column::right("ID", 4), Column::left("ADDR", 0)]);
        table.row(["123456", "x"]);
        table.row(["1", ""]);
        assert_eq!(table.render(), "    ID  ADDR\n123456  x\n     1\n");
    }

    #[test]
    fn headerless_tables_take_gaps_and_an_indent() {
        let mut table = TextTable::new(&[
            Column::left("", 24).gap(1),
            Column::right("", 10).gap(1),
            Column::left("", 0).gap(1),
            Column::right("", 10),
        ])
        .indent(4);
        table.row(["dt-1", "256 MiB", "of", "1.0 GiB"]);
        assert_eq!(
            table.render(),
            format!(
                "    {:<24} {:>10} of {:>10}\n",
                "dt-1", "256 MiB", "1.0 GiB"
            )
        );
        let empty = TextTable::new(&[Column::left("", 3)]);
        assert_eq!(empty.render(), "");
    }

    #[test]
    fn amounts_read_as_before() {
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        let value = serde_json::json!({"allocated": 500, "capacity": 16000});
        assert_eq!(amount(&value, millis), "500m/16000m");
        assert_eq!(text(&Value::Null), "-");
    }
}
