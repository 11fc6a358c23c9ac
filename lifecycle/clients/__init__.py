"""Clients of outside systems the lifecycle app drives: Proxmox and the in-container agent."""
