//! The library's layering, read from its sources: which top-level module
//! names which (`crate::x` outside unit tests), no cycle between them, and
//! the data plane built from nothing but `wire` (docs/architecture.md,
//! "Who owns what").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("reading src") {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A source file's text without its unit tests: they may read fixtures
/// from anywhere; what ships may not.
fn shipped(text: &str) -> &str {
    text.split("#[cfg(test)]\nmod tests").next().unwrap()
}

/// `dataplane` of `dataplane/pipeline/mod.rs`, `api` of `api.rs`.
fn first_component(rel: &str) -> String {
    rel.split('/')
        .next()
        .unwrap()
        .trim_end_matches(".rs")
        .to_string()
}

/// The identifiers right after each `prefix` in `text`.
fn names_after<'t>(text: &'t str, prefix: &'t str) -> impl Iterator<Item = String> + 't {
    text.match_indices(prefix).map(move |(i, _)| {
        text[i + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    })
}

/// Top-level module → the top-level modules its shipped code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if ["lib.rs", "main.rs", "cli.rs"].contains(&rel.as_str()) || rel.ends_with("/tests.rs") {
            continue;
        }
        let top = first_component(&rel);
        let text = std::fs::read_to_string(&f).unwrap();
        let shipped = shipped(&text);
        let deps = g.entry(top.clone()).or_default();
        for name in names_after(shipped, "crate::") {
            if name != top && !name.is_empty() {
                deps.insert(name);
            }
        }
    }
    g
}

#[test]
fn modules_form_no_cycle_and_the_data_plane_stands_alone() {
    let g = graph();
    assert!(
        g.contains_key("dataplane") && g.contains_key("runtime"),
        "{g:?}"
    );
    assert_eq!(
        g["dataplane"].iter().collect::<Vec<_>>(),
        ["wire"],
        "the data plane imports configuration or control"
    );
    assert!(g["wire"].is_empty(), "wire imports {:?}", g["wire"]);
    assert_acyclic(&g, "the library's modules");
}

/// The runtime's parts: each file at `src/runtime/`'s root is one (`mod`
/// for `mod.rs`), each folder one → the parts its shipped code names
/// (`super::x` from the root, `crate::runtime::x` from anywhere).
fn runtime_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src/runtime");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let at_root = !rel.contains('/');
        let part = first_component(&rel);
        let text = std::fs::read_to_string(&f).unwrap();
        let shipped = shipped(&text);
        let mut named = BTreeSet::new();
        let mut paths = vec!["crate::runtime::"];
        if at_root {
            paths.push("super::");
            paths.push("self::");
        }
        for p in paths {
            for name in names_after(shipped, p) {
                // `super::{…}` or `super::Type` from a root file: the
                // runtime's own module.
                let name = if name.is_empty() || name.starts_with(|c: char| c.is_uppercase()) {
                    "mod".to_string()
                } else {
                    name
                };
                named.insert(name);
            }
        }
        named.remove(&part);
        g.entry(part).or_default().extend(named);
    }
    g
}

#[test]
fn the_runtime_parts_form_no_cycle_and_serve_and_swarm_stay_out_of_the_assembly() {
    let g = runtime_graph();
    for part in ["mod", "start", "control", "worker", "serve", "swarm"] {
        assert!(g.contains_key(part), "no runtime part {part}: {g:?}");
    }
    // What meshgate serves and its part of the swarm are put together by
    // the assembly, and never reach back into it.
    for leaf in ["serve", "swarm"] {
        for assembly in ["mod", "start", "control", "handlers"] {
            assert!(
                !g[leaf].contains(assembly),
                "runtime::{leaf} names runtime::{assembly}: {g:?}"
            );
        }
    }
    assert!(
        !g["swarm"].contains("serve"),
        "runtime::swarm names runtime::serve: {g:?}"
    );
    assert_acyclic(&g, "the runtime's parts");
}

/// Fails on a cycle in `g` (what names what), saying where.
fn assert_acyclic(g: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    for start in g.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = g[start].iter().collect();
        while let Some(m) = todo.pop() {
            assert_ne!(m, start, "a cycle among {what} through {start}: {g:?}");
            if seen.insert(m) {
                todo.extend(g.get(m).into_iter().flatten());
            }
        }
    }
}
