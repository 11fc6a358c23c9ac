"""The two state machines of the lifecycle app, each in one module with its transition table."""
