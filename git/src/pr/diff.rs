//! What a pull request changes: the files, their line counts and hunks between the
//! merge base of `base` and `head`, and `head` (what `git diff base...head` shows, the
//! changes the pull request brings rather than what the base gained meanwhile).
//!
//! Three git commands feed it: `--numstat -z` (counts, authoritative, `-` for binary),
//! `--name-status -z` (status and rename sources) and `-U3` (hunks, parsed with the
//! `unidiff` crate). The `-z` forms are parsed here because they are NUL-separated
//! fields, not a diff; `unidiff` ignores files without hunks (binary, pure renames),
//! which the first two commands still list.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::PrError;
use crate::store::RepoStore;
use crate::types::{ObjectId, RepoId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileStatus {
    Added,
    Deleted,
    Modified,
    /// Renamed (with `similarity` percent of its content kept).
    Renamed {
        similarity: u8,
    },
    Copied {
        similarity: u8,
    },
    /// File ↔ symlink ↔ submodule.
    TypeChanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDiff {
    pub path: String,
    /// The path before a rename or copy.
    pub old_path: Option<String>,
    pub status: FileStatus,
    /// Binary files count no lines.
    pub binary: bool,
    pub additions: u64,
    pub deletions: u64,
    pub hunks: Vec<Hunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hunk {
    pub old_start: u64,
    pub old_lines: u64,
    pub new_start: u64,
    pub new_lines: u64,
    /// The function context git prints after `@@ ... @@`.
    pub header: String,
    pub lines: Vec<DiffLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineKind {
    Context,
    Added,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffLine {
    pub kind: LineKind,
    pub content: String,
    pub old_line: Option<u64>,
    pub new_line: Option<u64>,
}

/// The pull request's changes: `merge-base(base, head)..head`.
pub async fn diff(
    store: &RepoStore,
    repo: &RepoId,
    base: &ObjectId,
    head: &ObjectId,
) -> Result<Vec<FileDiff>, PrError> {
    let merge_base = merge_base(store, repo, base, head).await?;
    let range = [merge_base.as_str(), head.as_str()];
    let common = [
        "-c",
        "core.quotePath=false",
        "diff",
        "-M",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
    ];
    let numstat = run(
        store,
        repo,
        "count changed lines",
        &common,
        &["--numstat", "-z"],
        &range,
    )
    .await?;
    let name_status = run(
        store,
        repo,
        "list changed files",
        &common,
        &["--name-status", "-z"],
        &range,
    )
    .await?;
    let patch = run(
        store,
        repo,
        "diff files",
        &common,
        &["-U3", "--src-prefix=a/", "--dst-prefix=b/"],
        &range,
    )
    .await?;
    let parse_error = |step: &'static str, detail: String| PrError::Parse {
        repo: repo.clone(),
        step,
        detail,
    };
    let statuses =
        parse_name_status(&name_status).map_err(|d| parse_error("listing changed files", d.0))?;
    let mut hunks = parse_hunks(&patch).map_err(|d| parse_error("parsing the diff", d.0))?;
    let counts = parse_numstat(&numstat).map_err(|d| parse_error("counting changed lines", d.0))?;
    counts
        .into_iter()
        .map(|count| {
            let status = statuses.get(&count.path).cloned().ok_or_else(|| {
                parse_error(
                    "matching counts to files",
                    format!("no status for {}", count.path),
                )
            })?;
            Ok(FileDiff {
                hunks: hunks.remove(&count.path).unwrap_or_default(),
                path: count.path,
                old_path: count.old_path,
                status,
                binary: count.binary,
                additions: count.additions,
                deletions: count.deletions,
            })
        })
        .collect()
}

async fn merge_base(
    store: &RepoStore,
    repo: &RepoId,
    base: &ObjectId,
    head: &ObjectId,
) -> Result<ObjectId, PrError> {
    let path = store.existing_path(repo)?;
    let args = ["merge-base", base.as_str(), head.as_str()];
    let output = store
        .git()
        .output(Some(&path), &args, None)
        .await
        .map_err(|source| PrError::Git {
            repo: repo.clone(),
            step: "find the merge base",
            source: Box::new(source),
        })?;
    if output.status.code() == Some(1) {
        return Err(PrError::NoMergeBase {
            repo: repo.clone(),
            base: base.clone(),
            head: head.clone(),
        });
    }
    let stdout = output.success(&args).map_err(|source| PrError::Git {
        repo: repo.clone(),
        step: "find the merge base",
        source: Box::new(source),
    })?;
    let line = String::from_utf8_lossy(&stdout).trim().to_owned();
    ObjectId::new(line.clone()).map_err(|_| PrError::Parse {
        repo: repo.clone(),
        step: "finding the merge base",
        detail: line,
    })
}

async fn run(
    store: &RepoStore,
    repo: &RepoId,
    step: &'static str,
    common: &[&str],
    format: &[&str],
    range: &[&str],
) -> Result<String, PrError> {
    let path = store.existing_path(repo)?;
    let mut args: Vec<&str> = common.to_vec();
    args.extend_from_slice(format);
    args.extend_from_slice(range);
    args.push("--");
    let stdout = store
        .git()
        .run(Some(&path), &args, None)
        .await
        .map_err(|source| PrError::Git {
            repo: repo.clone(),
            step,
            source: Box::new(source),
        })?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[derive(Debug, PartialEq, Eq)]
struct LineCount {
    path: String,
    old_path: Option<String>,
    binary: bool,
    additions: u64,
    deletions: u64,
}

/// What in git's output could not be read (the caller names the step).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreadable(String);

impl From<String> for Unreadable {
    fn from(detail: String) -> Self {
        Unreadable(detail)
    }
}

impl From<&str> for Unreadable {
    fn from(detail: &str) -> Self {
        Unreadable(detail.to_owned())
    }
}

/// `<added>\t<deleted>\t<path>\0`, or `<added>\t<deleted>\t\0<old>\0<new>\0` for a
/// rename; `-\t-\t` for a binary file.
fn parse_numstat(output: &str) -> Result<Vec<LineCount>, Unreadable> {
    let mut fields = output.split('\0');
    let mut counts = Vec::new();
    while let Some(record) = fields.next() {
        if record.is_empty() {
            continue;
        }
        let mut parts = record.splitn(3, '\t');
        let (Some(added), Some(deleted), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("numstat record {record:?}").into());
        };
        let (path, old_path) = if path.is_empty() {
            let old = fields.next().ok_or("rename without a source")?;
            let new = fields.next().ok_or("rename without a destination")?;
            (new.to_owned(), Some(old.to_owned()))
        } else {
            (path.to_owned(), None)
        };
        let binary = added == "-" && deleted == "-";
        let number = |text: &str| -> Result<u64, Unreadable> {
            if binary {
                Ok(0)
            } else {
                text.parse()
                    .map_err(|_| format!("line count {text:?}").into())
            }
        };
        counts.push(LineCount {
            path,
            old_path,
            binary,
            additions: number(added)?,
            deletions: number(deleted)?,
        });
    }
    Ok(counts)
}

/// `<status>\0<path>\0`, or `R<score>\0<old>\0<new>\0` (and `C`); keyed by new path.
fn parse_name_status(output: &str) -> Result<HashMap<String, FileStatus>, Unreadable> {
    let mut fields = output.split('\0').filter(|field| !field.is_empty());
    let mut statuses = HashMap::new();
    while let Some(code) = fields.next() {
        let similarity = || -> Result<u8, Unreadable> {
            code[1..]
                .parse()
                .map_err(|_| format!("similarity in {code:?}").into())
        };
        let status = match code.chars().next() {
            Some('A') => FileStatus::Added,
            Some('D') => FileStatus::Deleted,
            Some('M') => FileStatus::Modified,
            Some('T') => FileStatus::TypeChanged,
            Some('R') => FileStatus::Renamed {
                similarity: similarity()?,
            },
            Some('C') => FileStatus::Copied {
                similarity: similarity()?,
            },
            _ => return Err(format!("status {code:?}").into()),
        };
        if matches!(
            status,
            FileStatus::Renamed { .. } | FileStatus::Copied { .. }
        ) {
            fields.next().ok_or("rename without a source")?;
        }
        let path = fields
            .next()
            .ok_or_else(|| format!("status {code:?} without a path"))?;
        statuses.insert(path.to_owned(), status);
    }
    Ok(statuses)
}

/// The hunks of a `-U3` diff, keyed by new path (old path for a deletion).
fn parse_hunks(patch: &str) -> Result<HashMap<String, Vec<Hunk>>, Unreadable> {
    let mut set = unidiff::PatchSet::new();
    set.parse(patch).map_err(|error| error.to_string())?;
    let mut hunks = HashMap::new();
    for file in set.files() {
        let path = match file.target_file.strip_prefix("b/") {
            Some(target) => target,
            None => file
                .source_file
                .strip_prefix("a/")
                .ok_or_else(|| format!("file header {:?}", file.source_file))?,
        };
        let file_hunks = file
            .hunks()
            .iter()
            .map(|hunk| Hunk {
                old_start: hunk.source_start as u64,
                old_lines: hunk.source_length as u64,
                new_start: hunk.target_start as u64,
                new_lines: hunk.target_length as u64,
                header: hunk.section_header.clone(),
                lines: hunk
                    .lines()
                    .iter()
                    .filter_map(|line| {
                        let kind = match line.line_type.as_str() {
                            unidiff::LINE_TYPE_ADDED => LineKind::Added,
                            unidiff::LINE_TYPE_REMOVED => LineKind::Removed,
                            unidiff::LINE_TYPE_CONTEXT => LineKind::Context,
                            // "\ No newline at end of file" is not a line of the file.
                            _ => return None,
                        };
                        Some(DiffLine {
                            kind,
                            content: line.value.clone(),
                            old_line: line.source_line_no.map(|n| n as u64),
                            new_line: line.target_line_no.map(|n| n as u64),
                        })
                    })
                    .collect(),
            })
            .collect();
        hunks.insert(path.to_owned(), file_hunks);
    }
    Ok(hunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numstat_with_renames_and_binaries() {
        let counts = parse_numstat("3\t1\tsrc/a.rs\0-\t-\tlogo.png\x000\t0\t\0old.txt\0new.txt\0")
            .expect("parse");
        assert_eq!(counts.len(), 3);
        assert_eq!(counts[0].additions, 3);
        assert!(counts[1].binary);
        assert_eq!(counts[2].path, "new.txt");
        assert_eq!(counts[2].old_path.as_deref(), Some("old.txt"));
        assert!(parse_numstat("x\ty\tz\0").is_err());
    }

    #[test]
    fn parses_name_status() {
        let statuses = parse_name_status("M\0a\0R087\0old\0new\0D\0gone\0").expect("parse");
        assert_eq!(statuses["a"], FileStatus::Modified);
        assert_eq!(statuses["new"], FileStatus::Renamed { similarity: 87 });
        assert_eq!(statuses["gone"], FileStatus::Deleted);
        assert!(parse_name_status("Q\0a\0").is_err());
    }
}
