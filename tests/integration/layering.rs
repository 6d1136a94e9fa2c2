//! The shape of the workspace, as Cargo resolves it: the production controller carries
//! nothing that only tests, the demo or the agent need.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Crates of ours that the production controller must never link: the test bed (a fake
/// Stripe, a link emulator, a MaxMind DB writer), the demo and the benchmarks built on
/// it, the tests, and the agent (a separate product).
const NOT_IN_PRODUCTION: [&str; 4] = [
    "lastmile-testbed",
    "lastmile-demo",
    "lastmile-tests",
    "lastmile-agent",
];

/// `cargo metadata` of the workspace, resolved for this machine's target.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// A package's name from its id.
fn names(meta: &Value) -> HashMap<String, String> {
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_owned(),
                p["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect()
}

/// The id of each package by name (workspace members and what they resolve to).
fn ids(meta: &Value) -> HashMap<String, String> {
    names(meta)
        .into_iter()
        .map(|(id, name)| (name, id))
        .collect()
}

/// Every package reachable from `roots`, following the dependency kinds `follow`
/// accepts and never entering a package named in `avoid`.
fn reachable(
    meta: &Value,
    roots: &[String],
    follow: impl Fn(&Value) -> bool,
    avoid: &[&str],
) -> BTreeSet<String> {
    let names = names(meta);
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let mut seen = BTreeSet::new();
    let mut stack = roots.to_vec();
    while let Some(id) = stack.pop() {
        if avoid.contains(&names[&id].as_str()) || !seen.insert(id.clone()) {
            continue;
        }
        for dep in nodes[id.as_str()]["deps"].as_array().expect("deps") {
            if dep["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(&follow)
            {
                stack.push(dep["pkg"].as_str().expect("pkg").to_owned());
            }
        }
    }
    seen.iter().map(|id| names[id].clone()).collect()
}

/// A dependency edge a binary links: normal and build dependencies, not dev ones.
fn linked(kind: &Value) -> bool {
    kind["kind"].is_null() || kind["kind"] == "build"
}

/// Every package `root` links into its binaries, transitively.
fn production_graph(meta: &Value, root: &str) -> BTreeSet<String> {
    reachable(meta, &[ids(meta)[root].clone()], linked, &[])
}

/// The packages that only the test-only side brings into the workspace: everything
/// any member reaches by any kind of dependency, less what the production members
/// (every member but [`NOT_IN_PRODUCTION`]) link without passing through a test-only
/// crate.
fn test_only(meta: &Value) -> BTreeSet<String> {
    let members: Vec<String> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    let names = names(meta);
    let production_members: Vec<String> = members
        .iter()
        .filter(|id| !NOT_IN_PRODUCTION.contains(&names[*id].as_str()))
        .cloned()
        .collect();
    let everything = reachable(meta, &members, |_| true, &[]);
    let production = reachable(meta, &production_members, linked, &NOT_IN_PRODUCTION);
    everything.difference(&production).cloned().collect()
}

#[test]
fn the_production_controller_links_no_test_only_crate() {
    let meta = metadata();
    let production = production_graph(&meta, "lastmile-controller");
    // The graph is really walked: the layers the controller is built from are in it.
    for layer in [
        "lastmile-domain",
        "lastmile-storage",
        "lastmile-billing",
        "lastmile-dashboard",
        "lastmile-protocol",
    ] {
        assert!(
            production.contains(layer),
            "{layer} is missing from the graph"
        );
    }
    let ours: Vec<&str> = NOT_IN_PRODUCTION
        .iter()
        .copied()
        .filter(|c| production.contains(*c))
        .collect();
    assert!(
        ours.is_empty(),
        "the production controller links test-only crates of ours: {ours:?}"
    );
    let test_only = test_only(&meta);
    // The set is not empty (the fake Stripe's, the geo DB writer's, the browser
    // driver's crates are in it), so the check below can fail.
    for known in ["mmdb-writer", "rcgen", "fantoccini", "proptest", "scraper"] {
        assert!(
            test_only.contains(known),
            "{known} is not seen as test-only"
        );
    }
    let linked: Vec<&String> = test_only
        .iter()
        .filter(|c| production.contains(*c))
        .collect();
    assert!(
        linked.is_empty(),
        "the production controller links crates only tests, the demo or the agent bring: {linked:?}"
    );
}

/// The top-level modules of the crate in `src` and the other top-level modules each one
/// names (`crate::x` paths, `use crate::{x, ..}` groups), outside comments and its
/// `#[cfg(test)]` part. A module is a file `x.rs` or a folder `x/` (all its files).
fn module_graph(src: &std::path::Path) -> HashMap<String, BTreeSet<String>> {
    let mut sources: HashMap<String, String> = HashMap::new();
    for entry in std::fs::read_dir(src).expect("src folder") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_owned();
        if name == "lib" || name == "main" || name == "bin" {
            continue;
        }
        let files: Vec<std::path::PathBuf> = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("module folder")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                .collect()
        } else if path.extension().is_some_and(|x| x == "rs") {
            vec![path.clone()]
        } else {
            continue;
        };
        let text = sources.entry(name).or_default();
        for file in files {
            let code = std::fs::read_to_string(&file).expect("source file");
            let code = code.split("#[cfg(test)]").next().unwrap_or_default();
            for line in code.lines() {
                let line = line.split("//").next().unwrap_or_default();
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    let names: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(module, text)| {
            let mut uses = BTreeSet::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let named: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or_default();
                    group
                        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .filter(|s| !s.is_empty())
                        .map(|s| s.split("::").next().unwrap_or_default())
                        .collect()
                } else {
                    vec![rest
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or_default()]
                };
                uses.extend(
                    named
                        .into_iter()
                        .filter(|n| *n != module && names.contains(*n))
                        .map(str::to_owned),
                );
            }
            (module.clone(), uses)
        })
        .collect()
}

/// The module circles of a graph: each strongly connected set of two or more modules.
fn circles(graph: &HashMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: HashMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reaches(m))).collect();
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for (m, r) in &reach {
        if !r.contains(*m) {
            continue;
        }
        let circle: BTreeSet<String> = r
            .iter()
            .filter(|o| reach[o].contains(*m))
            .cloned()
            .collect();
        if !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

#[test]
fn the_circle_finder_sees_a_circle() {
    let graph: HashMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    let expected: BTreeSet<String> = ["a", "b", "c"].into_iter().map(str::to_owned).collect();
    assert_eq!(circles(&graph), vec![expected]);
}

#[test]
fn no_module_of_the_controller_imports_another_in_a_circle() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller");
    for krate in ["storage", "domain", "server"] {
        let graph = module_graph(&root.join(krate).join("src"));
        assert!(
            graph.len() > 3,
            "{krate}: modules were read ({:?})",
            graph.keys()
        );
        let found = circles(&graph);
        assert!(
            found.is_empty(),
            "{krate}: modules import each other in a circle: {found:?}"
        );
    }
}
