"""The saga coordinator service."""
