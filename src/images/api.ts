// /api/v1/images: list, show, import (from a path on the server machine), rename, remove.
// An import asked with `accept: application/x-ndjson` streams progress lines {phase, done, total}
// then one final {image} or {error}; otherwise the reply is the plain JSON result.
import type { Hono } from "hono";
import { jsonBody } from "../api.ts";
import { apiRouter } from "../apierror.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import { logger } from "../log.ts";
import { validateName } from "./store.ts";

const log = logger("images");

export function imageRoutes(ctx: Context): Hono {
  const app = apiRouter();

  app.get("/", (c) => c.json(ctx.images.list()));
  // Names may hold "/" (alice/rpi:latest): the ref is the rest of the path.
  app.get("/:ref{.+}", (c) => c.json(ctx.images.get(c.req.param("ref"))));

  app.post("/", async (c) => {
    const body = await jsonBody(c.req.raw);
    const path = body.path, name = validateName(body.name);
    if (typeof path !== "string" || !path.startsWith("/")) {
      throw new UserError("path must be an absolute path on the server machine");
    }
    if (!c.req.header("accept")?.includes("application/x-ndjson")) {
      const image = await ctx.images.import(path, name);
      return c.json(image, image.existed ? 200 : 201);
    }
    // A client that goes away (Ctrl-C on `netroot image import`) cancels the stream, which
    // cancels the import. (request.signal is not used: Deno also aborts it on success.)
    const cancel = new AbortController();
    const enc = new TextEncoder();
    let out: ReadableStreamDefaultController<Uint8Array> | undefined;
    const readable = new ReadableStream<Uint8Array>({
      start: (controller) => void (out = controller),
      cancel: () => cancel.abort(),
    });
    const send = (o: unknown) => {
      try {
        out!.enqueue(enc.encode(JSON.stringify(o) + "\n"));
      } catch { /* closed */ }
    };
    let started = false, lastPhase = "", lastAt = 0;
    const first = Promise.withResolvers<void>();
    const job = ctx.images.import(path, name, {
      signal: cancel.signal,
      onProgress: (p) => {
        started = true;
        first.resolve();
        const now = performance.now();
        if (p.phase !== lastPhase || now - lastAt > 200 || p.done === p.total) {
          lastPhase = p.phase;
          lastAt = now;
          send(p);
        }
      },
    });
    // Errors found before any work (name taken, bad path, unknown format) get a real HTTP status.
    await Promise.race([first.promise, job.then(() => {}, () => {})]);
    if (!started) {
      const image = await job; // rethrows the early error
      return c.json(image, image.existed ? 200 : 201);
    }
    job.then(
      (image) => send({ image }),
      (e) => {
        if (!(e instanceof UserError)) log.error("import failed", { path, error: e });
        send({ error: (e as Error).message });
      },
    ).finally(() => {
      try {
        out!.close();
      } catch { /* cancelled */ }
    });
    return new Response(readable, { headers: { "content-type": "application/x-ndjson" } });
  });

  app.patch("/:ref{.+}", async (c) => {
    const body = await jsonBody(c.req.raw);
    return c.json(ctx.images.rename(c.req.param("ref"), validateName(body.name)));
  });

  app.delete("/:ref{.+}", (c) => {
    const image = ctx.images.get(c.req.param("ref"));
    ctx.images.remove(image.id);
    return c.json({ removed: image.id, name: image.name });
  });
  return app;
}
