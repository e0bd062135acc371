/**
 * `IsogateExecutor`: an `Executor` for `@cloudflare/codemode` that runs the model's code in an
 * isogate gateway instead of a Cloudflare Dynamic Worker.
 *
 * The code runs once in a fresh QuickJS isolate of the gateway (`POST /v1/execute`), under the
 * tenant's CPU, memory, wall-clock and subrequest limits, with the tenant's egress policy on
 * every `fetch()` and the tenant's APIs as `env.<api>`. The tools stay in this process: each
 * provider is a namespace of the snippet (`codemode.search(…)`), and every call the code makes
 * streams back as an event that this executor answers by calling the provider's function
 * (the gateway's streamed protocol, `Accept: application/x-ndjson`).
 *
 * Only type imports come from `@cloudflare/codemode`: this module runs wherever `fetch` and
 * web streams do (Node.js 20+, Deno, Bun, Workers).
 */
import type {
  ExecuteOptions,
  ExecuteResult,
  Executor,
  ResolvedProvider,
} from "@cloudflare/codemode";

/** How to reach the gateway, and what to ask of it. */
export interface IsogateExecutorOptions {
  /** The gateway's ingress, e.g. `http://127.0.0.1:8080` (no trailing path). */
  url: string;
  /** The tenant's API key (sent as `Authorization: Bearer …`). */
  apiKey: string;
  /**
   * Lower limits for these executions than the tenant's (`cpu_ms`, `memory_mb`, `wall_ms`,
   * `subrequests`); the gateway never raises them above the tenant's. `wall_ms` also bounds
   * how long a tool call may take to be answered.
   */
  limits?: {
    cpu_ms?: number;
    memory_mb?: number;
    wall_ms?: number;
    subrequests?: number;
  };
  /** JSON the code receives as its `env` argument, besides the tenant's APIs. */
  env?: Record<string, unknown>;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Cancels the execution (the gateway then fails the code's waiting tool calls). */
  signal?: AbortSignal;
}

type ToolFn = (...args: unknown[]) => Promise<unknown>;

/** One event of the gateway's stream. */
type Event =
  | {
      type: "call";
      id: string;
      tool: string;
      args: unknown;
      reply_to: string;
    }
  | {
      type: "result";
      result: unknown;
      logs: { level: string; message: string }[];
      error: { kind: string; message: string } | null;
    };

// The names codemode gives tools in the sandbox: the rule of its `sanitizeToolName`
// (@cloudflare/codemode, MIT, Cloudflare, Inc.), so that the types it generated for the model
// and the functions the code calls agree.
const JS_RESERVED = new Set(
  (
    "abstract arguments await boolean break byte case catch char class const continue debugger " +
    "default delete do double else enum eval export extends false final finally float for " +
    "function goto if implements import in instanceof int interface let long native new null " +
    "package private protected public return short static super switch synchronized this throw " +
    "throws transient true try typeof undefined var void volatile while with yield"
  ).split(" "),
);

/** A tool's name in the sandbox: what `@cloudflare/codemode` calls it (`get-sum` → `get_sum`). */
export function sandboxName(name: string): string {
  if (!name) return "_";
  let out = name.replace(/[-.\s]/g, "_").replace(/[^a-zA-Z0-9_$]/g, "");
  if (!out) return "_";
  if (/^[0-9]/.test(out)) out = "_" + out;
  if (JS_RESERVED.has(out)) out = out + "_";
  return out;
}

const VALID_NAMESPACE = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/**
 * Runs codemode's generated code in an isogate gateway. Never throws: a failure (the code's,
 * a limit, the gateway refusing) is the result's `error`.
 */
export class IsogateExecutor implements Executor {
  readonly #options: IsogateExecutorOptions;
  readonly #fetch: typeof fetch;

  constructor(options: IsogateExecutorOptions) {
    if (!options.url || !options.apiKey) {
      throw new TypeError("IsogateExecutor needs the gateway's `url` and a tenant `apiKey`");
    }
    this.#options = { ...options, url: options.url.replace(/\/+$/, "") };
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  async execute(
    code: string,
    providersOrFns: ResolvedProvider[] | Record<string, ToolFn>,
    options?: ExecuteOptions,
  ): Promise<ExecuteResult> {
    try {
      return await this.#execute(code, providersOrFns, options);
    } catch (e) {
      return { result: undefined, error: e instanceof Error ? e.message : String(e) };
    }
  }

  async #execute(
    code: string,
    providersOrFns: ResolvedProvider[] | Record<string, ToolFn>,
    options?: ExecuteOptions,
  ): Promise<ExecuteResult> {
    if (options?.connectors?.length) {
      return {
        result: undefined,
        error: "IsogateExecutor does not run connectors (Workers RPC bindings); pass tools as providers",
      };
    }
    const providers: ResolvedProvider[] = Array.isArray(providersOrFns)
      ? providersOrFns
      : [{ name: "codemode", fns: providersOrFns }];
    // namespace → sandbox name → function
    const fns = new Map<string, Map<string, ToolFn>>();
    const tools: Record<string, string[]> = {};
    for (const provider of providers) {
      if (!VALID_NAMESPACE.test(provider.name)) {
        return {
          result: undefined,
          error: `Provider name "${provider.name}" is not a valid JavaScript identifier`,
        };
      }
      if (fns.has(provider.name)) {
        return { result: undefined, error: `Duplicate provider name "${provider.name}"` };
      }
      const byName = new Map<string, ToolFn>();
      const original = new Map<string, string>();
      for (const [name, fn] of Object.entries(provider.fns)) {
        const safe = sandboxName(name);
        const taken = original.get(safe);
        if (taken !== undefined && taken !== name) {
          return {
            result: undefined,
            error: `Tool names "${taken}" and "${name}" both sanitize to "${safe}" in provider "${provider.name}"`,
          };
        }
        original.set(safe, name);
        byName.set(safe, fn);
      }
      fns.set(provider.name, byName);
      tools[provider.name] = [...byName.keys()];
    }
    // A provider's prelude runs first, in the scope where its namespace is a variable.
    const preludes = providers.map((p) => p.prelude ?? "").filter((p) => p.trim() !== "");
    const body = preludes.length
      ? `async (env) => {\n${preludes.join("\n")}\nreturn await (\n${code}\n)(env);\n}`
      : code;

    const request: Record<string, unknown> = { code: body, tools };
    if (this.#options.limits) request.limits = this.#options.limits;
    if (this.#options.env) request.env = this.#options.env;
    const response = await this.#fetch(`${this.#options.url}/v1/execute`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${this.#options.apiKey}`,
        accept: "application/x-ndjson",
        "content-type": "application/json",
      },
      body: JSON.stringify(request),
      signal: this.#options.signal,
    });
    if (!response.ok || !response.body) {
      const text = await response.text().catch(() => "");
      let message = text;
      try {
        message = JSON.parse(text).error.message ?? text;
      } catch {
        // not the gateway's JSON error
      }
      return {
        result: undefined,
        error: `the isogate gateway refused the execution (HTTP ${response.status}): ${message}`,
      };
    }

    for await (const event of events(response.body)) {
      if (event.type === "call") {
        // Answered concurrently; a tool still running when the result comes (the code did not
        // wait for it, or a limit ended the execution) gets 410 when it answers.
        this.#answer(event, fns).catch(() => {});
        continue;
      }
      const logs = event.logs.map((l) =>
        l.level === "log" || l.level === "info" ? l.message : `[${l.level}] ${l.message}`,
      );
      if (event.error) {
        return { result: undefined, error: errorText(event.error), logs };
      }
      return { result: event.result, logs };
    }
    return { result: undefined, error: "the isogate gateway ended the stream without a result" };
  }

  /** Calls the tool and posts its result (or its error's message) to the call's `reply_to`. */
  async #answer(
    event: Extract<Event, { type: "call" }>,
    fns: Map<string, Map<string, ToolFn>>,
  ): Promise<void> {
    const dot = event.tool.indexOf(".");
    const fn = fns.get(event.tool.slice(0, dot))?.get(event.tool.slice(dot + 1));
    let reply: string;
    try {
      if (!fn) throw new Error(`Tool "${event.tool}" not found`);
      const result = await fn(event.args);
      reply = JSON.stringify({ result: result === undefined ? null : result });
    } catch (e) {
      reply = JSON.stringify({ error: e instanceof Error ? e.message : String(e) });
    }
    const response = await this.#fetch(`${this.#options.url}${event.reply_to}`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${this.#options.apiKey}`,
        "content-type": "application/json",
      },
      body: reply,
      signal: this.#options.signal,
    });
    // 410: the execution ended meanwhile (a limit, or the code did not wait for this call).
    await response.body?.cancel();
  }
}

/**
 * The `error` codemode expects: what the code threw, as `err.message` would say it (the
 * gateway's message carries the error's name and stack: `Error: boom\n    at …`), or the limit
 * that stopped it (`wall_limit: …`).
 */
function errorText(error: { kind: string; message: string }): string {
  if (error.kind !== "exception" && error.kind !== "syntax") {
    return `${error.kind}: ${error.message}`;
  }
  const first = error.message.split("\n", 1)[0] ?? "";
  return first.startsWith("Error: ") ? first.slice("Error: ".length) : first;
}

/** The NDJSON events of a response body, one per line. */
async function* events(body: ReadableStream<Uint8Array>): AsyncGenerator<Event> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffered += decoder.decode(value, { stream: true });
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line) yield JSON.parse(line) as Event;
    }
    if (done) {
      if (buffered.trim()) yield JSON.parse(buffered) as Event;
      return;
    }
  }
}
