"""Fixtures of the UI tests: the API tests' database fixtures, a browser (browser.py), and
``client``: Flask's test client of an app with the JSON API and the pages."""

import pytest
from flask import Flask

from tasktree.exporter.api import api_blueprint
from tasktree.exporter.services import Services, install_services
from tasktree.exporter.settings import Settings
from tasktree.exporter.ui import install_ui

from ..integration.api_support import api_pool, db  # noqa: F401  (fixtures)
from .browser import browser, browser_context, page_errors  # noqa: F401  (fixtures)


@pytest.fixture
def client(db, api_pool):  # noqa: F811  (db, api_pool: the fixtures imported above)
    app = Flask("tasktree-ui-tests")
    install_services(app, Services(Settings(), api_pool))
    app.register_blueprint(api_blueprint)
    install_ui(app)
    return app.test_client()
