//! The runtime journal, `desktop-events.jsonl` in the data directory: one
//! JSON line per start and per completed stop, with a CLOCK_MONOTONIC
//! timestamp, rotated to `.1` past 16 MiB. Operators audit it; tests check
//! from it that no desktop ever ran on two nodes at once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::clock::monotonic_ns;

pub const JOURNAL_FILE: &str = "desktop-events.jsonl";
/// The journal is rotated to `.1` beyond this size.
const JOURNAL_MAX_BYTES: u64 = 16 << 20;

/// One journal line.
#[derive(Debug, Serialize)]
struct JournalEntry<'a> {
    node: &'a str,
    desktop: &'a str,
    generation: u64,
    event: &'a str,
    monotonic_ns: u128,
}

pub(super) struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    pub(super) fn open(path: &Path) -> std::io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Appends one event; a journal that cannot be written is warned
    /// about, never a reason to stop running desktops.
    pub(super) fn record(&mut self, node: &str, desktop: &str, generation: u64, event: &str) {
        let entry = JournalEntry {
            node,
            desktop,
            generation,
            event,
            monotonic_ns: monotonic_ns(),
        };
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        if let Some(file) = &mut self.file {
            if let Err(error) = file.write_all(&line) {
                tracing::warn!(%error, path = %self.path.display(), "cannot write the runtime journal");
            }
            if file
                .metadata()
                .is_ok_and(|meta| meta.len() > JOURNAL_MAX_BYTES)
            {
                let _ = std::fs::rename(&self.path, self.path.with_extension("jsonl.1"));
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .ok();
            }
        }
    }
}
