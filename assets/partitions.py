"""Partitions shared by assets, sensors and schedules."""

import dagster as dg

# One partition per corpus source (declared or landed); the landing sensor registers new ones.
corpus_sources = dg.DynamicPartitionsDefinition(name="corpus_sources")
