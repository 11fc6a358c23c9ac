"""The control loop: lease + fencing, observe, diff, policy, repairs."""
