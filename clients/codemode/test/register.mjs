// @cloudflare/codemode's entry points import `cloudflare:workers` (for its Workers-only
// DynamicWorkerExecutor and connectors). Under Node.js that specifier does not exist; this
// maps it to empty base classes (test/cloudflare-workers-shim.mjs). Everything the tests use
// from codemode (createCodeTool, runCode, the Executor contract) is the package's own code.
import { register } from "node:module";

register("./cloudflare-workers-loader.mjs", import.meta.url);
