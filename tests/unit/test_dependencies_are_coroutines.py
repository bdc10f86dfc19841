"""Every dependency of every route is a coroutine (or an async generator). FastAPI runs a
dependency written as a plain ``def`` in a worker thread: a thread hop per dependency per
request, about 14 % of a sale's CPU before they were all made coroutines (issue 7,
docs/performance.md)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from stallholder.app import create_app
from stallholder.kit.db import Database
from stallholder.settings import Settings


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route, also those of included routers (FastAPI keeps an included router
    as one entry that holds the router's own routes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def test_no_route_has_a_dependency_that_would_run_in_a_thread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    app = create_app(
        Settings(data_dir=tmp_path / "var", database_url=url, embedded_worker=False),
        database=Database(url),
        run_worker=False,
    )
    routes = list(_api_routes(app.routes))
    assert len(routes) > 100  # the whole API and the pages
    in_threads = sorted(
        {
            f"{dependency.call.__module__}.{dependency.call.__qualname__}"
            for route in routes
            for dependency in _dependencies(route.dependant)
            if dependency.call is not None
            and not inspect.iscoroutinefunction(dependency.call)
            and not inspect.isasyncgenfunction(dependency.call)
        }
    )
    assert in_threads == []
