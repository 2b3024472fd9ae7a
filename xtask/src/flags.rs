//! The command line of `cargo xtask`, parsed by hand (see the crate doc for why there is
//! no argument-parsing crate). The usage text lives here, next to the parser it describes.

use std::fmt;

pub const USAGE: &str = "\
Flotilla's project tasks.

Usage:
  cargo xtask dev [ARGS...]
      Check (as root: install) the Debian packages for building and for desktops,
      build `flotilla` in release mode and run `flotilla dev ARGS...` in place of
      this process, so Ctrl-C and SIGTERM reach flotilla itself.
  cargo xtask test [--skip-lints] [-p PACKAGE]... [-- TEST_ARGS...]
      Check (as root: install) the Debian packages the tests need, install the
      Python SDKs (as `cargo xtask sdks` does; FLOTILLA_SDK_PYTHON tells the tests
      where), then run `cargo fmt --check`, `cargo clippy --all-targets --all-features -- -D warnings`
      and `cargo test --workspace`, and end with one line `tests: N passed, M failed`.
      As root with every package present the tests that need root, network
      namespaces or Vulkan must run: FLOTILLA_REQUIRE_NETNS=1 and
      FLOTILLA_REQUIRE_VULKAN=1 are set for them. Every step runs; the exit status
      is non-zero if any failed.
        --skip-lints        leave out cargo fmt and cargo clippy
        -p, --package NAME  run each step for package NAME instead of the whole
                            workspace (repeatable)
        -- TEST_ARGS        given to the test binaries, as in
                            `cargo test --workspace -- TEST_ARGS`: a test name
                            filter, `--test-threads 1`, `--nocapture`
  cargo xtask contract
      Start `flotilla dev` on 127.0.0.1:7190 (its own data directory under target/),
      run schemathesis `--checks all` against its OpenAPI document (installed with
      pip into target/schemathesis), stop dev with SIGTERM. `cargo xtask test` runs it
      last when it tests the whole workspace.
  cargo xtask sdks
      Install the model providers' official Python SDKs (openai, anthropic, pinned)
      with pip into target/llm-sdks, where the LLM gateway's tests find them.
  cargo xtask tidy
      Run the tidy checks (file length, module docs, todo!/#[ignore], Result<_, String>,
      ARCHITECTURE.md names, import circles) and print each problem; the same checks
      run as tests in `cargo test`. Known offenders are listed in xtask/src/tidy.rs.
  cargo xtask help | --help | -h
      Print this text.
";

/// What to do, as the command line said.
#[derive(Debug, PartialEq, Eq)]
pub enum Task {
    Help,
    Dev { flotilla_args: Vec<String> },
    Test(TestOptions),
    Contract,
    Sdks,
    Tidy,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestOptions {
    pub skip_lints: bool,
    /// Empty: the whole workspace.
    pub packages: Vec<String>,
    /// Passed to the test binaries after cargo test's own `--`.
    pub test_args: Vec<String>,
}

/// A command line `cargo xtask` does not understand.
#[derive(Debug, PartialEq, Eq)]
pub enum FlagsError {
    MissingTask,
    UnknownTask(String),
    UnknownOption { task: &'static str, option: String },
    MissingValue { option: String },
}

impl fmt::Display for FlagsError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagsError::MissingTask => {
                write!(
                    formatter,
                    "no task given; pick one of dev, test, contract, sdks, tidy"
                )
            }
            FlagsError::UnknownTask(task) => {
                write!(
                    formatter,
                    "unknown task `{task}`; pick one of dev, test, contract, sdks, tidy"
                )
            }
            FlagsError::UnknownOption { task, option } => write!(
                formatter,
                "`cargo xtask {task}` has no option `{option}`; arguments for the test \
                 binaries go after `--`"
            ),
            FlagsError::MissingValue { option } => {
                write!(formatter, "option `{option}` needs a package name after it")
            }
        }
    }
}

impl std::error::Error for FlagsError {}

/// Parses the arguments after `cargo xtask`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Task, FlagsError> {
    let mut args = args.into_iter();
    let Some(task) = args.next() else {
        return Err(FlagsError::MissingTask);
    };
    match task.as_str() {
        "help" | "--help" | "-h" => Ok(Task::Help),
        // Everything after `dev` is flotilla's, `--help` included.
        "dev" => Ok(Task::Dev {
            flotilla_args: args.collect(),
        }),
        "test" => parse_test(args),
        "contract" => match args.next() {
            None => Ok(Task::Contract),
            Some(help) if help == "--help" || help == "-h" => Ok(Task::Help),
            Some(option) => Err(FlagsError::UnknownOption {
                task: "contract",
                option,
            }),
        },
        "sdks" => match args.next() {
            None => Ok(Task::Sdks),
            Some(help) if help == "--help" || help == "-h" => Ok(Task::Help),
            Some(option) => Err(FlagsError::UnknownOption {
                task: "sdks",
                option,
            }),
        },
        "tidy" => match args.next() {
            None => Ok(Task::Tidy),
            Some(help) if help == "--help" || help == "-h" => Ok(Task::Help),
            Some(option) => Err(FlagsError::UnknownOption {
                task: "tidy",
                option,
            }),
        },
        _ => Err(FlagsError::UnknownTask(task)),
    }
}

fn parse_test(mut args: impl Iterator<Item = String>) -> Result<Task, FlagsError> {
    let mut test_options = TestOptions::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" => {
                test_options.test_args = args.collect();
                break;
            }
            "--skip-lints" => test_options.skip_lints = true,
            "-p" | "--package" => match args.next() {
                Some(package) => test_options.packages.push(package),
                None => return Err(FlagsError::MissingValue { option: arg }),
            },
            "--help" | "-h" => return Ok(Task::Help),
            _ => {
                if let Some(package) = arg.strip_prefix("--package=") {
                    test_options.packages.push(package.to_owned());
                } else {
                    return Err(FlagsError::UnknownOption {
                        task: "test",
                        option: arg,
                    });
                }
            }
        }
    }
    Ok(Task::Test(test_options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &str) -> Result<Task, FlagsError> {
        parse(words.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn dev_passes_everything_on_to_flotilla() {
        assert_eq!(
            parse_words("dev --help --data-dir /tmp/x"),
            Ok(Task::Dev {
                flotilla_args: vec!["--help".into(), "--data-dir".into(), "/tmp/x".into()]
            })
        );
    }

    #[test]
    fn test_options_and_test_binary_args() {
        assert_eq!(
            parse_words("test --skip-lints -p xtask --package=cli -- --test-threads 1"),
            Ok(Task::Test(TestOptions {
                skip_lints: true,
                packages: vec!["xtask".into(), "cli".into()],
                test_args: vec!["--test-threads".into(), "1".into()],
            }))
        );
        assert_eq!(parse_words("test"), Ok(Task::Test(TestOptions::default())));
        assert_eq!(parse_words("sdks"), Ok(Task::Sdks));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert_eq!(parse_words(""), Err(FlagsError::MissingTask));
        assert_eq!(
            parse_words("build"),
            Err(FlagsError::UnknownTask("build".into()))
        );
        assert_eq!(
            parse_words("test --nocapture"),
            Err(FlagsError::UnknownOption {
                task: "test",
                option: "--nocapture".into()
            })
        );
        assert_eq!(
            parse_words("test -p"),
            Err(FlagsError::MissingValue {
                option: "-p".into()
            })
        );
        assert_eq!(
            parse_words("tidy extra"),
            Err(FlagsError::UnknownOption {
                task: "tidy",
                option: "extra".into()
            })
        );
    }

    #[test]
    fn help_everywhere() {
        for words in [
            "help",
            "--help",
            "-h",
            "test --help",
            "sdks --help",
            "tidy -h",
        ] {
            assert_eq!(parse_words(words), Ok(Task::Help), "{words}");
        }
    }
}
