"""The JSON API (design.md §4) as one Flask blueprint.

    install_services(app, Services(settings, pool))
    app.register_blueprint(api_blueprint)
"""

from tasktree.exporter.api.routes import api_blueprint

__all__ = ["api_blueprint"]
