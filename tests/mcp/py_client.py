"""An MCP client for isogate's tests: the Python `mcp` SDK (2.x `Client` over the Streamable HTTP
transport) against the gateway's `/mcp` with a tenant key. Prints one JSON object: the tools
listed, and the result of each call given on the command line.

usage: py_client.py URL KEY TOOL JSON_ARGS [TOOL JSON_ARGS ...]
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url, key, calls):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with Client(streamable_http_client(url, http_client=http)) as client:
        tools = await client.list_tools()
        out = {"tools": [t.model_dump(by_alias=True, exclude_none=True) for t in tools.tools], "calls": []}
        for name, args in calls:
            result = await client.call_tool(name, args)
            out["calls"].append(result.model_dump(by_alias=True, exclude_none=True))
    print(json.dumps(out))


if __name__ == "__main__":
    url, key, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    calls = [(rest[i], json.loads(rest[i + 1])) for i in range(0, len(rest), 2)]
    asyncio.run(main(url, key, calls))
