//! The crate's modules depend one way: each top-level module of `src/` may import (`crate::…`)
//! only modules of a lower layer. A reviewer can then read `src/` bottom-up, and a change that
//! makes a low module reach up (config calling into lifecycle, http into aws) fails here with
//! the offending file and line. `cargo test --test layering -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top, in data-flow order. A module may import modules of lower layers only; two
/// modules of one layer never import each other.
const LAYERS: &[&[&str]] = &[
    &["alloc", "log", "text", "time", "secret", "files", "url", "retry", "pending", "supervise"],
    &["http"],
    &["cloud"],
    &["artifact", "kms"],
    &["decrypt"],
    &["config"],
    &["source", "snapshot", "bearer", "telemetry"],
    &["disk_cache"],
    &["refresh"],
    &["delivery"],
    &["server"],
    &["error"],
    &["agent"],
    &["lifecycle"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/refresh/state.rs` → `refresh`.
fn owner(relative: &Path) -> String {
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// Whether a file is test code only (a `tests.rs` or a file under a `tests/` folder).
fn is_test_file(relative: &Path) -> bool {
    relative.components().any(|part| part.as_os_str() == "tests" || part.as_os_str() == "tests.rs")
}

/// Every `crate::<module>` a text names, with the byte offset where it is named, including
/// `use crate::{a, b::{c, d}}` lists that rustfmt spreads over several lines.
fn imported_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(next) = text[at..].find("crate::") {
        at += next + "crate::".len();
        let rest = &text[at..];
        if let Some(list) = rest.strip_prefix('{') {
            // Top-level names of the list: skip nested `{…}` groups.
            let mut depth = 0;
            let mut item = String::new();
            for character in list.chars() {
                match character {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_name(&mut found, at, &item);
                        item.clear();
                    }
                    _ if depth == 0 => item.push(character),
                    _ => {}
                }
            }
            push_name(&mut found, at, &item);
        } else {
            push_name(&mut found, at, rest);
        }
    }
    found
}

fn push_name(found: &mut Vec<(usize, String)>, at: usize, path: &str) {
    let name: String = path.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    if !name.is_empty() {
        found.push((at, name));
    }
}

#[test]
fn every_module_imports_only_modules_of_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    let mut unplaced = BTreeSet::new();
    for path in &files {
        let relative = path.strip_prefix(&src).unwrap();
        let module = owner(relative);
        if module == "lib" || module == "main" || is_test_file(relative) {
            continue;
        }
        let Some(layer) = layer_of(&module) else {
            unplaced.insert(module);
            continue;
        };
        let text = fs::read_to_string(path).unwrap();
        // Unit tests at the end of a file may use anything.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        {
            for (offset, imported) in imported_modules(code) {
                let number = code[..offset].matches('\n').count();
                // `crate::VERSION` and other items of lib.rs belong to no layer.
                if imported == module || imported.starts_with(|c: char| c.is_ascii_uppercase()) {
                    continue;
                }
                graph.entry(module.clone()).or_default().insert(imported.clone());
                match layer_of(&imported) {
                    Some(imported_layer) if imported_layer < layer => {}
                    Some(_) => upward.push(format!(
                        "src/{}:{}: `{module}` imports `{imported}`, which is not below it",
                        relative.display(),
                        number + 1
                    )),
                    None => {
                        unplaced.insert(imported);
                    }
                }
            }
        }
    }
    for (module, imports) in &graph {
        println!("{module}: {}", imports.iter().cloned().collect::<Vec<_>>().join(" "));
    }
    assert!(unplaced.is_empty(), "modules missing from LAYERS in tests/layering.rs: {unplaced:?}");
    assert!(upward.is_empty(), "imports that run upward:\n{}", upward.join("\n"));
}

#[test]
fn the_import_reader_sees_lists_and_paths() {
    let names = |text: &str| imported_modules(text).into_iter().map(|(_, name)| name).collect::<Vec<_>>();
    assert_eq!(names("use crate::secret::Secret;"), ["secret"]);
    assert_eq!(names("use crate::{config::Mode, http::{self, Client}, log};"), ["config", "http", "log"]);
    assert_eq!(names("use crate::{\n    config::Mode,\n    http::{self, Client},\n};"), ["config", "http"]);
    assert_eq!(names("    let x = crate::time::now_ms() + crate::url::parse(y);"), ["time", "url"]);
    assert!(names("use super::Thing;").is_empty());
}
