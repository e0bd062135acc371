// An itty-router app: AutoRouter (json formatting, 404s, errors), params, query, CORS.
import { AutoRouter, cors, error, json, text, status } from "itty-router";

const { preflight, corsify } = cors({ origin: "https://app.example" });
const router = AutoRouter({ before: [preflight], finally: [corsify] });

router
  .get("/", () => text("itty on isogate"))
  .get("/items/:id", ({ id, query }) => ({ id, verbose: query.verbose ?? null }))
  .post("/items", async (request) => {
    const body = await request.json();
    return json({ created: body }, { status: 201 });
  })
  .get("/text", () => text("plain"))
  .get("/teapot", () => error(418, "short and stout"))
  .get("/nobody", () => status(204))
  .get("/throws", () => {
    throw new Error("kaboom");
  });

export default { ...router };
