"""Nerve's runtime: event schemas, the bus, the services, the gateway and the CLI."""

__version__ = "0.1.0"
