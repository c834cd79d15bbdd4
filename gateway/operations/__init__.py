"""Pieces shared by the services that run long operations (updates, uploads): the durable
record store, the status reporter and the HTTP client they build."""
