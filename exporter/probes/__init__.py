"""Probe kinds. Each sibling module registers exactly one kind; nothing else lists them."""

from __future__ import annotations

import importlib
import pkgutil

from exporter.probes.base import REGISTRY, ProbeContext, ProbeFailure, ProbeKind, register

__all__ = ["REGISTRY", "ProbeContext", "ProbeFailure", "ProbeKind", "register"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
