//! Tidy: the house rules a compiler does not check, checked by tests over the whole
//! repository (the way rust-analyzer's `xtask/src/tidy.rs` does), so `cargo test`
//! fails when one is broken. `cargo xtask tidy` runs the same checks and prints each
//! problem.
//!
//! The checks: every `.rs` file is at most 800 lines (integration tests, under a crate's
//! `tests/`, are exempt) and opens with a `//!` doc comment; no `todo!(`,
//! `unimplemented!(` or reasonless `#[ignore]` in code; no `Result<_, String>` outside
//! test code and `main.rs`; every workspace member and top-level folder is named in
//! ARCHITECTURE.md as `` `name/` `` (a map of at most 20 KiB); no import circle among the
//! files of a crate. Code means comments and literals left out; test code is found as
//! `source.rs` describes.

mod imports;
mod source;

use std::fmt;
use std::path::Path;

pub use source::SourceError;
use source::{SourceFile, Workspace};

/// What broke a rule before the rule was checked: `(check, path)`. A check's test passes
/// while its problems are exactly these (a file may offend on several lines); a NEW
/// offender fails it, and so does an entry here that no longer offends, so this list
/// only shrinks. Empty since the house issue landed: every rule holds. An entry is a
/// debt with a reason next to it. `path` is from the repository root; `architecture`
/// entries name the folder.
const KNOWN_OFFENDERS: &[(&str, &str)] = &[];

/// The longest a non-test source file may be.
const MAX_LINES: usize = 800;

/// One tidy rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    FileLength,
    ModuleDoc,
    Todo,
    Ignore,
    ResultString,
    Architecture,
    ImportCircle,
}

impl Check {
    pub const ALL: [Check; 7] = [
        Check::FileLength,
        Check::ModuleDoc,
        Check::Todo,
        Check::Ignore,
        Check::ResultString,
        Check::Architecture,
        Check::ImportCircle,
    ];

    /// The name used in KNOWN_OFFENDERS.
    pub fn name(self) -> &'static str {
        match self {
            Check::FileLength => "file_length",
            Check::ModuleDoc => "module_doc",
            Check::Todo => "todo",
            Check::Ignore => "ignore",
            Check::ResultString => "result_string",
            Check::Architecture => "architecture",
            Check::ImportCircle => "import_circle",
        }
    }

    /// Everything in `workspace` that breaks this rule.
    pub fn problems(self, workspace: &Workspace) -> Vec<Problem> {
        match self {
            Check::Architecture => architecture_problems(workspace),
            Check::ImportCircle => import_circle_problems(&workspace.files),
            _ => workspace
                .files
                .iter()
                .flat_map(|file| self.file_problems(file))
                .collect(),
        }
    }

    fn file_problems(self, file: &SourceFile) -> Vec<Problem> {
        let problem = |line: Option<usize>, message: String| Problem {
            check: self,
            path: file.path.clone(),
            line,
            message,
        };
        let code_lines = || {
            file.code
                .lines()
                .enumerate()
                .map(|(index, line)| (index + 1, line))
        };
        match self {
            Check::FileLength => {
                let lines = file.text.lines().count();
                if lines > MAX_LINES && !file.integration_test {
                    vec![problem(
                        None,
                        format!(
                            "{lines} lines, over {MAX_LINES}; split it along a seam \
                             (a phase, a resource, a protocol)"
                        ),
                    )]
                } else {
                    Vec::new()
                }
            }
            Check::ModuleDoc => {
                let first = file.text.lines().find(|line| !line.trim().is_empty());
                if first.is_some_and(|line| line.starts_with("//!")) {
                    Vec::new()
                } else {
                    vec![problem(
                        Some(1),
                        "does not open with a `//!` comment saying why the module exists"
                            .to_owned(),
                    )]
                }
            }
            Check::Todo => code_lines()
                .filter_map(|(number, line)| {
                    let found = ["todo!(", "unimplemented!("]
                        .into_iter()
                        .find(|needle| line.contains(needle))?;
                    Some(problem(
                        Some(number),
                        format!("`{found}` left in; finish the code or return an error"),
                    ))
                })
                .collect(),
            Check::Ignore => code_lines()
                .filter(|(_, line)| ignores_without_reason(line))
                .map(|(number, _)| {
                    problem(
                        Some(number),
                        "`#[ignore]` without a reason; write `#[ignore = \"why\"]`, or let \
                         the test print `skipping: ...` when a prerequisite is missing"
                            .to_owned(),
                    )
                })
                .collect(),
            Check::ResultString => {
                let exempt = file.integration_test
                    || file.test_module
                    || file.path.rsplit('/').next() == Some("main.rs");
                if exempt {
                    return Vec::new();
                }
                file.non_test_code_lines()
                    .filter(|(_, line)| has_result_string(line))
                    .map(|(number, _)| {
                        problem(
                            Some(number),
                            "`Result<_, String>` outside tests and main; return a typed \
                             `<Subject>Error` (thiserror), one variant per failing step"
                                .to_owned(),
                        )
                    })
                    .collect()
            }
            Check::Architecture | Check::ImportCircle => Vec::new(),
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub check: Check,
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(formatter, "{}:{line}: ", self.path)?,
            None => write!(formatter, "{}: ", self.path)?,
        }
        write!(formatter, "{}: {}", self.check.name(), self.message)
    }
}

/// `#[ignore]` with nothing between `ignore` and `]` (`#[ignore = "why"]` is fine).
fn ignores_without_reason(line: &str) -> bool {
    line.match_indices("#[ignore")
        .any(|(start, needle)| line[start + needle.len()..].trim_start().starts_with(']'))
}

/// `grep 'Result<[^;]*, String>'` on one line.
fn has_result_string(line: &str) -> bool {
    line.match_indices("Result<").any(|(start, needle)| {
        let rest = &line[start + needle.len()..];
        let until_semicolon = rest.split(';').next().unwrap_or(rest);
        until_semicolon.contains(", String>")
    })
}

fn architecture_problems(workspace: &Workspace) -> Vec<Problem> {
    let mut names: Vec<&str> = workspace
        .members
        .iter()
        .chain(&workspace.top_level_dirs)
        .map(String::as_str)
        .collect();
    names.sort();
    names.dedup();
    let size = workspace.architecture_md.len();
    let too_long = (size > MAX_ARCHITECTURE_BYTES).then(|| Problem {
        check: Check::Architecture,
        path: "ARCHITECTURE.md".to_owned(),
        line: None,
        message: format!(
            "{size} bytes, over the map's {MAX_ARCHITECTURE_BYTES}: figures go to bench/README.md, history to the git log"
        ),
    });
    names
        .into_iter()
        .filter(|name| !workspace.architecture_md.contains(&format!("`{name}/`")))
        .map(|name| Problem {
            check: Check::Architecture,
            path: format!("{name}/"),
            line: None,
            message: format!(
                "not named in ARCHITECTURE.md; give `{name}/` its paragraph in the code map"
            ),
        })
        .chain(too_long)
        .collect()
}

/// The map stays a map: 20 KiB.
const MAX_ARCHITECTURE_BYTES: usize = 20 * 1024;

fn import_circle_problems(files: &[SourceFile]) -> Vec<Problem> {
    let mut crate_dirs: Vec<&str> = files.iter().map(|file| file.crate_dir.as_str()).collect();
    crate_dirs.sort();
    crate_dirs.dedup();
    let mut problems = Vec::new();
    for crate_dir in crate_dirs {
        let modules: Vec<imports::ModuleSource<'_>> = files
            .iter()
            .filter(|file| file.crate_dir == crate_dir && !file.test_module)
            .filter_map(|file| {
                let path_in_src = file.path_in_crate().strip_prefix("src/")?;
                if path_in_src.starts_with("bin/") {
                    return None;
                }
                Some(imports::ModuleSource {
                    file: &file.path,
                    module: imports::module_path_of(path_in_src)?,
                    code: file
                        .non_test_code_lines()
                        .map(|(_, line)| line)
                        .collect::<Vec<_>>()
                        .join("\n"),
                })
            })
            .collect();
        for circle in imports::import_circles(&modules) {
            for file in &circle.files {
                problems.push(Problem {
                    check: Check::ImportCircle,
                    path: file.clone(),
                    line: None,
                    message: format!(
                        "in an import circle: {}; move what these files share into a third \
                         module",
                        circle.walk
                    ),
                });
            }
        }
    }
    problems
}

/// A check's problems split by the allowlist.
pub struct Verdict<'a> {
    pub check: Check,
    pub new: Vec<&'a Problem>,
    pub known: Vec<&'a Problem>,
    /// Allowlisted paths that no longer offend.
    pub stale: Vec<&'a str>,
}

impl Verdict<'_> {
    pub fn passes(&self) -> bool {
        self.new.is_empty() && self.stale.is_empty()
    }

    /// What to fix, one line each.
    pub fn report(&self) -> String {
        let mut lines: Vec<String> = self.new.iter().map(|problem| problem.to_string()).collect();
        lines.extend(self.stale.iter().map(|path| {
            format!(
                "remove (\"{}\", \"{path}\") from KNOWN_OFFENDERS in xtask/src/tidy.rs: \
                 it no longer offends",
                self.check.name()
            )
        }));
        lines.join("\n")
    }
}

fn judge<'a>(check: Check, problems: &'a [Problem], allowlist: &'a [(&str, &str)]) -> Verdict<'a> {
    let allowed: Vec<&str> = allowlist
        .iter()
        .filter(|(name, _)| *name == check.name())
        .map(|(_, path)| *path)
        .collect();
    let (known, new) = problems
        .iter()
        .partition(|problem| allowed.contains(&problem.path.as_str()));
    let stale = allowed
        .into_iter()
        .filter(|path| !problems.iter().any(|problem| problem.path == *path))
        .collect();
    Verdict {
        check,
        new,
        known,
        stale,
    }
}

/// `cargo xtask tidy`: every known offender, then what needs doing (new problems, stale
/// allowlist entries), then a count; `Ok(true)` when nothing new offends and no allowlist
/// entry is stale.
pub fn run_command(workspace_root: &Path) -> Result<bool, SourceError> {
    let workspace = source::load(workspace_root)?;
    let (mut new, mut known, mut stale) = (0, 0, 0);
    let mut to_do = Vec::new();
    for check in Check::ALL {
        let problems = check.problems(&workspace);
        let verdict = judge(check, &problems, KNOWN_OFFENDERS);
        for problem in &verdict.known {
            println!("{problem} (known offender)");
        }
        if !verdict.passes() {
            to_do.push(verdict.report());
        }
        new += verdict.new.len();
        known += verdict.known.len();
        stale += verdict.stale.len();
    }
    for report in &to_do {
        println!("{report}");
    }
    println!(
        "tidy: {new} new problems, {known} known (in KNOWN_OFFENDERS), {stale} stale allowlist \
         entries"
    );
    Ok(new == 0 && stale == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_tidy(check: Check) {
        let workspace =
            source::load(&crate::project::workspace_root()).expect("read the workspace's files");
        let problems = check.problems(&workspace);
        let verdict = judge(check, &problems, KNOWN_OFFENDERS);
        assert!(verdict.passes(), "\n{}\n", verdict.report());
    }

    #[test]
    fn files_are_at_most_800_lines() {
        assert_tidy(Check::FileLength);
    }

    #[test]
    fn files_open_with_a_module_doc() {
        assert_tidy(Check::ModuleDoc);
    }

    #[test]
    fn no_todo_or_unimplemented() {
        assert_tidy(Check::Todo);
    }

    #[test]
    fn no_ignore_without_a_reason() {
        assert_tidy(Check::Ignore);
    }

    #[test]
    fn no_result_string_outside_tests_and_main() {
        assert_tidy(Check::ResultString);
    }

    #[test]
    fn architecture_md_names_every_crate_and_folder() {
        assert_tidy(Check::Architecture);
    }

    #[test]
    fn no_import_circles() {
        assert_tidy(Check::ImportCircle);
    }

    #[test]
    fn known_offenders_name_real_checks_once() {
        for (index, (name, path)) in KNOWN_OFFENDERS.iter().enumerate() {
            assert!(
                Check::ALL.iter().any(|check| check.name() == *name),
                "KNOWN_OFFENDERS: no check is named {name:?}"
            );
            assert!(
                !KNOWN_OFFENDERS[..index].contains(&(name, path)),
                "KNOWN_OFFENDERS lists ({name:?}, {path:?}) twice"
            );
        }
    }

    fn example(path: &str, text: &str) -> SourceFile {
        let crate_dir = path.split_once('/').map_or("", |(dir, _)| dir);
        SourceFile::new(path.to_owned(), crate_dir.to_owned(), text.to_owned())
    }

    fn problem_lines(check: Check, file: &SourceFile) -> Vec<Option<usize>> {
        check
            .file_problems(file)
            .iter()
            .map(|problem| problem.line)
            .collect()
    }

    #[test]
    fn long_files_offend_unless_integration_tests() {
        let long = format!("//! doc\n{}", "fn f() {}\n".repeat(MAX_LINES));
        assert_eq!(
            problem_lines(Check::FileLength, &example("c/src/a.rs", &long)),
            vec![None]
        );
        assert!(problem_lines(Check::FileLength, &example("c/tests/a.rs", &long)).is_empty());
        // The `tests` crate's library is not an integration test.
        assert_eq!(
            problem_lines(Check::FileLength, &example("tests/src/lib.rs", &long)).len(),
            1
        );
    }

    #[test]
    fn module_doc_must_come_first() {
        let check = Check::ModuleDoc;
        assert!(problem_lines(check, &example("c/src/a.rs", "\n//! Why.\nfn f() {}\n")).is_empty());
        assert_eq!(
            problem_lines(check, &example("c/src/a.rs", "#![allow(x)]\n//! Why.\n")).len(),
            1
        );
        assert_eq!(
            problem_lines(check, &example("c/src/a.rs", "/// Item doc.\nfn f() {}\n")).len(),
            1
        );
        assert_eq!(problem_lines(check, &example("c/src/a.rs", "")).len(), 1);
    }

    #[test]
    fn todo_and_ignore_in_code_offend_not_in_comments() {
        let text = "//! Doc mentions todo!() freely.\nfn a() { todo!() }\n\
                    fn b() { let _ = \"unimplemented!()\"; }\nfn c() { unimplemented!(\"x\") }\n\
                    #[ignore]\nfn d() {}\n#[ignore = \"needs a GPU\"]\nfn e() {}\n#[ignore ]\n";
        let file = example("c/src/a.rs", text);
        assert_eq!(problem_lines(Check::Todo, &file), vec![Some(2), Some(4)]);
        assert_eq!(problem_lines(Check::Ignore, &file), vec![Some(5), Some(9)]);
    }

    #[test]
    fn result_string_outside_tests_and_main_offends() {
        let text = "//! Doc: Result<(), String> in a comment is fine.\n\
                    pub fn a() -> Result<Vec<u8>, String> { todo() }\n\
                    pub fn b() -> Result<(), Error>; // , String>\n\
                    type C = std::result::Result<u8, String>;\n\
                    #[cfg(test)]\nmod tests {\n    fn d() -> Result<(), String> { Ok(()) }\n}\n";
        let check = Check::ResultString;
        assert_eq!(
            problem_lines(check, &example("c/src/a.rs", text)),
            vec![Some(2), Some(4)]
        );
        assert!(problem_lines(check, &example("c/src/main.rs", text)).is_empty());
        assert!(problem_lines(check, &example("c/tests/a.rs", text)).is_empty());
        let mut test_module = example("c/src/a/tests.rs", text);
        test_module.test_module = true;
        assert!(problem_lines(check, &test_module).is_empty());
    }

    #[test]
    fn allowlist_only_shrinks() {
        let problem = |path: &str| Problem {
            check: Check::Todo,
            path: path.to_owned(),
            line: Some(1),
            message: String::new(),
        };
        let problems = [problem("a.rs"), problem("a.rs"), problem("b.rs")];
        let allowlist = [
            ("todo", "a.rs"),
            ("todo", "gone.rs"),
            ("file_length", "b.rs"),
        ];
        let verdict = judge(Check::Todo, &problems, &allowlist);
        assert_eq!(verdict.known.len(), 2);
        assert_eq!(verdict.new, vec![&problems[2]]);
        assert_eq!(verdict.stale, vec!["gone.rs"]);
        assert!(!verdict.passes());
        assert!(verdict
            .report()
            .contains("remove (\"todo\", \"gone.rs\") from KNOWN_OFFENDERS"));
        let clean = judge(Check::Todo, &problems[..2], &allowlist[..1]);
        assert!(clean.passes());
    }

    #[test]
    fn architecture_names_members_and_folders() {
        let workspace = Workspace {
            members: vec!["cli".into(), "xtask".into()],
            top_level_dirs: vec!["cli".into(), "bench".into()],
            files: Vec::new(),
            architecture_md: "### `cli/`\nThe CLI. `bench` is mentioned without a slash.".into(),
        };
        let paths: Vec<String> = architecture_problems(&workspace)
            .into_iter()
            .map(|problem| problem.path)
            .collect();
        assert_eq!(paths, vec!["bench/", "xtask/"]);
    }

    #[test]
    fn import_circles_are_reported_per_file_without_test_code() {
        let files = [
            example("c/src/lib.rs", "//! Root.\nmod a;\nmod b;\n"),
            example("c/src/a.rs", "//! A.\nuse crate::b::B;\n"),
            example(
                "c/src/b.rs",
                "//! B.\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
            ),
            example("d/src/lib.rs", "//! Root.\n"),
            example("d/src/a.rs", "//! A.\nuse crate::b::B;\n"),
            example("d/src/b.rs", "//! B.\npub use crate::a::A;\n"),
        ];
        let problems = import_circle_problems(&files);
        let paths: Vec<&str> = problems
            .iter()
            .map(|problem| problem.path.as_str())
            .collect();
        assert_eq!(paths, vec!["d/src/a.rs", "d/src/b.rs"]);
        assert!(problems[0]
            .message
            .contains("d/src/a.rs:2 → d/src/b.rs:2 → d/src/a.rs"));
    }
}
