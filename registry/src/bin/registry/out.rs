//! Command output on stdout: flushed after every write so that pipes and
//! log collectors see each line at once.

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
