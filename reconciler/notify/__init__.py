"""Telling people: the notification outbox and its sinks (issue 19; wiring into the controller still to come)."""
