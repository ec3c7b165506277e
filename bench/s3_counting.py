"""S3 requests counted at moto's server, for the benchmarks that compare what readers and
writers cost on S3 (bench_table_formats.py, bench_history.py): one WSGI middleware in front of
moto's own app, so every client (boto3, deltalake, DuckDB, pyiceberg) is counted alike."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

METADATA = ("/_delta_log/", "/metadata/")  # Delta's and Iceberg's table metadata


def request_kind(environ: dict[str, Any]) -> str:
    """GET, LIST (a GET on a bucket), HEAD, PUT, POST or DELETE: S3 prices LIST like PUT."""
    method = environ["REQUEST_METHOD"]
    if method != "GET":
        return method
    parts = environ.get("PATH_INFO", "").strip("/").split("/", 1)
    if len(parts) < 2 or not parts[1] or "list-type" in environ.get("QUERY_STRING", ""):
        return "LIST"
    return "GET"


class CountingApp:
    """WSGI middleware in front of moto, counting per port it listens on: requests by kind, the
    bytes answered (`<kind>_bytes`) and received (`bytes_in`), requests for table metadata
    (`<kind>_meta`), conditional PUTs, 412s (a conditional PUT that lost the race) and 5xx.
    `take(port)` hands a port's counters over and resets them; a server in another process
    answers the same at `/__bench__/counts` on that port."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: dict[str, Counter[str]] = {}

    def take(self, port: int | str) -> Counter[str]:
        with self.lock:
            return self.counts.pop(str(port), Counter())

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "").startswith("/__bench__/"):
            body = json.dumps(self.take(environ["SERVER_PORT"])).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        return self._counted(environ, start_response)

    def _counted(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterator[bytes]:
        kind = request_kind(environ)
        path = environ.get("PATH_INFO", "")
        status: list[str] = []

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(code)
            return start_response(code, headers, exc_info)

        result = self.app(environ, recording_start_response)
        sent = 0
        try:
            for chunk in result:
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(result, "close"):
                result.close()
            code = status[-1][:3] if status else "000"
            with self.lock:
                counts = self.counts.setdefault(str(environ["SERVER_PORT"]), Counter())
                counts[kind] += 1
                counts[f"{kind}_bytes"] += sent
                counts["bytes_in"] += int(environ.get("CONTENT_LENGTH") or 0)
                if any(marker in path for marker in METADATA):
                    counts[f"{kind}_meta"] += 1
                if kind == "PUT" and environ.get("HTTP_IF_NONE_MATCH"):
                    counts["PUT_conditional"] += 1
                if code == "412":
                    counts["412"] += 1
                elif code >= "500":
                    counts["5xx"] += 1
