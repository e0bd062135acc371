// Resolves `cloudflare:workers` to test/cloudflare-workers-shim.mjs (see register.mjs).
export async function resolve(specifier, context, next) {
  if (specifier === "cloudflare:workers") {
    return {
      url: new URL("./cloudflare-workers-shim.mjs", import.meta.url).href,
      shortCircuit: true,
    };
  }
  return next(specifier, context);
}
