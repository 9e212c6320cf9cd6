// Every router under /api/v1 maps errors the same way (src/apierror.ts): the images router, mounted
// on its own here, answers a uniqueness race with 409 like the nodes routes do, not 500.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { Hono } from "hono";
import type { Context } from "../src/context.ts";
import { imageRoutes } from "../src/images/api.ts";

/** The error node:sqlite really throws when a UNIQUE constraint fails (prepared or exec). */
function realConstraintError(via: "prepare" | "exec"): Error {
  const db = new DatabaseSync(":memory:");
  try {
    db.exec("CREATE TABLE t (name TEXT UNIQUE); INSERT INTO t VALUES ('a')");
    if (via === "exec") db.exec("INSERT INTO t VALUES ('a')");
    else db.prepare("INSERT INTO t VALUES (?)").run("a");
  } catch (e) {
    return e as Error;
  } finally {
    db.close();
  }
  throw new Error("no constraint error");
}

Deno.test("images API: a constraint race is 409, an unexpected error 500, both {error}", async () => {
  let raced = realConstraintError("prepare");
  const ctx = {
    images: {
      rename: () => {
        throw raced;
      },
      list: () => {
        throw new Error("disk on fire");
      },
      names: () => {
        throw new Error("disk on fire");
      },
    },
  } as unknown as Context;
  const app = new Hono().route("/api/v1/images", imageRoutes(ctx));
  const rename = () =>
    app.request("/api/v1/images/deb", { method: "PATCH", body: JSON.stringify({ name: "deb2" }) });
  let r = await rename();
  assert.equal(r.status, 409);
  assert.match((await r.json()).error, /UNIQUE constraint failed/);
  raced = realConstraintError("exec");
  r = await rename();
  assert.equal(r.status, 409);
  await r.body?.cancel();
  r = await app.request("/api/v1/images");
  assert.equal(r.status, 500);
  assert.match((await r.json()).error, /internal error: disk on fire/);
});
