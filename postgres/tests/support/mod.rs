//! Where the PostgreSQL tests find a server: `DATABASE_URL` (scripts/test.sh starts one), or, built
//! with `--features testcontainers` and a Docker engine, a container started once per test binary.
//! Without either the tests are skipped, except under `CI=true`, where that is a failure.

#![allow(dead_code)]

use composable_rust_postgres::PostgresEventStore;

pub fn database_url() -> Option<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Some(url);
    }
    if let Some(url) = container_url() {
        return Some(url);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but DATABASE_URL is not set (scripts/test.sh starts PostgreSQL and sets it)");
    eprintln!("skipping: DATABASE_URL not set (and no testcontainers PostgreSQL)");
    None
}

#[cfg(feature = "testcontainers")]
fn container_url() -> Option<String> {
    use std::sync::OnceLock;
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().ok()?;
            let container = rt.block_on(composable_rust_postgres::containers::PostgresContainer::start()).ok()?;
            let url = container.url().to_string();
            // Kept for the whole test process; testcontainers' reaper removes the container after it.
            Box::leak(Box::new((rt, container)));
            Some(url)
        })
        .join()
        .ok()
        .flatten()
    })
    .clone()
}

#[cfg(not(feature = "testcontainers"))]
fn container_url() -> Option<String> {
    None
}

pub async fn store() -> Option<PostgresEventStore> {
    let url = database_url()?;
    let store = PostgresEventStore::connect(&url).await.expect("connect to the test database");
    store.migrate().await.expect("migrate");
    Some(store)
}
