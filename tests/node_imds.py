"""AWS IMDSv2 on loopback for several Ray nodes at once (`/<node id>/latest/…` answers as that node's metadata
service; settings.aws_imds_url names '{node_id}'), plus a drill gate (`/gate`: 404 until opened). Tests set and
clear notices per node; `served` records which notices a node's watcher has fetched."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATHS = {"latest/meta-data/spot/instance-action": "action",
         "latest/meta-data/events/recommendations/rebalance": "rebalance"}


class NodeImds:
    def __init__(self):
        self.action: dict[str, dict] = {}
        self.rebalance: dict[str, dict] = {}
        self.served: set[tuple[str, str]] = set()  # (node, "instance-action" | "rebalance") answered with a notice
        self.gate_open = False
        me = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes = b""):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):  # noqa: N802 — http.server's naming
                ok = self.path.endswith("/latest/api/token") and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self._send(200, b"tok") if ok else self._send(400)

            def do_GET(self):  # noqa: N802
                if self.path == "/gate":
                    return self._send(200 if me.gate_open else 404)
                if self.headers.get("X-aws-ec2-metadata-token") != "tok":  # IMDSv2 only, like the real service
                    return self._send(401)
                node, _, path = self.path.lstrip("/").partition("/")
                table = getattr(me, PATHS[path]) if path in PATHS else None
                if table is None or node not in table:
                    return self._send(404, b"Not Found")
                self._send(200, json.dumps(table[node]).encode())
                me.served.add((node, path.rsplit("/", 1)[1]))

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{self.srv.server_address[1]}"
        self.url, self.gate_url = base + "/{node_id}", base + "/gate"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
