"""The report: its context and templates (package data)."""
