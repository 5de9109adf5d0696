"""Fixtures of the map tests: the fit of tests/conftest.py's ``map_inputs`` and its map; the
map scene as a COG, and a real HTTP server on the loopback address that serves it with range
requests (and fails on request)."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import urllib.parse
from pathlib import Path

import pytest

from imgcate.maps import predict_map
from imgcate.results import load_fit

MAP_OPTS = {"tile_size": 32, "max_draws": 100, "progress": False, "seed": 1}


@pytest.fixture(scope="session")
def inputs(map_inputs):
    """(scene path, EffectFit)."""
    scene, fit_path = map_inputs
    return scene, load_fit(fit_path)


@pytest.fixture(scope="session")
def full_map(inputs):
    """The map of the whole scene, tiles every 16 px."""
    scene, fit = inputs
    return predict_map(fit, scene, stride=16, **MAP_OPTS)


# ------------------------------------------------------------ a real HTTP server on loopback
class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files of the server's folder: HEAD with Content-Length, GET of the whole
    file, and GET with ``Range: bytes=a-b`` (also ``a-`` and ``-n``) as 206 Partial Content;
    ranged GETs fail while the server holds failures (:meth:`RangeServer.fail`)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as GDAL's curl expects of a file server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Quiet: the server's own record is :attr:`RangeServer.requests`."""

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        server: RangeServer = self.server.owner  # type: ignore[attr-defined]
        path = server.root / urllib.parse.urlsplit(self.path).path.lstrip("/")
        header = self.headers.get("Range")
        if not path.is_file():
            return self._reply(404, b"", body=body, record=header)
        data = path.read_bytes()
        if self.command == "GET" and header is not None:
            how = server.take_failure()
            if how == "drop":  # the connection closes without an answer
                server.record(self.command, self.path, header, "dropped")
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            if how is not None:
                return self._reply(int(how), b"", body=body, record=header)
            span = _byte_range(header, len(data))
            if span is None:
                extra = {"Content-Range": f"bytes */{len(data)}"}
                return self._reply(416, b"", body=body, record=header, headers=extra)
            start, stop = span
            extra = {"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}
            return self._reply(206, data[start:stop], body=body, record=header, headers=extra)
        return self._reply(200, data, body=body, record=header)

    def _reply(
        self,
        status: int,
        data: bytes,
        *,
        body: bool,
        record: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        server: RangeServer = self.server.owner  # type: ignore[attr-defined]
        server.record(self.command, self.path, record, status)
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "image/tiff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))  # HEAD too: what a GET would send
        self.end_headers()
        if body:
            self.wfile.write(data)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` (``a-``, ``-n``) as [start, stop) within ``size``; None if unsatisfiable."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, stop = max(size - int(last), 0), size
    else:
        start, stop = int(first), min(int(last) + 1 if last else size, size)
    return (start, stop) if start < stop else None


class RangeServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) serving the files of ``root`` with
    range requests, in a thread of the test process.

    ``fail(n, how)`` makes the next ``n`` ranged GETs fail: ``how="drop"`` closes the
    connection without an answer, a status (``"503"``) answers with it. ``requests`` records
    (method, path, Range header, status or "dropped") of every request.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[tuple[str, str, str | None, int | str]] = []
        self._failures = 0
        self._how = "drop"
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        """The URL of file ``name`` of the served folder."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def fail(self, n: int, how: str = "drop") -> None:
        """Make the next ``n`` ranged GETs fail (0: serve normally again)."""
        with self._lock:
            self._failures, self._how = int(n), how

    def take_failure(self) -> str | None:
        with self._lock:
            if self._failures <= 0:
                return None
            self._failures -= 1
            return self._how

    def record(self, method: str, path: str, header: str | None, status: int | str) -> None:
        with self._lock:
            self.requests.append((method, path, header, status))

    def statuses(self) -> list[int | str]:
        with self._lock:
            return [r[3] for r in self.requests]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def http_server(tmp_path):
    """A :class:`RangeServer` serving ``tmp_path / "www"`` (a new port per test, so GDAL's
    cache of one test's downloads is not another's)."""
    root = tmp_path / "www"
    root.mkdir()
    server = RangeServer(root)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def map_cog(map_inputs) -> Path:
    """The map scene (``map_inputs``) as a Cloud-Optimized GeoTIFF, 64 px blocks: a real COG,
    with overviews and its header first, as served to GDAL over HTTP."""
    import rasterio.shutil

    scene, _ = map_inputs
    path = scene.with_name("scene-cog.tif")
    if not path.exists():
        rasterio.shutil.copy(scene, path, driver="COG", BLOCKSIZE=64, COMPRESS="DEFLATE")
    return path
