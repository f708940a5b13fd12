"""Tests against the real local Kafka broker (the session `kafka` fixture)."""
