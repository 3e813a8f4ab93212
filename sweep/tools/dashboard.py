"""`posweep dashboard`: optuna-dashboard over a sweep's Optuna study, served on the loopback interface."""

from __future__ import annotations

from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sweep.engine.folder import sweep_storage
from sweep.engine.storage import open_storage, storage_url
from sweep.errors import UserError
from sweep.results import SweepFolder

HOST = "127.0.0.1"


class _QuietHandler(WSGIRequestHandler):
    """Request handling without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        return None


def dashboard_server(sweep_dir: str | Path, storage: str | None = None, port: int = 8080) -> WSGIServer:
    """optuna-dashboard's WSGI app over the sweep's storage, bound to 127.0.0.1:`port` (0: any free port)."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError(
            "posweep dashboard needs optuna-dashboard: pip install 'posweep[dashboard]'"
        ) from None
    folder = SweepFolder(sweep_dir).require()
    app = optuna_dashboard.wsgi(open_storage(storage_url(sweep_storage(folder.path, storage)), folder.path))
    try:
        return make_server(HOST, port, app, handler_class=_QuietHandler)
    except OSError as error:
        raise UserError(f"cannot listen on {HOST}:{port}: {error.strerror or error}") from None
