"""Servers, allocations, operations; provisioning, power and termination; the portal REST API."""
