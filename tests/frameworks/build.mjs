// Bundles each app in src/ into one ES module in dist/ (what a user uploads to isogate).
// Run from this directory: `npm ci && node build.mjs`.
import { build } from "esbuild";

for (const name of ["hono-app", "itty-app"]) {
  await build({
    entryPoints: [`src/${name}.js`],
    outfile: `dist/${name}.js`,
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    minify: false,
    legalComments: "inline",
    logLevel: "warning",
  });
}
