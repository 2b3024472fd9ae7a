//! `cargo xtask test`: what CI runs. Packages first, and the Python SDKs the LLM tests
//! drive (`sdks.rs`); then formatting, lints and the test suite, every step even when an
//! earlier one failed (so one run shows every problem);
//! the test output streams through live while its `test result:` lines are summed into
//! the one closing line `tests: N passed, M failed`. Last, the API contract
//! (`contract.rs`).

use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Command, ExitStatus, Stdio};

use crate::flags::TestOptions;
use crate::packages::{self, Need, PackageError, Presence};
use crate::project;
use crate::sdks;

/// Environment variables that turn a test's "skipping: ..." into a failure: set when
/// xtask runs as root with every package installed, as CI does.
const REQUIRE_PREREQUISITES: &[(&str, &str)] = &[
    ("FLOTILLA_REQUIRE_NETNS", "1"),
    ("FLOTILLA_REQUIRE_VULKAN", "1"),
];

/// Why the suite could not be run at all (a failing step is an outcome, not an error).
#[derive(Debug)]
pub enum TestSuiteError {
    Packages(PackageError),
    Spawn { command: String, source: io::Error },
    ReadOutput { command: String, source: io::Error },
}

impl fmt::Display for TestSuiteError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestSuiteError::Packages(packages_error) => write!(formatter, "{packages_error}"),
            TestSuiteError::Spawn { command, .. } => write!(formatter, "could not run `{command}`"),
            TestSuiteError::ReadOutput { command, .. } => {
                write!(formatter, "lost the output of `{command}`")
            }
        }
    }
}

impl std::error::Error for TestSuiteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TestSuiteError::Packages(packages_error) => packages_error.source(),
            TestSuiteError::Spawn { source, .. } | TestSuiteError::ReadOutput { source, .. } => {
                Some(source)
            }
        }
    }
}

/// Runs the suite; `Ok(false)` when a step failed.
pub fn run(test_options: &TestOptions) -> Result<bool, TestSuiteError> {
    let presence = packages::ensure(&[Need::Build, Need::Desktops, Need::Tests])
        .map_err(TestSuiteError::Packages)?;
    let require_prerequisites = presence == Presence::AllInstalled && project::is_root();
    if require_prerequisites {
        eprintln!(
            "xtask: root with every package installed, so no test may skip: {}",
            REQUIRE_PREREQUISITES
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let workspace_root = project::workspace_root();
    let mut failed_steps = Vec::new();
    // The SDKs' interpreter for the tests; without it the tests that drive them fail
    // and say how to install them, the other steps run all the same.
    let sdk_python = match sdks::install(&project::target_dir(&workspace_root)) {
        Ok(python) => Some(python),
        Err(sdks_error) => {
            eprintln!("xtask: sdks: {sdks_error}");
            failed_steps.push("cargo xtask sdks".to_owned());
            None
        }
    };
    let package_args: Vec<&str> = test_options
        .packages
        .iter()
        .flat_map(|package| ["-p", package.as_str()])
        .collect();
    let with_packages = |head: &[&str], tail: &[&str]| -> Vec<String> {
        let mut args: Vec<&str> = head.to_vec();
        args.extend(&package_args);
        args.extend(tail);
        args.into_iter().map(str::to_owned).collect()
    };

    let mut steps: Vec<Vec<String>> = Vec::new();
    if !test_options.skip_lints {
        steps.push(with_packages(&["fmt", "--check"], &[]));
        // --all-features: the NVML code (gpu feature `nvml`) must build too.
        steps.push(with_packages(
            &["clippy", "--all-targets", "--all-features"],
            &["--", "-D", "warnings"],
        ));
    }
    let mut test_step = if test_options.packages.is_empty() {
        vec!["test".to_owned(), "--workspace".to_owned()]
    } else {
        with_packages(&["test"], &[])
    };
    if !test_options.test_args.is_empty() {
        test_step.push("--".to_owned());
        test_step.extend(test_options.test_args.iter().cloned());
    }

    for lint_step in &steps {
        let args: Vec<&str> = lint_step.iter().map(String::as_str).collect();
        let mut command = project::cargo(&workspace_root, &args);
        project::echo(&command);
        let status = command.status().map_err(|source| TestSuiteError::Spawn {
            command: project::display(&command),
            source,
        })?;
        if !status.success() {
            failed_steps.push(project::display(&command));
        }
    }

    let args: Vec<&str> = test_step.iter().map(String::as_str).collect();
    let mut command = project::cargo(&workspace_root, &args);
    if require_prerequisites {
        command.envs(REQUIRE_PREREQUISITES.iter().copied());
    }
    if let Some(python) = &sdk_python {
        command.env(sdks::PYTHON_VAR, python);
    }
    project::echo(&command);
    let (status, tally) = run_counting(&mut command)?;
    if !status.success() {
        failed_steps.push(project::display(&command));
    }

    // The API contract, when the whole workspace was tested (a filtered run is a
    // developer's quick loop).
    if test_options.packages.is_empty() && test_options.test_args.is_empty() {
        match crate::contract::run() {
            Ok(true) => {}
            Ok(false) => failed_steps.push("cargo xtask contract".to_owned()),
            Err(contract_error) => {
                eprintln!("xtask: contract: {contract_error}");
                failed_steps.push("cargo xtask contract".to_owned());
            }
        }
    }

    for failed_step in &failed_steps {
        eprintln!("xtask: failed: {failed_step}");
    }
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    Ok(failed_steps.is_empty())
}

/// Runs `command` with its stdout passed through as it comes (partial lines included, so
/// `test x ... ` shows while x runs) and counted; stderr goes straight to ours.
fn run_counting(command: &mut Command) -> Result<(ExitStatus, TestTally), TestSuiteError> {
    let command_line = project::display(command);
    let mut child =
        command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| TestSuiteError::Spawn {
                command: command_line.clone(),
                source,
            })?;
    let mut child_stdout = child.stdout.take().expect("stdout was set to piped");
    let mut tally = TestTally::default();
    let mut stdout = io::stdout().lock();
    let mut buffer = [0_u8; 8192];
    let copied: io::Result<()> = loop {
        match child_stdout.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(read) => {
                tally.feed(&buffer[..read]);
                // A closed stdout (xtask piped into `head`) must not stop the tests.
                let _ = stdout
                    .write_all(&buffer[..read])
                    .and_then(|()| stdout.flush());
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => break Err(error),
        }
    };
    drop(child_stdout);
    let status = child.wait().map_err(|source| TestSuiteError::ReadOutput {
        command: command_line.clone(),
        source,
    })?;
    copied.map_err(|source| TestSuiteError::ReadOutput {
        command: command_line,
        source,
    })?;
    tally.finish();
    Ok((status, tally))
}

/// The sum over every `test result:` line, counted as `.ci/run`'s awk did
/// (`passed += $4; failed += $6`): cargo prints one such line per test binary.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestTally {
    pub passed: u64,
    pub failed: u64,
    partial_line: Vec<u8>,
}

impl TestTally {
    /// Takes the next piece of output, which may end in the middle of a line.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.partial_line);
                self.add_line(&String::from_utf8_lossy(&line));
            } else {
                self.partial_line.push(byte);
            }
        }
    }

    /// Counts a last line that had no newline.
    pub fn finish(&mut self) {
        if !self.partial_line.is_empty() {
            let line = std::mem::take(&mut self.partial_line);
            self.add_line(&String::from_utf8_lossy(&line));
        }
    }

    fn add_line(&mut self, line: &str) {
        if !line.starts_with("test result:") {
            return;
        }
        // `test result: ok. 12 passed; 0 failed; ...`: awk's $4 and $6.
        let fields: Vec<&str> = line.split_whitespace().collect();
        self.passed += fields.get(3).map_or(0, |field| awk_number(field));
        self.failed += fields.get(5).map_or(0, |field| awk_number(field));
    }
}

/// A field's value the way awk reads a number: its leading digits, 0 when there are none.
fn awk_number(field: &str) -> u64 {
    let digits = field.bytes().take_while(u8::is_ascii_digit).count();
    field[..digits].parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged output of `cargo test -p xtask` plus a failing binary and a doc-test line.
    const CARGO_TEST_OUTPUT: &str = "\
   Compiling xtask v0.1.0 (/work/main/xtask)
running 3 tests
test flags::tests::help_everywhere ... ok
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

running 5 tests
test a ... FAILED
test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s
  test result: indented lines are not cargo's and do not count 7 passed; 7 failed
test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 0.00s
";

    #[test]
    fn test_result_lines_are_summed() {
        let mut tally = TestTally::default();
        tally.feed(CARGO_TEST_OUTPUT.as_bytes());
        tally.finish();
        assert_eq!((tally.passed, tally.failed), (6, 2));
    }

    #[test]
    fn lines_split_across_reads_count_once() {
        let mut tally = TestTally::default();
        for piece in CARGO_TEST_OUTPUT.as_bytes().chunks(7) {
            tally.feed(piece);
        }
        tally.feed(b"test result: ok. 4 passed; 1 failed; no newline at the end");
        tally.finish();
        assert_eq!((tally.passed, tally.failed), (10, 3));
    }

    #[test]
    fn numbers_are_read_as_awk_does() {
        assert_eq!(awk_number("12"), 12);
        assert_eq!(awk_number("3;"), 3);
        assert_eq!(awk_number("passed;"), 0);
        assert_eq!(awk_number(""), 0);
    }
}
