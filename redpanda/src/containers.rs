//! Redpanda in Docker for tests, for users who have a Docker engine (feature `testcontainers`).
//! The project's own test command does not need it: it starts tansu, a Kafka-protocol broker.

use testcontainers_modules::testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, GenericImage, ImageExt, TestcontainersError};

/// The image started by [`RedpandaContainer::start`].
pub const REDPANDA_IMAGE: (&str, &str) = ("redpandadata/redpanda", "v24.2.7");

/// A single-node Redpanda container; it is removed when dropped.
pub struct RedpandaContainer {
    container: ContainerAsync<GenericImage>,
    brokers: String,
}

impl RedpandaContainer {
    /// Starts Redpanda in dev mode and returns once it accepts clients. The Kafka listener is
    /// mapped to a free host port that Redpanda also advertises, so clients outside Docker reach it.
    pub async fn start() -> Result<Self, TestcontainersError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| TestcontainersError::other(format!("no free local port: {e}")))?;
        let container = GenericImage::new(REDPANDA_IMAGE.0, REDPANDA_IMAGE.1)
            .with_wait_for(WaitFor::message_on_stderr("Successfully started Redpanda!"))
            .with_mapped_port(port, 9092.tcp())
            .with_cmd([
                "redpanda".to_owned(),
                "start".to_owned(),
                "--mode=dev-container".to_owned(),
                "--smp=1".to_owned(),
                "--kafka-addr=0.0.0.0:9092".to_owned(),
                format!("--advertise-kafka-addr=127.0.0.1:{port}"),
            ])
            .start()
            .await?;
        Ok(Self { container, brokers: format!("127.0.0.1:{port}") })
    }

    /// The bootstrap address, for `RedpandaConfig::new` or `KAFKA_BROKERS`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The container handle. The whole module is behind the `testcontainers` feature: its
    /// testcontainers types are that feature's opt-in escape hatch.
    pub fn container(&self) -> &ContainerAsync<GenericImage> {
        &self.container
    }
}
