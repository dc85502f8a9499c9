//! PostgreSQL in Docker for tests, for users who have a Docker engine (feature `testcontainers`).
//! The project's own test command does not need it: it starts PostgreSQL from Debian's packages.

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, TestcontainersError};

/// A running PostgreSQL container; it is removed when dropped.
pub struct PostgresContainer {
    container: ContainerAsync<Postgres>,
    url: String,
}

impl PostgresContainer {
    /// Starts PostgreSQL (the module's default image, fsync on) and returns once it accepts
    /// connections.
    pub async fn start() -> Result<Self, TestcontainersError> {
        let container = Postgres::default().with_fsync_enabled().start().await?;
        let port = container.get_host_port_ipv4(5432).await?;
        let url = format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres");
        Ok(Self { container, url })
    }

    /// The connection URL, for `PostgresEventStore::connect` or `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The container handle. The whole module is behind the `testcontainers` feature: its
    /// testcontainers types are that feature's opt-in escape hatch.
    pub fn container(&self) -> &ContainerAsync<Postgres> {
        &self.container
    }
}
