"""Local administration: the ``gatewayctl`` command line."""
