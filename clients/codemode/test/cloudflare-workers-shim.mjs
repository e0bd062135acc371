// The classes @cloudflare/codemode extends from `cloudflare:workers`, empty: the tests never
// construct its Workers-only parts (see register.mjs).
export class RpcTarget {}
export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}
export class DurableObject extends WorkerEntrypoint {}
