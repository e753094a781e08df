#!/usr/bin/python3
"""An HTTP/1.1 application for the waypoint tests: answers every request with JSON describing it.

    http_echo.py --port P --name NAME

Prints "listening <addr>" once bound. Each response (keep-alive, Content-Length) is
{"server": NAME, "method": .., "path": .., "headers": {lowercase name: value, ..},
 "body_bytes": N, "peer": "ip:port"}; a request body is read whole (Content-Length or chunked).
`GET /status/<code>` answers with that status. Debian's python3 standard library only.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_label = "unnamed"

    def log_message(self, *_args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                total += len(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return len(self.rfile.read(length)) if length else 0

    def answer(self):
        body_bytes = self.read_body()
        status = 200
        if self.path.startswith("/status/"):
            try:
                status = int(self.path.rsplit("/", 1)[1])
            except ValueError:
                status = 400
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = headers[key] + "," + value if key in headers else value
        reply = json.dumps(
            {
                "server": self.server_name_label,
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body_bytes": body_bytes,
                "peer": "%s:%d" % self.client_address[:2],
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = answer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="echo")
    args = parser.parse_args()
    Echo.server_name_label = args.name
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Echo)
    server.daemon_threads = True
    print("listening 0.0.0.0:%d" % args.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
