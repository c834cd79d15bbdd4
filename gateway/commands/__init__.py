"""Remote commands to the gateway itself, and configuration changes that confirm or revert."""
