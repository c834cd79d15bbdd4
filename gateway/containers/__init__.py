"""OCI containers as a second kind of hosted app, run by podman through its REST API."""
