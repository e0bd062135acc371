// A hono app exercising what Workers written on hono use: routing, groups, params, JSON, and the
// built-in middleware that needs Web APIs (crypto.subtle, CompressionStream, streams).
import { Hono } from "hono";
import { basicAuth } from "hono/basic-auth";
import { bearerAuth } from "hono/bearer-auth";
import { jwt, sign } from "hono/jwt";
import { etag } from "hono/etag";
import { cors } from "hono/cors";
import { compress } from "hono/compress";
import { prettyJSON } from "hono/pretty-json";
import { getSignedCookie, setSignedCookie } from "hono/cookie";
import { stream, streamSSE, streamText } from "hono/streaming";
import { HTTPException } from "hono/http-exception";

const JWT_SECRET = "fixture-jwt-secret";
const COOKIE_SECRET = "fixture-cookie-secret";

const app = new Hono();

app.get("/", (c) => c.text("hono on isogate"));
app.get("/users/:id", (c) => c.json({ id: c.req.param("id"), q: c.req.query("q") ?? null }));
app.post("/echo", async (c) => {
  const body = await c.req.json();
  return c.json({ got: body, type: c.req.header("content-type") }, 201);
});
app.post("/form", async (c) => {
  const body = await c.req.parseBody();
  return c.json(body);
});

const api = new Hono();
api.use("*", bearerAuth({ token: "fixture-token" }));
api.get("/items", (c) => c.json([{ id: 1 }, { id: 2 }]));
app.route("/api", api);

app.use("/admin/*", basicAuth({ username: "admin", password: "s3cret" }));
app.get("/admin/panel", (c) => c.text("welcome, admin"));

app.get("/jwt-token", async (c) => c.text(await sign({ sub: "agent-7", exp: Math.floor(Date.now() / 1000) + 60 }, JWT_SECRET)));
app.use("/jwt/*", jwt({ secret: JWT_SECRET, alg: "HS256" }));
app.get("/jwt/me", (c) => c.json({ sub: c.get("jwtPayload").sub }));

app.use("/etag/*", etag());
app.get("/etag/doc", (c) => c.text("a document whose etag is its digest"));

app.use("/cors/*", cors({ origin: "https://app.example", allowMethods: ["GET", "POST"] }));
app.get("/cors/data", (c) => c.json({ ok: true }));

app.use("/compress/*", compress());
app.get("/compress/big", (c) => c.text("compress me ".repeat(2000)));

app.use("/pretty/*", prettyJSON());
app.get("/pretty/obj", (c) => c.json({ a: 1, b: [true] }));

app.get("/cookie/set", async (c) => {
  await setSignedCookie(c, "session", "agent-7", COOKIE_SECRET, { path: "/" });
  return c.text("set");
});
app.get("/cookie/get", async (c) => {
  const value = await getSignedCookie(c, COOKIE_SECRET, "session");
  return c.json({ session: value === false ? "tampered" : (value ?? null) });
});

app.get("/stream", (c) =>
  stream(c, async (s) => {
    for (const part of ["one ", "two ", "three"]) await s.write(part);
  }),
);
app.get("/stream-text", (c) =>
  streamText(c, async (s) => {
    await s.writeln("line 1");
    await s.sleep(5);
    await s.writeln("line 2");
  }),
);
app.get("/sse", (c) =>
  streamSSE(c, async (s) => {
    for (let i = 1; i <= 3; i++) await s.writeSSE({ event: "tick", id: String(i), data: `n=${i}` });
  }),
);
// The proxy pattern: a new Response around another response's body and init.
app.get("/proxy", async (c) => {
  const inner = await app.request("/users/42?q=proxied");
  const res = new Response(inner.body, inner);
  res.headers.set("x-proxied", "1");
  return res;
});

app.get("/boom", () => {
  throw new HTTPException(418, { message: "teapot" });
});
app.notFound((c) => c.json({ error: "not found", path: c.req.path }, 404));
app.onError((err, c) => {
  if (err instanceof HTTPException) return c.text(err.message, err.status);
  return c.text(`error: ${err.message}`, 500);
});

export default app;
