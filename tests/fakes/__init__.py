"""Stand-ins for outside services (a fake Compute Engine API) that tests run on loopback."""
