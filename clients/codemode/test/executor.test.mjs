// IsogateExecutor with the real @cloudflare/codemode (createCodeTool from its AI SDK entry, the
// Executor contract) against a real isogate gateway. Run by tests/codemode.rs, which starts the
// gateway and passes ISOGATE_URL, ISOGATE_KEY (a tenant without egress rules) and
// ISOGATE_OTHER_KEY; by hand: `npm test` with those set.
//
//   node --import ./test/register.mjs test/executor.test.mjs
import assert from "node:assert/strict";
import { test } from "node:test";
import { createCodeTool } from "@cloudflare/codemode/ai";
import { tool } from "ai";
import { z } from "zod";
import { IsogateExecutor, sandboxName } from "../dist/index.js";

const url = process.env.ISOGATE_URL;
const apiKey = process.env.ISOGATE_KEY;
assert.ok(url && apiKey, "set ISOGATE_URL and ISOGATE_KEY");

const executor = new IsogateExecutor({ url, apiKey });

/** A key-value store and a counter that live here, in the agent's process. */
function agentTools() {
  const store = new Map();
  const calls = [];
  const tools = {
    add: tool({
      description: "Adds two numbers",
      inputSchema: z.object({ a: z.number(), b: z.number() }),
      execute: async ({ a, b }) => {
        calls.push("add");
        return a + b;
      },
    }),
    "get-weather": tool({
      description: "The weather in a city",
      inputSchema: z.object({ city: z.string() }),
      execute: async ({ city }) => {
        calls.push("get-weather");
        return { city, temperature_c: 21 };
      },
    }),
  };
  const kv = {
    put: tool({
      description: "Stores a value",
      inputSchema: z.object({ key: z.string(), value: z.unknown() }),
      execute: async ({ key, value }) => {
        calls.push("put");
        store.set(key, value);
        return null;
      },
    }),
    get: tool({
      description: "Reads a value",
      inputSchema: z.object({ key: z.string() }),
      execute: async ({ key }) => {
        calls.push("get");
        if (!store.has(key)) throw new Error(`no value under ${key}`);
        return store.get(key);
      },
    }),
  };
  return { store, calls, providers: [{ tools }, { name: "kv", tools: kv }] };
}

const run = (codeTool, code) => codeTool.execute({ code }, { toolCallId: "t1", messages: [] });

test("createCodeTool runs the model's code in isogate and its tools here", async () => {
  const { store, calls, providers } = agentTools();
  const codeTool = createCodeTool({ tools: providers, executor });
  // codemode generated the model's types from the schemas, names sanitized as in the sandbox.
  assert.match(codeTool.description, /add/);
  assert.match(codeTool.description, /get_weather/);
  const out = await run(
    codeTool,
    `async () => {
      const sum = await codemode.add({ a: 2, b: 40 });
      const weather = await codemode.get_weather({ city: "Oslo" });
      await kv.put({ key: "answer", value: sum });
      const back = await kv.get({ key: "answer" });
      const many = await Promise.all([1, 2, 3, 4, 5, 6, 7, 8].map((n) => codemode.add({ a: n, b: n })));
      console.log("stored", back);
      console.warn("careful");
      return { sum, weather, back, many };
    }`,
  );
  assert.deepEqual(out.result, {
    sum: 42,
    weather: { city: "Oslo", temperature_c: 21 },
    back: 42,
    many: [2, 4, 6, 8, 10, 12, 14, 16],
  });
  assert.deepEqual(out.logs, ["stored 42", "[warn] careful"]);
  assert.equal(store.get("answer"), 42);
  assert.equal(calls.filter((c) => c === "add").length, 9);
});

test("a tool's error rejects in the code with its message; schema errors too", async () => {
  const { providers } = agentTools();
  const codeTool = createCodeTool({ tools: providers, executor });
  const out = await run(
    codeTool,
    `async () => {
      const errors = [];
      try { await kv.get({ key: "missing" }); } catch (e) { errors.push(e.message); }
      try { await codemode.add({ a: "two", b: 1 }); } catch (e) { errors.push(e.message); }
      return errors;
    }`,
  );
  assert.equal(out.result[0], "no value under missing");
  assert.match(out.result[1], /number/i);
});

test("the code's own failures and the gateway's limits fail the tool call", async () => {
  const { providers } = agentTools();
  const codeTool = createCodeTool({ tools: providers, executor });
  await assert.rejects(run(codeTool, `async () => { throw new Error("boom"); }`), /Code execution failed: boom/);
  // A tool that never answers: the execution's wall-clock limit ends it.
  const slow = new IsogateExecutor({ url, apiKey, limits: { wall_ms: 300 } });
  const result = await slow.execute("async () => await codemode.wait({})", [
    { name: "codemode", fns: { wait: () => new Promise(() => {}) } },
  ]);
  assert.equal(result.result, undefined);
  assert.match(result.error, /^wall_limit: /);
  // CPU: an endless loop is stopped by the tenant's CPU limit.
  const spin = await executor.execute("async () => { for (;;) {} }", []);
  assert.match(spin.error, /^cpu_limit: /);
});

test("the Executor contract: providers with preludes, the plain-functions form, bad names", async () => {
  const withPrelude = await executor.execute("async () => await codemode.quadruple(3)", [
    {
      name: "codemode",
      fns: { twice: async ({ x }) => 2 * x },
      prelude: "codemode.quadruple = async (x) => codemode.twice({ x: await codemode.twice({ x }) });",
    },
  ]);
  assert.deepEqual(withPrelude, { result: 12, logs: [] });
  const plain = await executor.execute("async () => codemode.echo({ said: 'hi' })", {
    echo: async (args) => args,
  });
  assert.deepEqual(plain.result, { said: "hi" });
  const bad = await executor.execute("async () => 1", [{ name: "not-valid", fns: {} }]);
  assert.match(bad.error, /not a valid JavaScript identifier/);
  assert.equal(sandboxName("get-weather"), "get_weather");
  assert.equal(sandboxName("delete"), "delete_");
  assert.equal(sandboxName("double"), "double_");
});

test("the gateway's policy applies to the code: denials are legible, keys are checked", async () => {
  const denied = await executor.execute(
    `async () => { try { await fetch("https://example.com/"); return "sent"; } catch (e) { return { code: e.code, hint: e.hint }; } }`,
    [],
  );
  assert.equal(denied.result.code, "EGRESS_DENIED");
  assert.ok(denied.result.hint, JSON.stringify(denied));
  const wrongKey = new IsogateExecutor({ url, apiKey: "not-a-key" });
  const refused = await wrongKey.execute("async () => 1", []);
  assert.match(refused.error, /HTTP 401/);
});
