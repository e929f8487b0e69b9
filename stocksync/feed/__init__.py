"""The availability feed: ``availability.changed`` on Kafka and by signed webhooks."""
