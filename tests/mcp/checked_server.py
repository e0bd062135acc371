"""An MCP server for isogate's tests, written with the Python `mcp` SDK (2.x: `MCPServer`,
the SDK's former `FastMCP`), over the Streamable HTTP transport.

It refuses every request whose `Authorization` header is not `Bearer $MCP_TEST_TOKEN` (401), so
a passing call proves the gateway injected the credential; `echo_credential` sends back what it
received, so a test can check the gateway scrubs it before the Worker sees it.

Prints `READY <port>` once its socket listens on 127.0.0.1 (port 0: any free port).
"""

import asyncio
import os
import socket
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

EXPECTED = "Bearer " + os.environ["MCP_TEST_TOKEN"]
mcp = MCPServer("isogate-test")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@mcp.tool(name="get-weather")
def get_weather(city: str) -> dict:
    """The weather in a city."""
    return {"city": city, "temperature_c": 21}


@mcp.tool()
def echo_credential(ctx: Context) -> str:
    """Returns the Authorization header this server received."""
    headers = ctx.headers or {}
    return headers.get("authorization", "")


@mcp.tool()
def fail(message: str) -> str:
    """Always fails with `message`."""
    raise ToolError(message)


@mcp.tool()
async def slow(ms: int) -> str:
    """Answers after `ms` milliseconds."""
    await asyncio.sleep(ms / 1000)
    return "done"


app = mcp.streamable_http_app()


async def guarded(scope, receive, send):
    if scope["type"] == "http":
        headers = dict(scope["headers"])
        if headers.get(b"authorization", b"").decode() != EXPECTED:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
            return
    await app(scope, receive, send)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(guarded, lifespan="on", log_level="warning"))
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
