#!/usr/bin/python3
"""A real gRPC server and client (Debian's python3-grpcio) for the waypoint tests, over h2c.

    grpc_peer.py serve --port P --name NAME
        prints "listening <addr>"; service marrow.test.Echo:
          Say (unary): answers b"NAME:" + the request bytes, with the request's metadata
            key "x-echo" copied into the trailing metadata;
          Count (server streaming): the request is an ASCII number N; streams b"0".."N-1".
    grpc_peer.py call ADDR --method Say|Count --data TEXT [--metadata K=V ...] [--timeout S]
        prints {"ok": bool, "code": "OK"|"PERMISSION_DENIED"|.., "details": .., "messages": [..],
                "trailers": {..}} and exits 0 when the call got an answer (whatever its code).
Messages are raw bytes (no protobuf schema needed: identity serializers).
"""

import argparse
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "marrow.test.Echo"


def serve(args):
    name = args.name.encode()

    def say(request, context):
        for key, value in context.invocation_metadata():
            if key == "x-echo":
                context.set_trailing_metadata((("x-echo", value),))
        return name + b":" + request

    def count(request, _context):
        for i in range(int(request.decode() or "0")):
            yield str(i).encode()
            time.sleep(0.05)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("0.0.0.0:%d" % args.port)
    server.start()
    print("listening 0.0.0.0:%d" % args.port, flush=True)
    server.wait_for_termination()


def call(args):
    metadata = tuple(tuple(m.split("=", 1)) for m in args.metadata)
    out = {"ok": False, "messages": [], "trailers": {}}
    with grpc.insecure_channel(args.addr) as channel:
        path = "/%s/%s" % (SERVICE, args.method)
        try:
            if args.method == "Count":
                stream = channel.unary_stream(path)(
                    args.data.encode(), metadata=metadata, timeout=args.timeout
                )
                for message in stream:
                    out["messages"].append(message.decode(errors="replace"))
                trailers = stream.trailing_metadata()
            else:
                reply, state = channel.unary_unary(path).with_call(
                    args.data.encode(), metadata=metadata, timeout=args.timeout
                )
                out["messages"].append(reply.decode(errors="replace"))
                trailers = state.trailing_metadata()
            out.update(ok=True, code="OK", details="")
            out["trailers"] = {k: v for k, v in (trailers or ())}
        except grpc.RpcError as error:
            out.update(code=error.code().name, details=error.details() or "")
    print(json.dumps(out), flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", default="grpc")
    c = sub.add_parser("call")
    c.add_argument("addr")
    c.add_argument("--method", default="Say", choices=["Say", "Count"])
    c.add_argument("--data", default="")
    c.add_argument("--metadata", action="append", default=[])
    c.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else call(args)


if __name__ == "__main__":
    sys.exit(main())
