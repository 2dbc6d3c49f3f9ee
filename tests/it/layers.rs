//! The module layering of ARCHITECTURE.md, checked on the source: every
//! `crate::<module>` reference of a top-level module points to a lower
//! layer, so no cycle between top-level modules can appear unnoticed. A new
//! top-level module must be given its layer here (and in ARCHITECTURE.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom (0) to top. A module may use only modules of lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("config", 0),
    ("auth", 0),
    ("topic", 0),
    ("frames", 0),
    ("telemetry", 1),
    ("descriptors", 1),
    ("metrics", 0),
    ("hub", 1),
    ("broker", 1),
    ("roster", 2),
    ("dispatch", 2),
    ("registry", 3),
    ("cluster", 4),
    ("node", 5),
    ("http", 6),
    ("ws", 6),
    ("app", 7),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Top-level module -> the top-level modules it names as `crate::<m>`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = first
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            // The binary (main.rs and its cli/) uses the library from
            // outside, as `skywave::…`.
            if matches!(module.as_str(), "lib" | "main" | "cli") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let uses = graph.entry(module.clone()).or_default();
            for (index, _) in text.match_indices("crate::") {
                let name: String = text[index + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `crate::version()` is the crate root's, not a module's.
                if !name.is_empty() && name != module && name != "version" {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn top_level_modules_only_point_down() {
    let graph = dependencies();
    let mut problems = Vec::new();
    for (module, uses) in &graph {
        let Some(own) = layer(module) else {
            problems.push(format!(
                "src/{module}: not in the layer map of tests/it/layers.rs"
            ));
            continue;
        };
        for used in uses {
            match layer(used) {
                Some(theirs) if theirs < own => {}
                Some(theirs) => problems.push(format!(
                    "{module} (layer {own}) uses crate::{used} (layer {theirs}): dependencies point down only"
                )),
                None => problems.push(format!("{module} uses crate::{used}, which is not in the layer map")),
            }
        }
    }
    assert!(problems.is_empty(), "layering:\n{}", problems.join("\n"));
    // The map is no wish list: every module in it exists.
    for (module, _) in LAYERS {
        assert!(
            graph.contains_key(*module),
            "layer map names a missing module {module}"
        );
    }
}
