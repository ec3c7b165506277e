"""Resources shared by every job that talks to the broker."""

import warnings
from pathlib import Path

from dagster import Config, ConfigurableResource, EnvVar, Failure, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field

from data_acq.acquire.ca_cert import DOWNLOAD_DEADLINE_S, READ_TIMEOUT_S, ca_file
from data_acq.settings import BrokerSettings, Settings, Subscription
from data_acq.storage import LocalStore, ObjectStore, S3Store, parse_s3_url

# Dagster 1.13 calls its own deprecated InitResourceContext.dagster_run whenever it initializes a
# nested resource (MQTTBroker's CA, S3Storage's client): nothing here calls it or can avoid it,
# and every run would log it. Only that message is silenced.
warnings.filterwarnings(
    "ignore", "InitResourceContext.dagster_run is deprecated", DeprecationWarning
)


class CACertificate(ConfigurableResource):
    """The broker's CA certificate, downloaded over HTTPS (or a local file) and checked.

    Without `url` or `file` the broker is trusted through the system CAs (or TLS is off).
    """

    url: str | None = Field(default=None, description="HTTPS URL of the CA (CA_CERT_URL)")
    file: str | None = Field(default=None, description="Local CA file instead (CA_CERT_FILE)")
    sha256: str | None = Field(
        default=None,
        description="Pinned SHA-256 fingerprint of the CA certificate's DER encoding, hex, "
        "colons optional, as `openssl x509 -noout -fingerprint -sha256` prints it "
        "(CA_CERT_SHA256); applies to `url` and `file`",
    )
    cache_dir: str = Field(description="Where the downloaded CA is cached")
    timeout_s: float = Field(default=READ_TIMEOUT_S, description="Per connect and per read")
    deadline_s: float = Field(
        default=DOWNLOAD_DEADLINE_S, description="For the whole download, retries included"
    )
    retries: int = 3

    def path(self) -> Path | None:
        return ca_file(
            self.file,
            self.url,
            self.sha256,
            Path(self.cache_dir),
            timeout=self.timeout_s,
            retries=self.retries,
            deadline=self.deadline_s,
        )


class SubscriptionSpec(Config):
    """One drain's topics and persistent-session client id."""

    topics: list[str]
    client_id: str


class MQTTBroker(ConfigurableResource):
    """Connection settings for the broker; the password comes from an environment variable."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = Field(default=None, description="Set through EnvVar, never inline")
    topics: list[str]
    client_id: str
    protocol: str = "5"
    subscriptions: dict[str, SubscriptionSpec] = Field(
        default_factory=dict,
        description="Drains by name (DATA_ACQ_SUBSCRIPTIONS); without it one, `main`, over "
        "`topics` as `client_id`",
    )
    ca_certificate: ResourceDependency[CACertificate]

    def subscription_settings(self, name: str) -> BrokerSettings:
        """The connection settings of one subscription (its topics, its session)."""
        if not self.subscriptions and name == "main":
            return self.settings()
        if name not in self.subscriptions:
            known = ", ".join(sorted(self.subscriptions)) or "main"
            raise Failure(f"no subscription named {name!r}; configured: {known}")
        spec = self.subscriptions[name]
        return self.settings().for_subscription(
            Subscription(name, tuple(spec.topics), spec.client_id)
        )

    def settings(self) -> BrokerSettings:
        """The connection settings."""
        return BrokerSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            topics=tuple(self.topics),
            client_id=self.client_id,
            protocol=self.protocol,  # type: ignore[arg-type]
            ca_cert_url=self.ca_certificate.url,
            ca_cert_file=self.ca_certificate.file,
            ca_cert_sha256=self.ca_certificate.sha256,
        )

    def ca_file(self) -> Path | None:
        return self.ca_certificate.path()


class Storage(ConfigurableResource):
    """Where raw and curated objects live; assets see only the `ObjectStore` interface."""

    def store(self) -> ObjectStore:
        raise NotImplementedError


class LocalStorage(Storage):
    root: str = Field(description="Local folder (DATA_ACQ_STORAGE)")

    def store(self) -> ObjectStore:
        return LocalStore(Path(self.root))


class S3Storage(Storage):
    bucket: str
    prefix: str = ""
    s3: ResourceDependency[S3Resource]

    def store(self) -> ObjectStore:
        return S3Store(self.s3.get_client(), self.bucket, self.prefix)


class PipelineQueue(ConfigurableResource):
    """The SQS queue the pipeline-format documents go to (PIPELINE_SQS_QUEUE_URL); unset: none."""

    queue_url: str | None = None


def build_storage(storage: str) -> Storage:
    """Local folder by default; `s3://bucket/prefix` uses dagster-aws's S3Resource, which takes
    the standard AWS_* variables (AWS_ENDPOINT_URL for S3-compatible servers)."""
    s3 = parse_s3_url(storage)
    if s3 is None:
        return LocalStorage(root=str(Path(storage).resolve()))
    return S3Storage(bucket=s3[0], prefix=s3[1], s3=S3Resource())


def build_resources(settings: Settings) -> dict[str, object]:
    """The resources for one deployment, from the one settings object."""
    broker = settings.broker
    ca = CACertificate(
        url=broker.ca_cert_url,
        file=broker.ca_cert_file,
        sha256=broker.ca_cert_sha256,
        cache_dir=str(settings.cache_dir),
    )
    return {
        "ca_certificate": ca,
        "mqtt": MQTTBroker(
            host=broker.host,
            port=broker.port,
            username=broker.username,
            # the run configuration shows the variable's name, not its value
            password=EnvVar("MQTT_PASSWORD") if broker.password else None,
            topics=list(broker.topics),
            client_id=broker.client_id,
            protocol=broker.protocol,
            subscriptions={
                sub.name: SubscriptionSpec(topics=list(sub.topics), client_id=sub.client_id)
                for sub in settings.subscriptions
            },
            ca_certificate=ca,
        ),
        "storage": build_storage(settings.storage),
        "pipeline_queue": PipelineQueue(queue_url=settings.pipeline_queue_url),
    }
