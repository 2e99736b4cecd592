//! The shape rules of docs/ARCHITECTURE.md, checked on the source: imports
//! point down the layer table and close no cycle, no file is over 600
//! lines, and `unsafe` appears under src/spawn/ alone. (Functions over 80
//! lines are clippy's: clippy.toml.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `file` relative to the project, for messages.
fn rel(file: &Path) -> String {
    file.strip_prefix(root())
        .unwrap_or(file)
        .display()
        .to_string()
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The layer table: module name → layer (`None`: apart, which may import
/// `text` only).
fn layers() -> BTreeMap<String, Option<u32>> {
    let doc =
        fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | layer | `module` | ... |
        if cells.len() < 4 || !cells[2].starts_with('`') {
            continue;
        }
        let layer = match cells[1] {
            "apart" => None,
            n => match n.parse() {
                Ok(n) => Some(n),
                Err(_) => continue,
            },
        };
        out.insert(cells[2].trim_matches('`').to_string(), layer);
    }
    assert!(
        out.len() > 5,
        "no layer table found in docs/ARCHITECTURE.md"
    );
    out
}

/// The crate module a source file belongs to (`src/config/check.rs` →
/// `config`, `src/text.rs` → `text`, `src/lib.rs` → `crate`), or `None`
/// for the programs (`main.rs`, `bin/`), which use the library by name.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    match first.as_str() {
        "main.rs" | "bin" => None,
        "lib.rs" => Some("crate".into()),
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Code without comments: `//` to the end of the line (string contents are
/// left in, which is harmless for the patterns looked for here).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| match l.find("//") {
        Some(i) => &l[..i],
        None => l,
    })
}

/// The part of a file that is not unit tests: up to its `#[cfg(test)]`
/// module; nothing of a `tests.rs` file or of a `tests/` folder's files.
/// Tests may build their fixtures from any layer.
fn non_test_code(file: &Path, text: &str) -> String {
    let inside = file.strip_prefix(root().join("src")).unwrap_or(file);
    let in_tests = inside.components().any(|c| c.as_os_str() == "tests")
        || file.file_name().is_some_and(|n| n == "tests.rs");
    if in_tests {
        return String::new();
    }
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// The crate modules a file names through `crate::X`, including inside
/// `use crate::{a, b::c}`.
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = code_lines(text).collect::<Vec<_>>().join("\n");
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The first identifier of each top-level item of the group.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(after));
        }
        rest = after;
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

#[test]
fn imports_point_down_the_layer_table() {
    let src = root().join("src");
    let table = layers();
    let mut problems = Vec::new();
    for file in rust_files(&src) {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = non_test_code(&file, &fs::read_to_string(&file).expect("read"));
        let from = if module == "crate" {
            Some(u32::MAX)
        } else {
            match table.get(&module) {
                Some(l) => *l,
                None => {
                    problems.push(format!(
                        "{}: module `{module}` is not in the layer table",
                        rel(&file)
                    ));
                    continue;
                }
            }
        };
        for to in imports(&text) {
            if to == module {
                continue;
            }
            let allowed = match (from, table.get(&to)) {
                (_, None) => {
                    problems.push(format!(
                        "{}: imports `{to}`, which is not in the layer table",
                        rel(&file)
                    ));
                    continue;
                }
                // A module apart may use `text` alone.
                (None, _) => to == "text",
                (Some(_), Some(None)) => false,
                (Some(f), Some(Some(t))) => *t < f,
            };
            if !allowed {
                problems.push(format!(
                    "{}: `{module}` (layer {}) imports `{to}` (layer {})",
                    rel(&file),
                    from.map_or("apart".into(), |l| if l == u32::MAX {
                        "root".into()
                    } else {
                        l.to_string()
                    }),
                    table[&to].map_or("apart".into(), |l| l.to_string()),
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports against docs/ARCHITECTURE.md:\n{}",
        problems.join("\n")
    );
}

/// Within one directory module, the files' uses of each other
/// (`super::x`, `crate::m::x`) form no cycle.
#[test]
fn no_import_cycle_inside_a_module() {
    let src = root().join("src");
    for dir in fs::read_dir(&src)
        .expect("src")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
    {
        let module = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let files: BTreeMap<String, String> = rust_files(&dir)
            .into_iter()
            .filter(|f| f.parent() == Some(dir.as_path()))
            .map(|f| {
                let name = f.file_stem().expect("stem").to_string_lossy().into_owned();
                (name, fs::read_to_string(&f).expect("read"))
            })
            .collect();
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (name, text) in &files {
            if name == "mod" || name == "tests" {
                continue;
            }
            let code: String = code_lines(&non_test_code(Path::new(name), text))
                .collect::<Vec<_>>()
                .join("\n");
            for other in files
                .keys()
                .filter(|o| *o != name && *o != "mod" && *o != "tests")
            {
                let uses = code.contains(&format!("super::{other}"))
                    || code.contains(&format!("crate::{module}::{other}"));
                if uses {
                    edges.entry(name).or_default().insert(other);
                }
            }
        }
        // Depth-first search for a back edge.
        fn visit<'a>(
            n: &'a str,
            edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<&'a str>> {
            if let Some(i) = path.iter().position(|p| *p == n) {
                let mut cycle = path[i..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            if !done.insert(n) {
                return None;
            }
            path.push(n);
            for m in edges.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, edges, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for n in edges.keys() {
            if let Some(cycle) = visit(n, &edges, &mut Vec::new(), &mut done) {
                panic!("src/{module}/: import cycle {}", cycle.join(" -> "));
            }
        }
    }
}

#[test]
fn no_source_file_is_over_600_lines() {
    let long: Vec<String> = rust_files(&root().join("src"))
        .into_iter()
        .filter_map(|f| {
            let n = fs::read_to_string(&f).expect("read").lines().count();
            (n > MAX_FILE_LINES).then(|| format!("{}: {n} lines", rel(&f)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn unsafe_code_is_in_the_spawn_module_only() {
    let src = root().join("src");
    let spawn = src.join("spawn");
    let found: Vec<String> = rust_files(&src)
        .into_iter()
        .filter(|f| !f.starts_with(&spawn))
        .flat_map(|f| {
            let text = fs::read_to_string(&f).expect("read");
            code_lines(&text)
                .enumerate()
                .filter(|(_, l)| {
                    l.contains("unsafe ")
                        || l.contains("unsafe{")
                        || l.contains("allow(unsafe_code)")
                })
                .map(|(i, l)| format!("{}:{}: {}", rel(&f), i + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        found.is_empty(),
        "unsafe outside src/spawn/:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_import_reader_sees_grouped_and_plain_paths() {
    let text = "use crate::text::escape;\nuse crate::{plan::{Level, Plan}, log};\n// crate::config in a comment\nfn f() { crate::spawn::spawn(); }\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["log", "plan", "spawn", "text"]);
}
