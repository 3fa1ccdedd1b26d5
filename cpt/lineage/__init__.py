"""Lineage for data governance: what every Delta commit records about where its rows came from (:mod:`.graph`), the
code that wrote it (:mod:`.code`), the audit report of a table version (:mod:`.report`) and the OpenLineage events
a catalogue ingests (:mod:`.openlineage`)."""
