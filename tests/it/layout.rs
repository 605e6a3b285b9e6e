//! The layout holds: the modules of the decision core import one another in one direction
//! only (the vocabulary a leaf, the lifecycle below the commands), so that a change to one
//! rule rebuilds and re-reads little, and no module needs another that needs it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of `src/` each module's code (comments aside) names as `crate::x`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        let code: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let named = graph.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if rest[..end] != module && !rest[..end].is_empty() {
                named.insert(rest[..end].to_owned());
            }
        }
    }
    graph
}

#[test]
fn the_decision_core_imports_in_one_direction() {
    let graph = imports();
    let core = ["decision", "access", "commands", "lifecycle"];
    let of = |m: &str| graph.get(m).cloned().unwrap_or_default();
    assert!(
        of("decision").is_empty(),
        "decision imports {:?}",
        of("decision")
    );
    assert_eq!(of("access"), BTreeSet::from(["decision".to_owned()]));
    for m in core {
        // Only what sits below it in the core, and leaves outside it (names, sizes).
        let below: BTreeSet<&str> = match m {
            "commands" => BTreeSet::from(["decision", "access", "lifecycle"]),
            "lifecycle" => BTreeSet::from(["decision"]),
            _ => BTreeSet::from(["decision"]),
        };
        for dep in of(m) {
            let leaf = of(&dep).is_empty() || ["catalog", "domain"].contains(&dep.as_str());
            assert!(
                below.contains(dep.as_str()) || (!core.contains(&dep.as_str()) && leaf),
                "{m} imports {dep}"
            );
        }
    }
}
