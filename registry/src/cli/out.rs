//! Command output on stdout: flushed after every write so that pipes and
//! log collectors see each line at once; and aligned tables.

use std::io::{self, Write};

/// Write `lines`, each followed by a newline, then flush.
pub fn write_lines<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    for line in lines {
        stdout.write_all(line.as_ref().as_bytes())?;
        stdout.write_all(b"\n")?;
    }
    stdout.flush()
}

/// The reader went away (`registry list | head -1`): stop writing, quietly.
pub fn reader_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::BrokenPipe
}

/// Write `lines` as the last output of a command: a reader that went away
/// (`... | head -1`) is not a failure.
pub fn finish<S: AsRef<str>>(
    lines: impl IntoIterator<Item = S>,
) -> Result<(), super::exit::Failure> {
    match write_lines(lines) {
        Ok(()) => Ok(()),
        Err(e) if reader_gone(&e) => Ok(()),
        Err(e) => Err(super::exit::Failure::Runtime(
            anyhow::Error::new(e).context("cannot write to stdout"),
        )),
    }
}

/// A header and rows as lines, each column padded to its widest cell, two
/// spaces between columns, no trailing blanks.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let padded: Vec<String> = cells
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    std::iter::once(line(&mut header.iter().copied()))
        .chain(
            rows.iter()
                .map(|row| line(&mut row.iter().map(String::as_str))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let rows = [
            ["app".to_owned(), "1".to_owned(), String::new()],
            ["checkout".to_owned(), "12".to_owned(), "→ x".to_owned()],
        ];
        assert_eq!(
            table(["SERVICE", "N", "NOTE"], &rows),
            ["SERVICE   N   NOTE", "app       1", "checkout  12  → x"]
        );
    }
}
