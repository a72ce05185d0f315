"""Fixtures of the UI tests: the API tests' database fixtures, and a browser (browser.py)."""

from ..integration.api_support import api_pool, db  # noqa: F401  (fixtures)
from .browser import browser, browser_context, page_errors  # noqa: F401  (fixtures)
