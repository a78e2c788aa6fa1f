"""Shared test servers, builders and drivers (no test module imports another)."""
