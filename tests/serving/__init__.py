"""Serving tests (a package, so its helpers import as ``serving.helpers`` from tests/ and bench/)."""
