"""The Kafka door: routes that republish another Kafka topic's records (``[routes.kafka]``)."""
