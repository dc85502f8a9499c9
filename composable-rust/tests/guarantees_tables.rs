//! Every backend documents its guarantees in one table of the same shape (the same columns, the
//! same rows in the same order), and the README says the same as the crate's documentation.

use std::path::Path;

/// The rows every guarantees table has, in this order.
const ROWS: [&str; 6] = ["delivery", "ordering", "durability", "redelivery / ack", "dead letters", "limits"];

/// The header of every guarantees table.
const HEADER: &str = "| guarantee | what this backend does |";

/// Each backend type and the crate documentation (`lib.rs`) that holds its table.
const BACKENDS: [(&str, &str); 7] = [
    ("InMemoryEventBus", "memory/src/lib.rs"),
    ("InMemoryEventStore", "memory/src/lib.rs"),
    ("NatsEventBus", "nats/src/lib.rs"),
    ("RedpandaEventBus", "redpanda/src/lib.rs"),
    ("ZenohEventBus", "zenoh-bus/src/lib.rs"),
    ("SqliteEventStore", "sqlite/src/lib.rs"),
    ("PostgresEventStore", "postgres/src/lib.rs"),
];

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The table that follows the heading naming "Guarantees of `{backend}`", its lines without the
/// `//! ` prefix of crate docs.
fn table(text: &str, backend: &str, file: &str) -> Vec<String> {
    let marker = format!("Guarantees of `{backend}`");
    let lines: Vec<&str> = text.lines().map(|l| l.strip_prefix("//!").map_or(l, str::trim_start)).collect();
    let heading = lines.iter().position(|l| l.starts_with('#') && l.contains(&marker)).unwrap_or_else(|| panic!("{file}: no heading with {marker:?}"));
    let rest = &lines[heading + 1..];
    let start = rest.iter().position(|l| l.starts_with('|')).unwrap_or_else(|| panic!("{file}: no table after {marker:?}"));
    assert!(rest[..start].iter().all(|l| l.trim().is_empty()), "{file}: the table must follow the heading {marker:?}");
    rest[start..].iter().take_while(|l| l.starts_with('|')).map(|l| (*l).to_owned()).collect()
}

fn check_shape(rows: &[String], where_: &str) {
    assert_eq!(rows.first().map(String::as_str), Some(HEADER), "{where_}: header");
    assert_eq!(rows.get(1).map(String::as_str), Some("|---|---|"), "{where_}: two columns");
    let labels: Vec<&str> = rows[2..].iter().map(|r| r.trim_start_matches("| ").split(" | ").next().unwrap_or_default()).collect();
    assert_eq!(labels, ROWS, "{where_}: the same rows in the same order");
    for row in &rows[2..] {
        assert_eq!(row.matches(" | ").count(), 1, "{where_}: two cells in {row:?}");
        assert!(row.ends_with(" |"), "{where_}: {row:?}");
    }
}

#[test]
fn every_backend_has_the_same_guarantees_table_in_the_readme_and_its_crate_docs() {
    let readme = read("README.md");
    for (backend, lib) in BACKENDS {
        let in_docs = table(&read(lib), backend, lib);
        check_shape(&in_docs, &format!("{lib} ({backend})"));
        let in_readme = table(&readme, backend, "README.md");
        check_shape(&in_readme, &format!("README.md ({backend})"));
        assert_eq!(in_readme, in_docs, "README.md and {lib} must say the same of {backend}");
    }
}
