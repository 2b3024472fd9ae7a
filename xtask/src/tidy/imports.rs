//! Import circles among the files of a crate: which module files name which (through
//! `use crate::…`, `use super::…`, `pub use`, and `crate::…` / `super::…` paths in code),
//! and the strongly connected components of that graph (Tarjan).
//!
//! A module's file comes from its path: `src/lib.rs` or `src/main.rs` is the root,
//! `src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is `a::b` (`#[path]` is not read).
//! A path names the longest prefix of it that is a module with a file, so
//! `crate::a::b::Item` names `a::b` when `src/a/b.rs` exists and `a` otherwise.
//! Edges between a module and its own ancestors or descendants are left out (a child may
//! `use super::X`, a parent re-exports its children); every other edge counts. `super`
//! is taken relative to the file's module, so inside an inline module it is off by one
//! level, which at worst hides an edge. `self::` paths always point down and are skipped.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// A module by its path from the crate root; the root is `[]`.
pub type ModulePath = Vec<String>;

/// One module file and the part of its code that is not test code.
pub struct ModuleSource<'a> {
    pub file: &'a str,
    pub module: ModulePath,
    /// Comments and literals blanked, test modules cut off.
    pub code: String,
}

/// A file of `src/` as a module path: `a/b.rs` → `a::b`, `a/mod.rs` → `a`, `lib.rs` → root.
pub fn module_path_of(path_in_src: &str) -> Option<ModulePath> {
    let without_extension = path_in_src.strip_suffix(".rs")?;
    let mut segments: Vec<String> = without_extension.split('/').map(str::to_owned).collect();
    if segments.len() == 1 && (segments[0] == "lib" || segments[0] == "main") {
        return Some(Vec::new());
    }
    if segments.last().is_some_and(|last| last == "mod") {
        segments.pop();
    }
    Some(segments)
}

/// A circle: the files of one strongly connected component, and one walk around it.
#[derive(Debug, PartialEq, Eq)]
pub struct ImportCircle {
    pub files: Vec<String>,
    /// `a.rs:3 → b.rs:7 → a.rs`: each file with the line where it names the next.
    pub walk: String,
}

/// Every import circle among `modules`.
pub fn import_circles(modules: &[ModuleSource<'_>]) -> Vec<ImportCircle> {
    let edges = import_edges(modules);
    let mut successors: Vec<Vec<usize>> = vec![Vec::new(); modules.len()];
    for &(from, to) in edges.keys() {
        successors[from].push(to);
    }
    strongly_connected_components(&successors)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let mut files: Vec<String> = component
                .iter()
                .map(|&node| modules[node].file.to_owned())
                .collect();
            files.sort();
            let walk = describe_walk(modules, &successors, &edges, &component);
            ImportCircle { files, walk }
        })
        .collect()
}

/// `(from, to)` → the first line where module `from` names module `to`.
fn import_edges(modules: &[ModuleSource<'_>]) -> BTreeMap<(usize, usize), usize> {
    let by_path: HashMap<&ModulePath, usize> = modules
        .iter()
        .enumerate()
        .map(|(index, module)| (&module.module, index))
        .collect();
    let mut edges = BTreeMap::new();
    for (from, module) in modules.iter().enumerate() {
        for (line, path) in referenced_paths(&module.code, &module.module) {
            let Some(to) = (0..=path.len())
                .rev()
                .find_map(|length| by_path.get(&path[..length].to_vec()).copied())
            else {
                continue;
            };
            let target = &modules[to].module;
            let related = target.starts_with(&module.module) || module.module.starts_with(target);
            if !related {
                edges.entry((from, to)).or_insert(line);
            }
        }
    }
    edges
}

/// One shortest walk from the component's first file around and back, for the message.
fn describe_walk(
    modules: &[ModuleSource<'_>],
    successors: &[Vec<usize>],
    edges: &BTreeMap<(usize, usize), usize>,
    component: &[usize],
) -> String {
    let start = *component
        .iter()
        .min_by_key(|&&node| modules[node].file)
        .expect("a component has a node");
    // Breadth-first search inside the component for the shortest way back to `start`.
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = None;
    'search: while let Some(node) = queue.pop_front() {
        for &next in &successors[node] {
            if !component.contains(&next) {
                continue;
            }
            if next == start {
                last = Some(node);
                break 'search;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = came_from.entry(next) {
                entry.insert(node);
                queue.push_back(next);
            }
        }
    }
    let mut walk = vec![start];
    let mut node = last.expect("a component of two or more nodes has a cycle through each");
    while node != start {
        walk.push(node);
        node = came_from[&node];
    }
    walk[1..].reverse();
    walk.push(start);
    let mut description = String::new();
    for pair in walk.windows(2) {
        let line = edges[&(pair[0], pair[1])];
        description.push_str(&format!("{}:{line} → ", modules[pair[0]].file));
    }
    description.push_str(modules[start].file);
    description
}

/// Tarjan's algorithm: the strongly connected components of the graph, each a list of
/// nodes (single nodes included).
pub fn strongly_connected_components(successors: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct Tarjan<'a> {
        successors: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low_link: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next_index: usize,
        components: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, node: usize) {
            self.index[node] = Some(self.next_index);
            self.low_link[node] = self.next_index;
            self.next_index += 1;
            self.stack.push(node);
            self.on_stack[node] = true;
            for &next in &self.successors[node] {
                match self.index[next] {
                    None => {
                        self.visit(next);
                        self.low_link[node] = self.low_link[node].min(self.low_link[next]);
                    }
                    Some(next_index) if self.on_stack[next] => {
                        self.low_link[node] = self.low_link[node].min(next_index);
                    }
                    Some(_) => {}
                }
            }
            if Some(self.low_link[node]) == self.index[node] {
                let mut component = Vec::new();
                loop {
                    let member = self.stack.pop().expect("the node itself is on the stack");
                    self.on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                self.components.push(component);
            }
        }
    }
    let count = successors.len();
    let mut tarjan = Tarjan {
        successors,
        index: vec![None; count],
        low_link: vec![0; count],
        on_stack: vec![false; count],
        stack: Vec::new(),
        next_index: 0,
        components: Vec::new(),
    };
    for node in 0..count {
        if tarjan.index[node].is_none() {
            tarjan.visit(node);
        }
    }
    tarjan.components
}

/// Every `crate::…` and `super::…` path in `code` (use trees expanded), made absolute
/// from the crate root, with the line (from 1) where it starts.
pub fn referenced_paths(code: &str, current: &ModulePath) -> Vec<(usize, ModulePath)> {
    let chars: Vec<char> = code.chars().collect();
    let mut paths = Vec::new();
    let mut line = 1;
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c == '\n' {
            line += 1;
        }
        let starts_word = index == 0 || !is_path_char(chars[index - 1]);
        if !(starts_word && (c == 'c' || c == 's')) {
            index += 1;
            continue;
        }
        let mut cursor = Cursor {
            chars: &chars,
            index,
        };
        let word = cursor.ident();
        let prefix = match word.as_str() {
            "crate" => Some(Vec::new()),
            "super" => current.split_last().map(|(_, parent)| parent.to_vec()),
            _ => None,
        };
        match prefix {
            Some(mut prefix) if cursor.eat("::") => {
                // `super::super::x`: each further `super` climbs one more level.
                loop {
                    let save = cursor.index;
                    if cursor.ident() == "super" && cursor.eat("::") {
                        if prefix.pop().is_none() {
                            break;
                        }
                    } else {
                        cursor.index = save;
                        break;
                    }
                }
                let mut tree = Vec::new();
                cursor.use_tree(prefix, &mut tree);
                paths.extend(tree.into_iter().map(|path| (line, path)));
                line += chars[index..cursor.index]
                    .iter()
                    .filter(|&&c| c == '\n')
                    .count();
                index = cursor.index.max(index + 1);
            }
            _ => index += word.len().max(1),
        }
    }
    paths
}

fn is_path_char(c: char) -> bool {
    // `$crate` (macros) and `x::crate` are not path starts.
    c.is_alphanumeric() || c == '_' || c == '$' || c == ':'
}

struct Cursor<'a> {
    chars: &'a [char],
    index: usize,
}

impl Cursor<'_> {
    fn skip_whitespace(&mut self) {
        while self
            .chars
            .get(self.index)
            .is_some_and(|c| c.is_whitespace())
        {
            self.index += 1;
        }
    }

    fn ident(&mut self) -> String {
        self.skip_whitespace();
        let start = self.index;
        while self
            .chars
            .get(self.index)
            .is_some_and(|&c| c.is_alphanumeric() || c == '_')
        {
            self.index += 1;
        }
        self.chars[start..self.index].iter().collect()
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_whitespace();
        let matches = token
            .chars()
            .enumerate()
            .all(|(offset, c)| self.chars.get(self.index + offset) == Some(&c));
        if matches {
            self.index += token.chars().count();
        }
        matches
    }

    /// Reads what follows a `::`: a name, a `{...}` group or `*`, into `paths`.
    fn use_tree(&mut self, mut prefix: ModulePath, paths: &mut Vec<ModulePath>) {
        loop {
            if self.eat("{") {
                loop {
                    if self.eat("}") || self.index >= self.chars.len() {
                        return;
                    }
                    let item_start = self.index;
                    let save = self.index;
                    if self.ident() == "self" {
                        paths.push(prefix.clone());
                    } else {
                        self.index = save;
                        self.use_tree(prefix.clone(), paths);
                    }
                    let save = self.index;
                    if self.ident() == "as" {
                        self.ident();
                    } else {
                        self.index = save;
                    }
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") || self.index == item_start {
                        // The group's end, or something this reader does not know.
                        return;
                    }
                }
            }
            if self.eat("*") {
                paths.push(prefix);
                return;
            }
            let name = self.ident();
            if name.is_empty() {
                paths.push(prefix);
                return;
            }
            prefix.push(name);
            if !self.eat("::") {
                paths.push(prefix);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> ModulePath {
        text.split("::")
            .filter(|segment| !segment.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn module<'a>(file: &'a str, code: &str) -> ModuleSource<'a> {
        let path_in_src = file
            .split_once("src/")
            .expect("example files are in src/")
            .1;
        ModuleSource {
            file,
            module: module_path_of(path_in_src).expect("example files end in .rs"),
            code: code.to_owned(),
        }
    }

    #[test]
    fn module_paths_follow_files() {
        assert_eq!(module_path_of("lib.rs"), Some(path("")));
        assert_eq!(module_path_of("main.rs"), Some(path("")));
        assert_eq!(module_path_of("a.rs"), Some(path("a")));
        assert_eq!(module_path_of("a/mod.rs"), Some(path("a")));
        assert_eq!(module_path_of("a/b.rs"), Some(path("a::b")));
        assert_eq!(module_path_of("a/lib.rs"), Some(path("a::lib")));
        assert_eq!(module_path_of("README.md"), None);
    }

    #[test]
    fn use_trees_are_expanded() {
        let code = "use crate::{a, b::{c, d as e}, f::*};\n\
                    pub use super::g::{self, H};\n\
                    fn x() { crate::h::i::J::<u8>::new(); super::super::k(); $crate::m::n() }\n";
        let found: Vec<(usize, ModulePath)> = referenced_paths(code, &path("p::q"));
        assert_eq!(
            found,
            vec![
                (1, path("a")),
                (1, path("b::c")),
                (1, path("b::d")),
                (1, path("f")),
                (2, path("p::g")),
                (2, path("p::g::H")),
                (3, path("h::i::J")),
                (3, path("k")),
            ]
        );
    }

    #[test]
    fn multi_line_use_keeps_counting_lines() {
        let code = "use crate::{\n    a,\n    b,\n};\nuse crate::c;\n";
        let lines: Vec<usize> = referenced_paths(code, &path(""))
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        assert_eq!(lines, vec![1, 1, 5]);
    }

    #[test]
    fn a_sibling_circle_is_found() {
        let modules = [
            module("c/src/lib.rs", "mod agent; mod runtime; mod host;"),
            module("c/src/agent.rs", "use crate::runtime::Runtime;"),
            module("c/src/runtime.rs", "\n\nuse crate::host::probe;"),
            module("c/src/host.rs", "fn f() { crate::agent::Agent::new() }"),
        ];
        assert_eq!(
            import_circles(&modules),
            vec![ImportCircle {
                files: vec![
                    "c/src/agent.rs".into(),
                    "c/src/host.rs".into(),
                    "c/src/runtime.rs".into()
                ],
                walk: "c/src/agent.rs:1 → c/src/runtime.rs:3 → c/src/host.rs:1 → c/src/agent.rs"
                    .into(),
            }]
        );
    }

    #[test]
    fn parent_and_child_are_not_a_circle() {
        let modules = [
            module("c/src/lib.rs", "pub use crate::sandbox::Sandbox;"),
            module(
                "c/src/sandbox/mod.rs",
                "mod net; pub use crate::sandbox::net::Net;",
            ),
            module(
                "c/src/sandbox/net.rs",
                "use super::Sandbox; use crate::Error;",
            ),
        ];
        assert_eq!(import_circles(&modules), Vec::new());
    }

    #[test]
    fn a_circle_through_nested_siblings_is_found() {
        // a::x uses b, b uses a::x: the two files are not parent and child.
        let modules = [
            module("c/src/lib.rs", ""),
            module("c/src/a/mod.rs", "mod x;"),
            module("c/src/a/x.rs", "use super::super::b::B;"),
            module("c/src/b.rs", "use crate::a::x::X;"),
        ];
        let circles = import_circles(&modules);
        assert_eq!(circles.len(), 1);
        assert_eq!(circles[0].files, vec!["c/src/a/x.rs", "c/src/b.rs"]);
        assert_eq!(
            circles[0].walk,
            "c/src/a/x.rs:1 → c/src/b.rs:1 → c/src/a/x.rs"
        );
    }

    #[test]
    fn paths_name_the_longest_module_prefix_with_a_file() {
        // crate::a::helper is an item in a.rs; crate::b::c::D lives in b/c.rs.
        let modules = [
            module("c/src/lib.rs", ""),
            module("c/src/a.rs", "use crate::b::c::D;"),
            module("c/src/b/mod.rs", ""),
            module("c/src/b/c.rs", "fn f() { crate::a::helper() }"),
        ];
        assert_eq!(import_circles(&modules).len(), 1);
        let acyclic = [
            module("c/src/lib.rs", ""),
            module("c/src/a.rs", "use crate::b::c::D;"),
            module("c/src/b/mod.rs", "fn f() { crate::a::helper() }"),
            module("c/src/b/c.rs", ""),
        ];
        assert_eq!(import_circles(&acyclic), Vec::new());
    }

    #[test]
    fn tarjan_finds_components() {
        // 0 → 1 → 2 → 0, 2 → 3, 3 → 4 → 3, 5 alone.
        let successors = vec![vec![1], vec![2], vec![0, 3], vec![4], vec![3], vec![]];
        let mut components: Vec<Vec<usize>> = strongly_connected_components(&successors)
            .into_iter()
            .map(|mut component| {
                component.sort();
                component
            })
            .collect();
        components.sort();
        assert_eq!(components, vec![vec![0, 1, 2], vec![3, 4], vec![5]]);
    }
}
