//! The workspace as the tidy checks see it: every `.rs` file with its crate, whether it is
//! test code, and its code with comments and literals blanked out, so that a check looking
//! for `todo!(` or `crate::` is not fooled by a comment or a string.
//!
//! Test code is found by a heuristic, good enough for this code base: a line that is
//! exactly `#[cfg(test)]` at column 0, followed (after any other attribute lines) by a
//! `mod` line. An inline `mod tests {` makes everything from there to the end of the file
//! test code; an out-of-line `mod tests;` (with or without `#[path = "..."]`) makes the
//! file it names, and every module that file declares, a test module. Files under a
//! crate's `tests/` directory are integration tests.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Directories never walked: build output and other tools' trees. Hidden directories
/// (`.git`, `.cargo`) are skipped too. xtask keeps no test data on disk (its own tests
/// build their examples in memory), so nothing of its needs skipping.
const SKIPPED_DIRS: &[&str] = &["target", "node_modules"];

/// Why the workspace could not be read.
#[derive(Debug)]
pub enum SourceError {
    ReadDir { path: PathBuf, source: io::Error },
    ReadFile { path: PathBuf, source: io::Error },
}

impl fmt::Display for SourceError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::ReadDir { path, .. } => {
                write!(formatter, "could not list {}", path.display())
            }
            SourceError::ReadFile { path, .. } => {
                write!(formatter, "could not read {}", path.display())
            }
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SourceError::ReadDir { source, .. } | SourceError::ReadFile { source, .. } => {
                Some(source)
            }
        }
    }
}

/// One `.rs` file.
pub struct SourceFile {
    /// From the workspace root, `/`-separated.
    pub path: String,
    pub text: String,
    /// `text` with comments, string and char literals replaced by spaces (lines kept).
    pub code: String,
    /// The directory of the nearest `Cargo.toml` above the file ("" for the root).
    pub crate_dir: String,
    /// Under its crate's `tests/` directory.
    pub integration_test: bool,
    /// Declared as `#[cfg(test)] mod x;` somewhere (or inside such a module).
    pub test_module: bool,
    /// The 0-based line where an inline `#[cfg(test)] mod ... {` starts, if any.
    pub test_code_start: Option<usize>,
}

impl SourceFile {
    /// A file at `path` (from the root) in the crate at `crate_dir`; `test_module` is left
    /// false, since only the files that declare modules can tell.
    pub fn new(path: String, crate_dir: String, text: String) -> SourceFile {
        let code = blank_comments_and_literals(&text);
        let test_code_start = test_module_declarations(&code)
            .iter()
            .find(|declaration| declaration.inline)
            .map(|declaration| declaration.line);
        let mut file = SourceFile {
            path,
            text,
            code,
            crate_dir,
            integration_test: false,
            test_module: false,
            test_code_start,
        };
        file.integration_test = file.path_in_crate().starts_with("tests/");
        file
    }

    /// The lines of `code` that are not inside an inline test module, numbered from 1.
    pub fn non_test_code_lines(&self) -> impl Iterator<Item = (usize, &str)> {
        let end = self.test_code_start.unwrap_or(usize::MAX);
        self.code
            .lines()
            .enumerate()
            .take_while(move |(index, _)| *index < end)
            .map(|(index, line)| (index + 1, line))
    }

    /// The path inside its crate (`src/a/b.rs`).
    pub fn path_in_crate(&self) -> &str {
        if self.crate_dir.is_empty() {
            &self.path
        } else {
            &self.path[self.crate_dir.len() + 1..]
        }
    }
}

pub struct Workspace {
    /// As written in the root Cargo.toml's `members`.
    pub members: Vec<String>,
    /// Every directory at the root except hidden ones and the skipped ones.
    pub top_level_dirs: Vec<String>,
    pub files: Vec<SourceFile>,
    pub architecture_md: String,
}

/// Reads the workspace at `root`.
pub fn load(root: &Path) -> Result<Workspace, SourceError> {
    let mut rust_files = Vec::new();
    let mut manifest_dirs = HashSet::new();
    walk(root, "", &mut rust_files, &mut manifest_dirs)?;
    rust_files.sort();

    let mut files = Vec::new();
    for path in rust_files {
        let text = match fs::read_to_string(root.join(&path)) {
            Ok(text) => text,
            // Moved away since the directory was listed (someone is restructuring).
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SourceError::ReadFile {
                    path: root.join(&path),
                    source,
                })
            }
        };
        let crate_dir = nearest_manifest_dir(&path, &manifest_dirs);
        files.push(SourceFile::new(path, crate_dir, text));
    }
    mark_test_modules(&mut files);

    let manifest = read_optional(&root.join("Cargo.toml"))?;
    let mut top_level_dirs = Vec::new();
    for entry in read_dir(root)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) && !skipped_dir(&name) {
            top_level_dirs.push(name);
        }
    }
    top_level_dirs.sort();
    Ok(Workspace {
        members: workspace_members(&manifest),
        top_level_dirs,
        files,
        architecture_md: read_optional(&root.join("ARCHITECTURE.md"))?,
    })
}

fn skipped_dir(name: &str) -> bool {
    name.starts_with('.') || SKIPPED_DIRS.contains(&name)
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, SourceError> {
    let read_dir_error = |source| SourceError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::read_dir(dir)
        .map_err(read_dir_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_dir_error)
}

/// A file's text, or "" when it does not exist.
fn read_optional(path: &Path) -> Result<String, SourceError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(SourceError::ReadFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Collects `.rs` files and the directories holding a Cargo.toml, below `relative`.
fn walk(
    root: &Path,
    relative: &str,
    rust_files: &mut Vec<String>,
    manifest_dirs: &mut HashSet<String>,
) -> Result<(), SourceError> {
    let join = |name: &str| {
        if relative.is_empty() {
            name.to_owned()
        } else {
            format!("{relative}/{name}")
        }
    };
    for entry in read_dir(&root.join(relative))? {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Symbolic links are not followed: file_type does not look through them.
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() && !skipped_dir(&name) {
            walk(root, &join(&name), rust_files, manifest_dirs)?;
        } else if file_type.is_file() && name.ends_with(".rs") {
            rust_files.push(join(&name));
        } else if file_type.is_file() && name == "Cargo.toml" {
            manifest_dirs.insert(relative.to_owned());
        }
    }
    Ok(())
}

fn nearest_manifest_dir(path: &str, manifest_dirs: &HashSet<String>) -> String {
    let mut dir = path;
    while let Some(slash) = dir.rfind('/') {
        dir = &dir[..slash];
        if manifest_dirs.contains(dir) {
            return dir.to_owned();
        }
    }
    String::new()
}

/// The quoted names in the root manifest's `members = [...]`.
pub fn workspace_members(manifest: &str) -> Vec<String> {
    let Some(start) = manifest.find("members") else {
        return Vec::new();
    };
    let rest = &manifest[start..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    rest[open + 1..close]
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            let name = item.strip_prefix('"')?.strip_suffix('"')?;
            Some(name.to_owned())
        })
        .collect()
}

/// A `#[cfg(test)]` module declared at column 0.
#[derive(Debug, PartialEq, Eq)]
pub struct TestModuleDeclaration {
    /// 0-based line of the `#[cfg(test)]`.
    pub line: usize,
    pub name: String,
    /// `mod tests { ... }` rather than `mod tests;`.
    pub inline: bool,
    /// From `#[path = "..."]`.
    pub path_attribute: Option<String>,
}

/// The `#[cfg(test)] mod` declarations in a file's text or code (the blanked code keeps
/// the lines and attributes, but not the `#[path]` value, a string literal).
pub fn test_module_declarations(text: &str) -> Vec<TestModuleDeclaration> {
    let lines: Vec<&str> = text.lines().collect();
    let mut declarations = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        if lines[index].trim_end() != "#[cfg(test)]" {
            index += 1;
            continue;
        }
        let cfg_line = index;
        let mut path_attribute = None;
        index += 1;
        while index < lines.len() && lines[index].trim_start().starts_with("#[") {
            path_attribute = path_attribute.or_else(|| path_attribute_value(lines[index]));
            index += 1;
        }
        let Some(line) = lines.get(index).map(|line| line.trim()) else {
            break;
        };
        let after_visibility = line
            .strip_prefix("pub(crate) ")
            .or_else(|| line.strip_prefix("pub(super) "))
            .or_else(|| line.strip_prefix("pub "))
            .unwrap_or(line);
        if let Some(rest) = after_visibility.strip_prefix("mod ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let inline = !rest.trim_end().ends_with(';');
            declarations.push(TestModuleDeclaration {
                line: cfg_line,
                name,
                inline,
                path_attribute,
            });
            if inline {
                break;
            }
        }
    }
    declarations
}

fn path_attribute_value(line: &str) -> Option<String> {
    let rest = line
        .trim()
        .strip_prefix("#[path")?
        .trim_start()
        .strip_prefix('=')?;
    let rest = rest.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// Marks the files `#[cfg(test)] mod x;` declarations name, and what those declare.
pub fn mark_test_modules(files: &mut [SourceFile]) {
    let known: HashSet<String> = files.iter().map(|file| file.path.clone()).collect();
    let mut pending: Vec<String> = Vec::new();
    for file in files.iter() {
        for declaration in test_module_declarations(&file.text) {
            if !declaration.inline {
                pending.extend(module_file(&file.path, &declaration, &known));
            }
        }
    }
    let mut marked = HashSet::new();
    while let Some(path) = pending.pop() {
        if !marked.insert(path.clone()) {
            continue;
        }
        let Some(file) = files.iter().find(|file| file.path == path) else {
            continue;
        };
        // Every module a test module declares is test code too.
        for line in file.text.lines() {
            let line = line.trim();
            if let Some(name) = line
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            {
                let declaration = TestModuleDeclaration {
                    line: 0,
                    name: name.trim().to_owned(),
                    inline: false,
                    path_attribute: None,
                };
                pending.extend(module_file(&file.path, &declaration, &known));
            }
        }
    }
    for file in files.iter_mut() {
        file.test_module = marked.contains(&file.path);
    }
}

/// The file an out-of-line `mod` declaration in `declaring_file` loads, if it exists.
fn module_file(
    declaring_file: &str,
    declaration: &TestModuleDeclaration,
    known: &HashSet<String>,
) -> Option<String> {
    let (dir, file_name) = declaring_file
        .rsplit_once('/')
        .unwrap_or(("", declaring_file));
    let in_dir = |name: &str| {
        if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        }
    };
    // `#[path]` on a module declared in a file is relative to that file's directory.
    if let Some(path) = &declaration.path_attribute {
        let path = in_dir(path);
        return known.contains(&path).then_some(path);
    }
    let stem = file_name.trim_end_matches(".rs");
    let base = if matches!(file_name, "mod.rs" | "lib.rs" | "main.rs") {
        dir.to_owned()
    } else {
        in_dir(stem)
    };
    let name = &declaration.name;
    [format!("{base}/{name}.rs"), format!("{base}/{name}/mod.rs")]
        .into_iter()
        .map(|path| path.trim_start_matches('/').to_owned())
        .find(|path| known.contains(path))
}

/// `text` with comments, string literals (raw and byte ones too) and char literals
/// replaced by spaces; newlines are kept, so line numbers stay right. Lifetimes stay.
pub fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident_before =
        |index: usize| index > 0 && (chars[index - 1].is_alphanumeric() || chars[index - 1] == '_');
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let next = chars.get(index + 1).copied();
        let end = if c == '/' && next == Some('/') {
            chars[index..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |offset| index + offset)
        } else if c == '/' && next == Some('*') {
            block_comment_end(&chars, index)
        } else if c == '"' {
            string_end(&chars, index + 1)
        } else if c == 'r'
            && (!ident_before(index) || (chars[index - 1] == 'b' && !ident_before(index - 1)))
        {
            raw_string_end(&chars, index).unwrap_or(index)
        } else if c == '\'' && next == Some('\\') {
            chars[index + 2..]
                .iter()
                .skip(1)
                .position(|&c| c == '\'')
                .map_or(chars.len(), |offset| index + 4 + offset)
        } else if c == '\'' && chars.get(index + 2) == Some(&'\'') {
            index + 3
        } else {
            index
        };
        if end == index {
            code.push(c);
            index += 1;
        } else {
            code.extend(chars[index..end].iter().map(|&c| blank(c)));
            index = end;
        }
    }
    code
}

/// The index just past a (nested) block comment starting at `start`.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut index = start;
    while index + 1 < chars.len() {
        match (chars[index], chars[index + 1]) {
            ('/', '*') => {
                depth += 1;
                index += 2;
            }
            ('*', '/') => {
                depth -= 1;
                index += 2;
                if depth == 0 {
                    return index;
                }
            }
            _ => index += 1,
        }
    }
    chars.len()
}

/// The index just past the closing quote of a string whose contents start at `start`.
fn string_end(chars: &[char], start: usize) -> usize {
    let mut index = start;
    while index < chars.len() {
        match chars[index] {
            '\\' => index += 2,
            '"' => return index + 1,
            _ => index += 1,
        }
    }
    chars.len()
}

/// For `r"..."` / `r#"..."#` at `start`, the index just past it; `None` for `r#ident`
/// and plain identifiers starting with r.
fn raw_string_end(chars: &[char], start: usize) -> Option<usize> {
    let hashes = chars[start + 1..].iter().take_while(|&&c| c == '#').count();
    let quote = start + 1 + hashes;
    if chars.get(quote) != Some(&'"') {
        return None;
    }
    let mut index = quote + 1;
    while index < chars.len() {
        if chars[index] == '"'
            && chars[index + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(index + 1 + hashes);
        }
        index += 1;
    }
    Some(chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_literals_are_blanked_lines_kept() {
        let text = "let a = \"crate::x\"; // crate::y\n\
                    /* crate::z /* nested */ still */ let b = 'c';\n\
                    let c = r#\"crate::\"w\"#; fn f<'a>(x: &'a str) -> char { '\\'' }\n\
                    let d = br\"q\"; let r#type = crate::real;\n";
        let code = blank_comments_and_literals(text);
        assert_eq!(code.lines().count(), text.lines().count());
        assert!(!code.contains("crate::x") && !code.contains("crate::y"));
        assert!(!code.contains("crate::z") && !code.contains("still"));
        assert!(!code.contains("crate::\"w") && !code.contains('q'));
        assert!(code.contains("fn f<'a>(x: &'a str)"));
        assert!(code.contains("let r#type = crate::real;"));
        assert!(code.contains("let b =    ;"));
    }

    #[test]
    fn test_modules_are_found() {
        let text = "fn a() {}\n#[cfg(test)]\n#[path = \"a_tests.rs\"]\nmod tests;\n\
                    #[cfg(test)]\nfn helper() {}\n#[cfg(test)]\nmod inline {\n}\n";
        assert_eq!(
            test_module_declarations(text),
            vec![
                TestModuleDeclaration {
                    line: 1,
                    name: "tests".into(),
                    inline: false,
                    path_attribute: Some("a_tests.rs".into()),
                },
                TestModuleDeclaration {
                    line: 6,
                    name: "inline".into(),
                    inline: true,
                    path_attribute: None,
                },
            ]
        );
    }

    #[test]
    fn test_module_files_are_resolved() {
        let known: HashSet<String> = [
            "c/src/fleet/engine_tests.rs",
            "c/src/a/tests.rs",
            "c/src/tests/mod.rs",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let declaration = |name: &str, path: Option<&str>| TestModuleDeclaration {
            line: 0,
            name: name.into(),
            inline: false,
            path_attribute: path.map(str::to_owned),
        };
        let engine = declaration("tests", Some("engine_tests.rs"));
        assert_eq!(
            module_file("c/src/fleet/engine.rs", &engine, &known).as_deref(),
            Some("c/src/fleet/engine_tests.rs")
        );
        let tests = declaration("tests", None);
        assert_eq!(
            module_file("c/src/a.rs", &tests, &known).as_deref(),
            Some("c/src/a/tests.rs")
        );
        assert_eq!(
            module_file("c/src/lib.rs", &tests, &known).as_deref(),
            Some("c/src/tests/mod.rs")
        );
    }

    #[test]
    fn members_are_read_from_the_manifest() {
        let manifest =
            "[workspace]\nresolver = \"2\"\nmembers = [\n    \"cli\",\n    \"xtask\",\n]\n";
        assert_eq!(workspace_members(manifest), vec!["cli", "xtask"]);
    }
}
