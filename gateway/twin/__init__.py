"""The local digital twin: Ditto protocol on the local broker, persisted, synced to AWS shadows."""
