// Validates the Prometheus Operator objects (monitoring.coreos.com/v1 ServiceMonitor and
// PrometheusRule) of multi-document YAML files against the operator's schemas, for
// tests/deploy.rs (kubernetes-validate has no schema for these kinds).
//
//   node tests/crd/validate.mjs FILE.yaml...
//
// The schemas are those of @kubernetes-models/prometheus-operator (pinned in package.json):
// JSON-schema validators generated from the operator's API types
// (github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1, the types the
// CRDs' openAPIV3Schema is generated from), checking types, required fields, enums and
// patterns (durations, for example). They do not reject fields the schema does not know, where
// the API server (strict field validation) and `kubectl apply` do: so every field of an object
// is also probed, by putting a value of no JSON type in its place; a field whose replacement
// the schema does not reject is one the schema does not describe, and an error here.
//
// Other documents (other kinds) are skipped: kubernetes-validate checks them. Prints one line
// per object and a summary; exits 0 when every object passed, 1 when one did not, 2 when the
// packages are missing or a file does not parse.
//
// The packages come from `npm ci` of this folder's package-lock.json, in the folder named by
// ISOGATE_CRD_MODULES (the one holding node_modules; scripts/prerequisites.sh's
// ensure_crd_validator installs them under target/tools/crd-validator and sets it).

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// ISOGATE_CRD_MODULES, else this folder (`npm ci --prefix tests/crd`), else where
// ensure_crd_validator puts them by default.
const root =
  process.env.ISOGATE_CRD_MODULES ||
  [here, join(here, "..", "..", "target", "tools", "crd-validator")].find((dir) =>
    existsSync(join(dir, "node_modules")),
  ) ||
  here;
const modules = join(root, "node_modules");
const INSTALL =
  "install them with `. scripts/prerequisites.sh && ensure_crd_validator` (from the repository's " +
  "root; .ci/run does it) or `npm ci --prefix tests/crd`";

function fail(message) {
  console.error(`crd-validate: ${message}`);
  process.exit(2);
}

// The installed packages must be the pinned ones (a stale install is an error, not a pass).
const wanted = JSON.parse(readFileSync(join(here, "package.json"), "utf8")).dependencies;
for (const [name, version] of Object.entries(wanted)) {
  let installed;
  try {
    installed = JSON.parse(readFileSync(join(modules, name, "package.json"), "utf8")).version;
  } catch {
    fail(`${name} is not installed under ${modules}: ${INSTALL}`);
  }
  if (installed !== version) {
    fail(`${modules} has ${name} ${installed}, tests/crd/package.json pins ${version}: ${INSTALL}`);
  }
}

async function load(path) {
  return import(pathToFileURL(join(modules, path)).href);
}
const { parseAllDocuments } = await load("yaml/dist/index.js");
const operator = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
const KINDS = {
  ServiceMonitor: (await load(`${operator}/ServiceMonitor.js`)).ServiceMonitor,
  PrometheusRule: (await load(`${operator}/PrometheusRule.js`)).PrometheusRule,
};
const API_VERSION = "monitoring.coreos.com/v1";

// The schema errors of `object` ([] when valid): the package's generated validator, run on the
// plain object (as the model's validate() does on its own copy).
function schemaErrors(Kind, object) {
  try {
    Kind.prototype.validate.call(object);
    return [];
  } catch (e) {
    if (Array.isArray(e?.errors)) {
      return e.errors;
    }
    // A validator that throws on the probe value has looked at it: not a schema answer.
    return [{ instancePath: "", message: String(e), thrown: true }];
  }
}

const PROBE = Symbol("not a JSON value");

function jsonPointer(path) {
  return path.map((p) => "/" + String(p).replace(/~/g, "~0").replace(/\//g, "~1")).join("");
}

function dotted(path) {
  return path
    .map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`))
    .join("");
}

// Every field of `value` (at `path` in `object`) that the schema does not constrain: replaced
// by PROBE, no error names it or anything below it.
function unknownFields(Kind, object, value, path, found) {
  if (Array.isArray(value)) {
    value.forEach((item, i) => unknownFields(Kind, object, item, [...path, i], found));
    return;
  }
  if (value === null || typeof value !== "object") {
    return;
  }
  for (const key of Object.keys(value)) {
    const original = value[key];
    const at = [...path, key];
    const pointer = jsonPointer(at);
    value[key] = PROBE;
    const errors = schemaErrors(Kind, object);
    value[key] = original;
    const constrained = errors.some(
      (e) => e.thrown || e.instancePath === pointer || e.instancePath.startsWith(pointer + "/"),
    );
    if (constrained) {
      unknownFields(Kind, object, original, at, found);
    } else {
      found.push(dotted(at));
    }
  }
}

function describe(error) {
  const where = error.instancePath
    ? dotted(
        error.instancePath
          .slice(1)
          .split("/")
          .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"))
          .map((p) => (/^\d+$/.test(p) ? Number(p) : p)),
      )
    : "(object)";
  let detail = error.message || error.keyword;
  if (error.keyword === "required") {
    detail = `must have required property '${error.params.missingProperty}'`;
  } else if (error.keyword === "type") {
    detail = `must be ${error.params.type}`;
  } else if (error.keyword === "pattern") {
    detail = `must match pattern "${error.params.pattern}"`;
  } else if (error.keyword === "enum") {
    detail = `must be one of ${JSON.stringify(error.params.allowedValues)}`;
  }
  return `${where}: ${detail}`;
}

const files = process.argv.slice(2);
if (files.length === 1 && files[0] === "--check") {
  // The packages are installed and load (scripts/prerequisites.sh asks this).
  console.log(`crd-validate: packages loaded from ${modules}`);
  process.exit(0);
}
if (files.length === 0) {
  fail("usage: node tests/crd/validate.mjs FILE.yaml... | --check");
}
const counts = {};
let failed = 0;
for (const file of files) {
  let text;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    fail(`reading ${file}: ${e.message}`);
  }
  // YAML 1.1, as Kubernetes' own YAML parser reads manifests (`yes` is a boolean there).
  const docs = parseAllDocuments(text, { version: "1.1", uniqueKeys: true });
  for (const doc of docs) {
    if (doc.errors.length > 0) {
      fail(`${file} is not valid YAML: ${doc.errors.map((e) => e.message).join("; ")}`);
    }
    const object = doc.toJS({ maxAliasCount: 0 });
    if (object === null || object === undefined) {
      continue;
    }
    const group = String(object.apiVersion ?? "").split("/")[0];
    if (group !== "monitoring.coreos.com") {
      continue;
    }
    const name = `${object.kind} ${object.metadata?.namespace ?? "-"}/${object.metadata?.name ?? "?"}`;
    const Kind = KINDS[object.kind];
    let problems;
    if (!Kind || object.apiVersion !== API_VERSION) {
      problems = [
        `no schema here for ${object.apiVersion} ${object.kind} (only ${API_VERSION} ` +
          `${Object.keys(KINDS).join(", ")}): add it to tests/crd/validate.mjs`,
      ];
    } else {
      problems = schemaErrors(Kind, object).map(describe);
      const unknown = [];
      unknownFields(Kind, object, object, [], unknown);
      problems.push(...unknown.map((f) => `${f}: unknown field (not in the ${object.kind} schema)`));
      // A type error can come twice (a named type and its use both say `type: string`).
      problems = [...new Set(problems)];
    }
    counts[object.kind] = (counts[object.kind] ?? 0) + 1;
    if (problems.length === 0) {
      console.log(`ok: ${name} (${file})`);
    } else {
      failed += 1;
      for (const problem of problems) {
        console.log(`error: ${name} (${file}): ${problem}`);
      }
    }
  }
}
const total = Object.values(counts).reduce((a, b) => a + b, 0);
const byKind = Object.entries(counts)
  .map(([kind, n]) => `${kind}: ${n}`)
  .join(", ");
console.log(`checked ${total} objects (${byKind || "none"}), ${failed} with errors`);
process.exit(failed > 0 ? 1 : 0);
