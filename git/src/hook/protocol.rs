//! The `proc-receive` hook's side of git's protocol (`git help githooks`, section
//! proc-receive), framed with gix-packetline:
//!
//! ```text
//! git:  version=1\0<capabilities>  flush      hook: version=1  flush
//! git:  <old> <new> <ref> ...      flush
//! git:  <push-option> ...          flush      (only if both sides named push-options)
//! hook: ok <ref> | ng <ref> <reason> ...       flush
//! ```
//!
//! The hook never asks for push options, so git never sends that section. Blocking IO:
//! the hook is a short-lived process talking to git over its stdin and stdout.

use std::io::{Read, Write};

use gix_packetline::blocking_io::{encode, StreamingPeekableIter};
use gix_packetline::PacketLineRef;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest reason sent back to git: one pkt-line holds at most 65516 bytes, and a
/// person reads the reason in a terminal.
const MAX_REASON_BYTES: usize = 1000;

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("read from git")]
    Read(#[source] std::io::Error),
    #[error("write to git")]
    Write(#[source] std::io::Error),
    #[error("git sent a malformed pkt-line")]
    Decode(#[source] gix_packetline::decode::Error),
    #[error("git sent an unexpected {section} line: {line:?}")]
    Unexpected { section: &'static str, line: String },
    #[error("git speaks proc-receive version {version:?}; this hook speaks version 1")]
    Version { version: String },
}

/// One command git hands the hook, exactly as git sent it; the server validates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

/// The hook's verdict on one ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefReport {
    Ok { name: String },
    Ng { name: String, reason: String },
}

/// Reads git's side of the conversation.
pub struct ProcReceiveReader<R: Read> {
    lines: StreamingPeekableIter<R>,
}

impl<R: Read> ProcReceiveReader<R> {
    pub fn new(read: R) -> Self {
        Self {
            lines: StreamingPeekableIter::new(read, &[PacketLineRef::Flush], false),
        }
    }

    /// The version section; returns git's capabilities (`atomic`, `push-options`).
    pub fn read_version(&mut self) -> Result<Vec<String>, ProtocolError> {
        let lines = self.read_section()?;
        let first = lines.first().ok_or_else(|| ProtocolError::Unexpected {
            section: "version",
            line: String::new(),
        })?;
        let (version, capabilities) = match first.split_once('\0') {
            Some((version, capabilities)) => (version, capabilities),
            None => (first.as_str(), ""),
        };
        if version != "version=1" {
            return Err(ProtocolError::Version {
                version: version.to_owned(),
            });
        }
        Ok(capabilities.split_whitespace().map(str::to_owned).collect())
    }

    /// The commands section: `<old> <new> <ref>` per line.
    pub fn read_commands(&mut self) -> Result<Vec<ProposedUpdate>, ProtocolError> {
        self.read_section()?
            .into_iter()
            .map(|line| {
                let mut fields = line.splitn(3, ' ');
                match (fields.next(), fields.next(), fields.next()) {
                    (Some(old), Some(new), Some(name)) => Ok(ProposedUpdate {
                        old: old.to_owned(),
                        new: new.to_owned(),
                        name: name.to_owned(),
                    }),
                    _ => Err(ProtocolError::Unexpected {
                        section: "command",
                        line,
                    }),
                }
            })
            .collect()
    }

    /// Data lines up to the next flush, newline-trimmed. EOF before the flush is an
    /// error: git died or the input is truncated.
    fn read_section(&mut self) -> Result<Vec<String>, ProtocolError> {
        let mut lines = Vec::new();
        while let Some(line) = self.lines.read_line() {
            let line = line
                .map_err(ProtocolError::Read)?
                .map_err(ProtocolError::Decode)?;
            match line.as_slice() {
                Some(data) => {
                    let data = data.strip_suffix(b"\n").unwrap_or(data);
                    lines.push(String::from_utf8_lossy(data).into_owned());
                }
                None => {
                    return Err(ProtocolError::Unexpected {
                        section: "pkt-line",
                        line: format!("{line:?}"),
                    })
                }
            }
        }
        self.lines.reset();
        Ok(lines)
    }
}

/// Answers git's version section: version 1, no capabilities.
pub fn write_version(mut out: impl Write) -> Result<(), ProtocolError> {
    encode::data_to_write(b"version=1\n", &mut out).map_err(ProtocolError::Write)?;
    encode::flush_to_write(&mut out).map_err(ProtocolError::Write)?;
    out.flush().map_err(ProtocolError::Write)
}

/// Writes the report section, one line per ref, then the flush.
pub fn write_report(mut out: impl Write, reports: &[RefReport]) -> Result<(), ProtocolError> {
    for report in reports {
        let line = match report {
            RefReport::Ok { name } => format!("ok {name}\n"),
            RefReport::Ng { name, reason } => format!("ng {name} {}\n", one_line(reason)),
        };
        encode::data_to_write(line.as_bytes(), &mut out).map_err(ProtocolError::Write)?;
    }
    encode::flush_to_write(&mut out).map_err(ProtocolError::Write)?;
    out.flush().map_err(ProtocolError::Write)
}

/// A reason as one bounded line: git reads the report line by line.
fn one_line(reason: &str) -> String {
    let mut line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode::data_to_write(data.as_bytes(), &mut out).expect("encode");
        out
    }

    const FLUSH: &[u8] = b"0000";

    #[test]
    fn reads_what_git_sends() {
        let old = "0".repeat(40);
        let new = "a".repeat(40);
        let mut input = pkt("version=1\0atomic push-options\n");
        input.extend(FLUSH);
        input.extend(pkt(&format!("{old} {new} refs/heads/flotilla/t1")));
        input.extend(pkt(&format!("{new} {old} refs/heads/x")));
        input.extend(FLUSH);
        let mut reader = ProcReceiveReader::new(input.as_slice());
        assert_eq!(
            reader.read_version().expect("version"),
            vec!["atomic".to_owned(), "push-options".to_owned()]
        );
        let commands = reader.read_commands().expect("commands");
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].name, "refs/heads/flotilla/t1");
        assert_eq!(commands[1].old, new);
    }

    #[test]
    fn refuses_other_versions_truncation_and_garbage() {
        let mut v2 = pkt("version=2\n");
        v2.extend(FLUSH);
        assert!(matches!(
            ProcReceiveReader::new(v2.as_slice()).read_version(),
            Err(ProtocolError::Version { .. })
        ));
        let truncated = pkt("version=1\n");
        assert!(matches!(
            ProcReceiveReader::new(truncated.as_slice()).read_version(),
            Err(ProtocolError::Read(_))
        ));
        assert!(matches!(
            ProcReceiveReader::new(&b"zzzzversion"[..]).read_version(),
            Err(ProtocolError::Decode(_))
        ));
        let mut bad_command = pkt("version=1\n");
        bad_command.extend(FLUSH);
        bad_command.extend(pkt("just-one-field"));
        bad_command.extend(FLUSH);
        let mut reader = ProcReceiveReader::new(bad_command.as_slice());
        reader.read_version().expect("version");
        assert!(matches!(
            reader.read_commands(),
            Err(ProtocolError::Unexpected { .. })
        ));
    }

    #[test]
    fn writes_reports_git_can_read() {
        let mut out = Vec::new();
        write_report(
            &mut out,
            &[
                RefReport::Ok {
                    name: "refs/heads/a".to_owned(),
                },
                RefReport::Ng {
                    name: "refs/heads/main".to_owned(),
                    reason: "no\nway".to_owned(),
                },
            ],
        )
        .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "0014ok refs/heads/a\n001eng refs/heads/main no way\n0000"
        );
    }
}
