"""Faust agents: thin wiring between topics, the table and the services."""
