"""Stand-ins for the outside world and the demo launcher. Never imported by production code."""
