//! The workspace's shape, checked by tests: no import circle between the top-level modules of
//! any crate, and no source file over [`MAX_LINES`] lines outside tests. A circle means two
//! modules cannot be read, tested or moved apart; a long file cannot be read in one sitting.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The longest source file accepted outside tests (the style brief aims at ~600).
const MAX_LINES: usize = 650;

/// Every crate's `src/` in the workspace (and the eBPF crate it excludes).
fn source_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if !path.is_dir() || name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.join("Cargo.toml").is_file() && path.join("src").is_dir() {
                dirs.push(path.join("src"));
            }
            if path.components().count() - root.components().count() < 2 {
                pending.push(path);
            }
        }
    }
    dirs.sort();
    dirs
}

/// Whether `path` holds only tests: `tests.rs`, `*_tests.rs`, or anything under a `tests/`.
fn is_test_file(path: &Path) -> bool {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    name.as_deref() == Some("tests")
        || name.is_some_and(|n| n.ends_with("_tests"))
        || path.components().any(|c| c.as_os_str() == "tests")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A file's code without its inline `#[cfg(test)] mod … { … }` block (always last in a file).
fn without_inline_tests(text: &str) -> &str {
    let mut at = 0;
    while let Some(found) = text[at..].find("#[cfg(test)]") {
        let start = at + found;
        let rest = text[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") && rest.lines().next().is_some_and(|l| l.ends_with('{')) {
            return &text[..start];
        }
        at = start + 1;
    }
    text
}

/// The top-level modules `code` names through `crate::…` (in `use` lines and paths alike,
/// `crate::{a, b::c}` included); comments are skipped.
fn crate_references(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `marrow_crate::` and the like
            }
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names of a group: split at commas outside nested braces.
                let mut depth = 0;
                let mut name = String::new();
                let mut names = Vec::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => names.push(std::mem::take(&mut name)),
                        _ => name.push(c),
                    }
                }
                names.push(name);
                for name in names {
                    let head: String = name
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    found.push((n + 1, head));
                }
            } else {
                let head: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push((n + 1, head));
            }
        }
    }
    found
}

/// For one crate: each top-level module's edges to the others, with where each is made.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let files = rust_files(src);
    let module_of = |file: &Path| -> Option<String> {
        let relative = file.strip_prefix(src).ok()?;
        let first = relative.components().next()?.as_os_str().to_string_lossy();
        let name = first.trim_end_matches(".rs").to_owned();
        (name != "lib" && name != "main").then_some(name)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        if is_test_file(file) {
            continue;
        }
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for (line, target) in crate_references(without_inline_tests(&text)) {
            if target != module && modules.contains(&target) {
                graph
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| format!("{}:{line}", file.display()));
            }
        }
    }
    graph
}

/// A circle in `graph`, as the modules along it with where each edge is made; `None` if none.
fn find_circle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle: Vec<String> = Vec::new();
            let members = &path[at..];
            for (i, from) in members.iter().enumerate() {
                let to = members.get(i + 1).map_or(node, String::as_str);
                let site = graph
                    .get(from)
                    .and_then(|e| e.get(to))
                    .map_or("", String::as_str);
                circle.push(format!("{from} -> {to} ({site})"));
            }
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits in the workspace")
            .to_path_buf()
    }

    #[test]
    fn no_crate_has_an_import_circle_between_its_modules() {
        let dirs = source_dirs(&root());
        assert!(
            dirs.iter().any(|d| d.ends_with("node-proxy/src")),
            "{dirs:?}"
        );
        let mut circles = Vec::new();
        for src in dirs {
            if let Some(circle) = find_circle(&module_graph(&src)) {
                circles.push(format!("{}:\n  {}", src.display(), circle.join("\n  ")));
            }
        }
        assert!(
            circles.is_empty(),
            "import circles:\n{}",
            circles.join("\n")
        );
    }

    #[test]
    fn no_source_file_outside_tests_is_too_long_to_read() {
        let mut long = Vec::new();
        for src in source_dirs(&root()) {
            for file in rust_files(&src) {
                if is_test_file(&file) {
                    continue;
                }
                let text = fs::read_to_string(&file).unwrap_or_default();
                let lines = without_inline_tests(&text).lines().count();
                if lines > MAX_LINES {
                    long.push(format!("{} ({lines} lines)", file.display()));
                }
            }
        }
        assert!(
            long.is_empty(),
            "over {MAX_LINES} lines:\n{}",
            long.join("\n")
        );
    }

    #[test]
    fn a_circle_is_found_and_named_and_a_tree_passes() {
        let edge = |pairs: &[(&str, &str)]| {
            let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for (from, to) in pairs {
                graph
                    .entry(from.to_string())
                    .or_default()
                    .insert(to.to_string(), format!("{from}.rs:1"));
            }
            graph
        };
        let circle = find_circle(&edge(&[("a", "b"), ("b", "c"), ("c", "a"), ("a", "d")]));
        assert_eq!(
            circle,
            Some(vec![
                "a -> b (a.rs:1)".to_owned(),
                "b -> c (b.rs:1)".to_owned(),
                "c -> a (c.rs:1)".to_owned()
            ])
        );
        assert_eq!(
            find_circle(&edge(&[("a", "b"), ("b", "c"), ("a", "c")])),
            None
        );
    }

    #[test]
    fn references_are_read_from_paths_and_groups_but_not_comments() {
        let code = "use crate::state::{A, B};\nuse crate::{policy::X, tls};\n// crate::admin\nlet x = crate::metrics::f();\nuse marrow_crate::nope;\n";
        let found: Vec<String> = crate_references(code).into_iter().map(|(_, m)| m).collect();
        assert_eq!(found, ["state", "policy", "tls", "metrics"]);
        let with_tests = "fn a() {}\n#[cfg(test)]\nmod tests {\n    use crate::admin;\n}\n";
        assert_eq!(without_inline_tests(with_tests), "fn a() {}\n");
    }
}
