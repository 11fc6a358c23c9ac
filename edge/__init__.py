"""The player-facing edge: Cloudflare DNS, Technitium DNS, Velocity registration."""
