"""The bundle's Grafana dashboards as code: `panels` holds the shared builders, one module per
dashboard; grafana/generate.py renders them."""
