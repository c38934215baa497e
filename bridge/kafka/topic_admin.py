"""Creating the Kafka topics a configuration (or a front-end) declares."""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bridge.kafka.client_settings import client_options
from bridge.model.config import KafkaSettings, TopicSpec

log = structlog.get_logger(__name__)


async def ensure_topics(
    settings: KafkaSettings, bootstrap: str, specs: Iterable[TopicSpec]
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    wanted = {spec.name: spec for spec in specs}
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(**client_options(settings, bootstrap, "admin"))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for name, spec in wanted.items() if name not in existing]
        created: list[str] = []
        for spec in missing:
            config = dict(spec.config)
            if spec.compact:
                config.setdefault("cleanup.policy", "compact")
            topic = NewTopic(
                spec.name, spec.partitions, spec.replication_factor, topic_configs=config
            )
            try:
                await admin.create_topics([topic])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another instance won the race
            except KafkaError as exc:
                if "TopicAlreadyExists" not in repr(exc):
                    raise
        if created:
            log.info("kafka.topics_created", topics=created)
        return created
    finally:
        await admin.close()
