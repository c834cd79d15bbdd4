"""Local HTTP ingest, gmq-compatible: the Exosite device API subset GWE apps write to."""
