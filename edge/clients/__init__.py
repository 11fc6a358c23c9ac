"""HTTP clients of the edge systems: Cloudflare API v4, Technitium DNS, the Velocity bridge.
Every call has a timeout; every wait has a bound."""
