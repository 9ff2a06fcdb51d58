"""Datasheet hardware profiles shipped with bsadvisor (JSON data only; see README.md)."""
