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
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit tests may read fixtures from anywhere; what ships may not.
        let shipped = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let deps = g.entry(top.clone()).or_default();
        for (i, _) in shipped.match_indices("crate::") {
            let name: String = shipped[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
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
    for start in g.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = g[start].iter().collect();
        while let Some(m) = todo.pop() {
            assert_ne!(m, start, "an import cycle through {start}: {g:?}");
            if seen.insert(m) {
                todo.extend(g.get(m).into_iter().flatten());
            }
        }
    }
}
