"""A small JSON API on Python's standard library only, as a Shoal service.

It knows nothing of etcd: `autoscaler apply -f examples/python-api/shoal.yaml`
declares it, and the platform registers each instance (registration:
managed), tells it its port in PORT, and drains it before sending SIGTERM.

    GET /            {"hello": "python", "pid": ...}
    GET /work?iterations=N   a CPU-bound loop (default 10^6)
    GET /healthz     {"status": "ok"}
"""

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/":
            self._json(200, {"hello": os.environ.get("GREETING", "python"), "pid": os.getpid()})
        elif url.path == "/healthz":
            self._json(200, {"status": "ok"})
        elif url.path == "/work":
            n = min(int(parse_qs(url.query).get("iterations", ["1000000"])[0]), 10**8)
            x = 0
            for i in range(n):
                x = (x + i * 7) % 1000003
            self._json(200, {"iterations": n, "result": x, "pid": os.getpid()})
        else:
            self._json(404, {"error": "not_found", "detail": f"no {url.path}"})

    def log_message(self, *args):
        pass


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    # SIGTERM: stop accepting, let the requests in flight finish, exit 0.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
