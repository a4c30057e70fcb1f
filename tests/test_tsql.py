"""Compatibility: the T-SQL gate moved to ``tests/test_tsql_parse.py``; other suites import its
helpers from here (``from tests.test_tsql import _parsable, parse_errors``)."""

from __future__ import annotations

from .test_tsql_parse import as_tsql as _parsable
from .test_tsql_parse import parse_errors

__all__ = ["_parsable", "parse_errors"]
