"""``seedswarm monitor``: a live web page of the swarms in a DHT (Starlette, served by uvicorn).

The web app knows nothing about the DHT: it serves one page (``monitor.html``, all its
CSS and JS inline, no CDN) and, at ``/api/snapshot?swarm=ID``, the dict a snapshot function
returns (``observe.swarm_snapshot``'s schema). The page polls that endpoint and redraws.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

Snapshot = Callable[[str | None], dict]
_SWARM_ID = re.compile(r"^[0-9a-f]{64}$")


def page_html(refresh: float, default_swarm: str | None) -> str:
    html = (resources.files("seedswarm.peer") / "monitor.html").read_text(encoding="utf-8")
    settings = json.dumps({"refresh_ms": int(refresh * 1000), "default_swarm": default_swarm})
    return html.replace("/*SETTINGS*/{}", settings)


def create_app(snapshot: Snapshot, refresh: float = 2.0, default_swarm: str | None = None) -> Starlette:
    """The web app over ``snapshot(swarm_id or None) -> dict`` (called in a worker thread)."""
    html = page_html(refresh, default_swarm)

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    async def api(request: Request) -> Response:
        swarm = request.query_params.get("swarm") or None
        if swarm is not None and not _SWARM_ID.match(swarm):
            return JSONResponse({"error": "swarm must be 64 lowercase hex digits"}, status_code=400)
        return JSONResponse(await run_in_threadpool(snapshot, swarm), headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/", page), Route("/api/snapshot", api)])


class Poller:
    """Serialises snapshot calls (one DHT client), reuses one younger than ``max_age`` seconds,
    and in the background takes one of every announced swarm each ``interval`` seconds, so a
    loss history accumulates while no page is open."""

    def __init__(self, take: Snapshot, interval: float, max_age: float = 1.0, max_swarms: int = 20) -> None:
        self.take, self.interval, self.max_age, self.max_swarms = take, interval, max_age, max_swarms
        self._lock = threading.Lock()
        self._cache: dict[str | None, tuple[float, dict]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seedswarm-monitor-poll", daemon=True)

    def __call__(self, swarm: str | None) -> dict:
        with self._lock:
            taken, snap = self._cache.get(swarm, (0.0, None))
            if snap is None or time.monotonic() - taken > self.max_age:
                snap = self.take(swarm)
                self._cache[swarm] = (time.monotonic(), snap)
            return snap

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for row in self(None)["swarms"][: self.max_swarms]:
                    if self._stop.is_set():
                        return
                    self(row["swarm_id"])
            except Exception:
                pass  # the DHT is unreachable for a moment: the page shows the error on its own requests

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); the caller learns the port before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's own handlers: a graceful stop, no traceback)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
