// /api/v1/images: list, show, import (from a path on the server machine), rename, remove; versions
// (history, rollback, diff) and the object store's gc under /api/v1/images/-/.
// An import asked with `accept: application/x-ndjson` streams progress lines {phase, done, total}
// then one final {image} or {error}; otherwise the reply is the plain JSON result.
import type { Context as HonoContext, Hono } from "hono";
import { bearerAuth, jsonBody } from "../api.ts";
import { apiRouter } from "../apierror.ts";
import type { Context } from "../context.ts";
import { UserError } from "../errors.ts";
import { logger } from "../log.ts";
import { type Commit, validateName } from "./store.ts";
import { publish } from "./versions.ts";
import { copyIn, copyOut } from "./cp.ts";
import { build } from "./build.ts";
import { saveLiveNode, saveNode } from "./save.ts";

const log = logger("images");

export function imageRoutes(ctx: Context): Hono {
  const app = apiRouter();

  // Images by name (their current versions); ?all=1: every version.
  app.get(
    "/",
    (c) =>
      c.json(
        c.req.query("all") ? ctx.images.versions() : ctx.images.names(),
      ),
  );
  // Actions sit under "/-/" (no name starts with "-"), before the refs that may hold "/".
  app.get("/-/history/:ref{.+}", (c) => c.json(ctx.images.history(c.req.param("ref"))));
  // The token even to read: a diff reads both manifests and compares them on the server's only
  // thread, and answers with every path that differs. Open, a neighbour's asks for two images of
  // 400,000 files held that thread 4.4 s each, one after the other (DHCP, TFTP, every boot
  // waiting), and each unread answer kept its 16 MB.
  app.get("/-/diff", bearerAuth(ctx, { reads: true }), (c) => {
    const a = c.req.query("a"), b = c.req.query("b");
    if (!a || !b) throw new UserError("diff needs ?a=IMAGE&b=IMAGE");
    return c.json(ctx.images.diff(a, b));
  });
  app.post("/-/rollback", async (c) => {
    const body = await jsonBody(c.req.raw);
    if (typeof body.image !== "string") throw new UserError("rollback needs image");
    if (body.version !== undefined && typeof body.version !== "string") {
      throw new UserError("version must be a version id");
    }
    const r = await ctx.images.rollback(body.image, body.version as string | undefined);
    return c.json({ ...r, ...await publish(ctx, r.image, body.rebootNodes === true) });
  });
  app.post("/-/gc", async (c) => {
    const body = await jsonBody(c.req.raw);
    const keep = body.keep;
    if (keep !== undefined && (!Number.isInteger(keep) || (keep as number) < 1)) {
      throw new UserError("keep must be a whole number of versions, at least 1");
    }
    return c.json(await ctx.images.gc(keep as number | undefined));
  });
  // Sessions (image shell): an overlay on a version, its merged tree for the caller's container.
  app.post("/-/sessions", async (c) => {
    onServerMachine(c, "image shell");
    const body = await jsonBody(c.req.raw);
    if (typeof body.image !== "string") throw new UserError("a session needs image");
    const name = body.new === undefined ? undefined : validateName(body.new);
    // The caller's pid and start time (it runs on this machine): its session goes once it is
    // gone.
    const h = body.holder as { pid?: unknown; start?: unknown } | undefined;
    const holder = h && Number.isSafeInteger(h.pid) && (h.pid as number) > 0 &&
        typeof h.start === "string" && /^\d{1,20}$/.test(h.start)
      ? { pid: h.pid as number, start: h.start }
      : undefined;
    return c.json(await ctx.images.sessions.open(body.image, name, holder), 201);
  });
  app.post("/-/sessions/:id/commit", async (c) => {
    const body = await jsonBody(c.req.raw);
    const image = await ctx.images.sessions.commit(c.req.param("id"), {
      madeBy: body.madeBy === "build" ? "build" : "shell",
      command: typeof body.command === "string" ? body.command.slice(0, 4096) : null,
    });
    return c.json({ ...image, ...await publish(ctx, image, body.rebootNodes === true) });
  });
  app.delete("/-/sessions/:id", async (c) => {
    await ctx.images.sessions.discard(c.req.param("id"));
    return c.json({ discarded: c.req.param("id") });
  });
  // image cp: host paths (read or written by the server) into or out of an image.
  app.post("/-/cp", async (c) => {
    onServerMachine(c, "image cp HOST-PATH IMAGE:PATH");
    const body = await jsonBody(c.req.raw);
    const sources = body.sources, image = body.image, path = body.path;
    if (
      !Array.isArray(sources) || !sources.length ||
      !sources.every((p) => typeof p === "string" && p.startsWith("/")) ||
      typeof image !== "string" || typeof path !== "string" || !path.startsWith("/")
    ) {
      throw new UserError("cp needs sources (absolute host paths), image and path (absolute)");
    }
    const name = body.new === undefined ? undefined : validateName(body.new);
    const copied = async (signal?: AbortSignal) => {
      const out = await copyIn(ctx.images, sources as string[], image, path, {
        name,
        command: typeof body.command === "string" ? body.command.slice(0, 4096) : null,
        signal,
      });
      return { ...out, ...await publish(ctx, out, body.rebootNodes === true) };
    };
    if (!c.req.header("accept")?.includes("application/x-ndjson")) return c.json(await copied());
    // A client that goes away (Ctrl-C on `netroot image cp`) cancels the stream, which stops the
    // copy: nothing committed. (request.signal is not used: Deno also aborts it on success.)
    return ndjson((_send, signal) => copied(signal));
  });
  app.post("/-/cp-out", async (c) => {
    onServerMachine(c, "image cp IMAGE:PATH DEST");
    const body = await jsonBody(c.req.raw);
    const { image, path, dest } = body;
    if (
      typeof image !== "string" || typeof path !== "string" || typeof dest !== "string" ||
      !dest.startsWith("/")
    ) {
      throw new UserError("cp out needs image, path and dest (an absolute host path)");
    }
    return c.json(await copyOut(ctx.images, image, path, dest));
  });
  // node save: a node's overlay upper as a new version on the image the node booted, fetched from
  // the running node over ssh, or (upper) a tarball the server reads; the machine's own state
  // left out unless keepMachineState.
  app.post("/-/save", async (c) => {
    const body = await jsonBody(c.req.raw);
    const { node, upper } = body;
    if (upper !== undefined) onServerMachine(c, "node save --upper FILE");
    const name = validateName(body.name);
    if (
      typeof node !== "string" ||
      (upper !== undefined && (typeof upper !== "string" || !upper.startsWith("/")))
    ) {
      throw new UserError("save needs node, name and maybe upper (an absolute path on the server)");
    }
    const command = typeof body.command === "string" ? body.command.slice(0, 4096) : null;
    const opts = { keepMachineState: body.keepMachineState === true };
    const image = upper === undefined
      ? await saveLiveNode(ctx, node, name, command, {}, opts)
      : await saveNode(ctx, node, name, upper as string, command, opts);
    return c.json({ ...image, ...await publish(ctx, image, body.rebootNodes === true) });
  });
  // image build: the log streamed as NDJSON {log} lines, then {image} or {error}.
  app.post("/-/build", async (c) => {
    onServerMachine(c, "image build");
    const body = await jsonBody(c.req.raw);
    const { buildfile, context, from } = body;
    const name = validateName(body.name);
    if (
      typeof buildfile !== "string" || !buildfile.startsWith("/") ||
      typeof context !== "string" || !context.startsWith("/") ||
      (from !== undefined && typeof from !== "string")
    ) {
      throw new UserError("build needs name, buildfile and context (absolute host paths)");
    }
    const buildArgs = buildArgsOf(body.buildArgs);
    return ndjson(async (send, signal) => {
      const image = await build(ctx.images, {
        name,
        buildfile,
        context,
        from: from as string | undefined,
        buildArgs,
        command: typeof body.command === "string" ? body.command.slice(0, 4096) : null,
        log: (line) => send({ log: line }),
        signal,
      });
      return { ...image, ...await publish(ctx, image, body.rebootNodes === true) };
    });
  });
  // Names may hold "/" (alice/rpi:latest): the ref is the rest of the path.
  app.get("/:ref{.+}", (c) => c.json(ctx.images.get(c.req.param("ref"))));

  app.post("/", async (c) => {
    onServerMachine(c, "image import PATH");
    const body = await jsonBody(c.req.raw);
    const path = body.path, name = validateName(body.name);
    const rebootNodes = body.rebootNodes === true;
    if (typeof path !== "string" || !path.startsWith("/")) {
      throw new UserError("path must be an absolute path on the server machine");
    }
    const published = async (image: Commit) => ({
      ...image,
      ...await publish(ctx, image, rebootNodes && !image.existed),
    });
    if (!c.req.header("accept")?.includes("application/x-ndjson")) {
      const image = await published(await ctx.images.import(path, name));
      return c.json(image, image.existed ? 200 : 201);
    }
    // A client that goes away (Ctrl-C on `netroot image import`) cancels the stream, which
    // cancels the import. (request.signal is not used: Deno also aborts it on success.)
    const stream = ndjsonStream();
    let started = false, lastPhase = "", lastAt = 0;
    const first = Promise.withResolvers<void>();
    const job = ctx.images.import(path, name, {
      signal: stream.signal,
      onProgress: (p) => {
        started = true;
        first.resolve();
        const now = performance.now();
        if (p.phase !== lastPhase || now - lastAt > 200 || p.done === p.total) {
          lastPhase = p.phase;
          lastAt = now;
          stream.send(p);
        }
      },
    });
    // Errors found before any work (name taken, bad path, unknown format) get a real HTTP status.
    await Promise.race([first.promise, job.then(() => {}, () => {})]);
    if (!started) {
      const image = await published(await job); // rethrows the early error
      return c.json(image, image.existed ? 200 : 201);
    }
    return stream.finish(job.then(published), "import failed", { path });
  });

  app.patch("/:ref{.+}", async (c) => {
    const body = await jsonBody(c.req.raw);
    return c.json(ctx.images.rename(c.req.param("ref"), validateName(body.name)));
  });

  app.delete("/:ref{.+}", (c) => {
    const removed = ctx.images.remove(c.req.param("ref"));
    return c.json({
      removed: removed[0].id,
      name: removed[0].name,
      versions: removed.map((v) => v.id),
    });
  });
  return app;
}

/**
 * An NDJSON response: progress lines (`send`), then `finish(job)` ends it with {image: result} or
 * {error}; a client that goes away aborts `signal`.
 */
function ndjsonStream() {
  const cancel = new AbortController();
  const enc = new TextEncoder();
  let out: ReadableStreamDefaultController<Uint8Array> | undefined;
  /** Resolved when the reader takes a line from a full queue (or goes away). */
  let room: PromiseWithResolvers<void> | undefined;
  const wake = () => {
    room?.resolve();
    room = undefined;
  };
  const readable = new ReadableStream<Uint8Array>({
    start: (controller) => void (out = controller),
    pull: wake,
    cancel: () => {
      cancel.abort();
      wake();
    },
  }, new CountQueuingStrategy({ highWaterMark: 256 }));
  /** Queues a line; a promise when the queue is full: a job that can wait for its reader does
   *  (a build step printing without end to a client that reads slowly would fill the memory). */
  const send = (o: unknown): Promise<void> | undefined => {
    try {
      out!.enqueue(enc.encode(JSON.stringify(o) + "\n"));
    } catch {
      return undefined; // closed
    }
    if (cancel.signal.aborted || (out!.desiredSize ?? 1) > 0) return undefined;
    room ??= Promise.withResolvers();
    return room.promise;
  };
  const finish = (job: Promise<unknown>, failed: string, fields = {}): Response => {
    job.then(
      (image) => send({ image }),
      (e) => {
        if (!(e instanceof UserError)) log.error(failed, { ...fields, error: e });
        send({ error: (e as Error).message });
      },
    ).finally(() => {
      try {
        out!.close();
      } catch { /* cancelled */ }
    });
    return new Response(readable, { headers: { "content-type": "application/x-ndjson" } });
  };
  return { send, signal: cancel.signal, finish };
}

/** A job whose progress streams as NDJSON lines (`send`), ending with {image: result} or {error}. */
function ndjson(
  job: (send: (o: unknown) => Promise<void> | undefined, signal: AbortSignal) => Promise<unknown>,
): Response {
  const stream = ndjsonStream();
  return stream.finish(job(stream.send, stream.signal), "image job failed");
}

/**
 * What reads or writes the server's own files as root (an import's or a save's path, cp in and
 * out, a build's context) and what
 * runs a container as root (shell, build) is for the server machine's root: a request from
 * another host is refused. A build's RUN has the server's network: from a remote build it reached
 * the API on 127.0.0.1 and with it everything local-only, and `COPY` from a context of `/` showed
 * any file of the server in the build's log.
 */
function onServerMachine(c: HonoContext, what: string): void {
  const host = (c.env as Deno.ServeHandlerInfo<Deno.NetAddr> | undefined)?.remoteAddr?.hostname;
  if (host === undefined || host === "::1" || host.startsWith("127.")) return;
  throw new UserError(`${what} works on the server machine only (this request came from ${host})`);
}

/** A build's --build-arg values: ARG names to strings, a Buildfile's worth at most (they are
 *  substituted as its own text is). */
function buildArgsOf(v: unknown): Map<string, string> {
  const args = new Map<string, string>();
  if (v === undefined) return args;
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new UserError("buildArgs must be an object of names to strings");
  }
  let bytes = 0;
  for (const [k, value] of Object.entries(v)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || typeof value !== "string") {
      throw new UserError(`buildArgs: ${k.slice(0, 64)} must be an ARG name given a string`);
    }
    if ((bytes += k.length + value.length) > 1 << 20) {
      throw new UserError("buildArgs: more than 1 MiB");
    }
    args.set(k, value);
  }
  return args;
}
