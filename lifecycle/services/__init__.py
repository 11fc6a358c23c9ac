"""Lifecycle business logic: `<entity>_<verb>` functions with keyword-only arguments.

Views, admin actions, tasks and management commands all call these and nothing else writes.
"""
