// An MCP client for isogate's tests: the TypeScript SDK (@modelcontextprotocol/sdk) over the
// Streamable HTTP transport against the gateway's /mcp with a tenant key. Prints one JSON
// object: the tools listed, and the result of each call given on the command line.
//
// usage: node ts_client.mjs URL KEY TOOL JSON_ARGS [TOOL JSON_ARGS ...]
// (the SDK is resolved from ISOGATE_MCP_MODULES/node_modules)
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.ISOGATE_MCP_MODULES;
const require = createRequire(path.join(modules, "package.json"));
const load = (spec) => import(pathToFileURL(require.resolve(spec)).href);
const { Client } = await load("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = await load("@modelcontextprotocol/sdk/client/streamableHttp.js");

const [url, key, ...rest] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "isogate-test", version: "1.0.0" });
await client.connect(transport);
const out = { tools: (await client.listTools()).tools, calls: [], protocol: transport.protocolVersion ?? null };
for (let i = 0; i < rest.length; i += 2) {
  out.calls.push(await client.callTool({ name: rest[i], arguments: JSON.parse(rest[i + 1]) }));
}
await client.close();
console.log(JSON.stringify(out));
