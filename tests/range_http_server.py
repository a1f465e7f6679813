"""A static HTTP server with byte ranges (as GDAL's /vsicurl/ asks for), for the tests.

It runs in its own process: GDAL holds the GIL while it reads, so a server thread in the
test process would never get to answer. Usage: ``python range_http_server.py DIR``; prints
the port it listens on (127.0.0.1) and serves until killed.
"""

from __future__ import annotations

import functools
import http.server
import sys
from pathlib import Path
from typing import Any


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single byte ranges."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        spec = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not spec or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        start_s, end_s = spec.removeprefix("bytes=").split("-")
        start, end = int(start_s), min(int(end_s or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[start : end + 1])


if __name__ == "__main__":
    handler = functools.partial(RangeRequestHandler, directory=sys.argv[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
