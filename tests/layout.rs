//! The source layout keeps imports running one way: no cycle between the crate's top-level
//! modules, and `config` and `metrics` stay leaves that import no other module of the crate
//! (everything else is built from them). Reads `src/` and fails naming the files and lines
//! that close a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → (imported module → where).
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/upstream/pool/h1.rs` → `upstream`); `None`
/// for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_string()),
    }
}

/// Every `crate::name` a line of code (not a comment) mentions.
fn imports(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let code = code.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .filter(|(at, _)| {
            // `twilio_sidecar::crate::` cannot occur; skip identifiers that merely end in "crate".
            *at == 0
                || !code.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && code.as_bytes()[at - 1] != b'_'
        })
        .filter_map(|(at, m)| {
            let rest = &code[at + m.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let node = graph.entry(module.clone()).or_default();
        for (n, line) in text.lines().enumerate() {
            for target in imports(line) {
                if target != module {
                    node.entry(target).or_default().push(format!(
                        "{}:{}",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &Graph, start: &str) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(node).map(|m| m.keys()).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if visit(graph, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    visit(graph, start, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn top_level_modules_import_one_way() {
    let graph = graph();
    assert!(
        graph.contains_key("proxy") && graph.contains_key("config"),
        "{graph:?}"
    );
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            let edges: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} at {:?}", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!("import cycle {}:\n{}", cycle.join(" -> "), edges.join("\n"));
        }
    }
}

#[test]
fn config_and_metrics_are_leaves() {
    let graph = graph();
    for leaf in ["config", "metrics"] {
        let out = &graph[leaf];
        assert!(out.is_empty(), "{leaf} imports {out:?}");
    }
}

#[test]
fn the_checker_sees_imports_and_ignores_comments() {
    assert_eq!(imports("use crate::gate::Gate;"), ["gate"]);
    assert_eq!(
        imports("let x = crate::upstream::tls::connector(crate::config::X);"),
        ["upstream", "config"]
    );
    assert!(imports("//! See [`crate::proxy`].").is_empty());
    assert!(imports("let y = 1; // crate::proxy").is_empty());
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into(), vec![]);
    g.entry("b".into()).or_default().insert("a".into(), vec![]);
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "a"]);
    g.get_mut("b").unwrap().clear();
    assert!(cycle_from(&g, "a").is_none());
}
