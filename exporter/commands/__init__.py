"""Subcommands that are programs of their own: demo, drill, bench (image ranking)."""
