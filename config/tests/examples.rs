//! Every example configuration shipped in `deploy/examples` must load.

use std::path::{Path, PathBuf};

use isogate_config::Config;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

#[test]
fn every_example_config_loads() {
    let dir = examples_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));

    let mut examples: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    examples.sort();
    assert!(
        !examples.is_empty(),
        "no *.yaml example configurations found in {}",
        dir.display()
    );

    let failures: Vec<String> = examples
        .iter()
        .filter_map(|path| Config::load(path).err().map(|error| error.to_string()))
        .collect();
    assert!(
        failures.is_empty(),
        "example configurations failed to load:\n{}",
        failures.join("\n")
    );

    for path in &examples {
        let config = Config::load(path).expect("checked above");
        assert!(!config.policy().tenants().is_empty(), "{}", path.display());
    }
}
