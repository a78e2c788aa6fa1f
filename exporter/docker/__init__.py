"""Docker Engine access, in four rooms: settings (pure config models, no SDK), client (one
handle per endpoint, its errors, labels and sweeps), images (the metadata refresher) and
containers (pull, start, wait for readiness, remove).

Empty on purpose: importing `exporter.docker.settings` (as the config schema does) must not load
the Docker SDK (tests/test_lazy_imports.py).
"""
