// HTTP boot, mounted at /boot:
//   GET  /boot/<mac>.ipxe         the node's iPXE script (kernel + initramfs URLs, command line)
//   GET  /boot/<mac>/kernel       the kernel of the node's image        (Range, HEAD)
//   GET  /boot/<mac>/initramfs    the netroot initramfs, or the image's own (setting `initramfs`)
//   GET  /boot/<mac>/manifest     the content manifest of the node's image (hybrid mode)
//   POST /boot/report             a boot stage reported by the node-side init (per-boot token,
//                                 refused once the boot is over: src/boots.ts bootExpiry)
//   GET  /boot/ipxe/<file>        iPXE binaries from config.ipxeDir (UEFI HTTP boot, see dhcp4)
// <mac> may be aa:bb:…, aa-bb-… (iPXE ${net0/mac:hexhyp}) or 12 hex digits. Every fetch lands on
// the node's timeline (events table), within the rate limit of the sender's address (src/events.ts
// recordFromSource: a tight budget for unknown MACs, refusals and bad reports, a wide one for a
// registered node's boot). The per-boot token is a secret: it is in the script and nowhere else
// (not in events, logs or API answers).
// The routes decide nothing about a node's boot: they ask the HttpBooter (./booter.ts; the plan
// is src/boot/plan.ts) and render its answer.
import { BootFileCache } from "./bootcache.ts";
import type { BootFileKind, HttpBooter, Refusal } from "./booter.ts";
import { isIPv4 } from "../contract/ipv4.ts";
import { parseMac } from "../contract/mac.ts";
import { parseReports, PROGRESS_STAGES, reportFields } from "../contract/report.ts";
import { Hono } from "hono";
import type { Context as HonoContext } from "hono";
import { join } from "node:path";
import { BodyRefusal, sourceOf, textUpTo } from "./httpbody.ts";
import { isLocalClient } from "./shares.ts";
import { logger } from "../src/log.ts";
import { renderPlanScript, renderRefusalScript } from "./ipxe.ts";
import { ipxeFile } from "./tftp/resolve.ts";

const log = logger("http");

/** The MAC in a URL segment (any common spelling), or undefined. */
export function parseMacParam(s: string): string | undefined {
  try {
    return parseMac(decodeURIComponent(s));
  } catch {
    return undefined; // a malformed %-escape
  }
}

export type ByteRange = { start: number; end: number }; // inclusive end

/**
 * A `Range` header against a file of `size` bytes: undefined → send everything (no header, another
 * unit, or several ranges, which RFC 9110 lets a server ignore); "unsatisfiable" → 416.
 */
export function parseRange(
  header: string | undefined,
  size: number,
): ByteRange | "unsatisfiable" | undefined {
  if (!header) return undefined;
  // Blanks only where one `\s*` alone can take them: with two in a row (around an empty number),
  // the regex tried every split of a run of blanks, and a 60 KB Range header of them held the
  // server's only thread 1.5 to 4 s a request.
  const m = /^\s*bytes\s*=\s*(?:(\d+)\s*)?-\s*(?:(\d+)\s*)?$/i.exec(header);
  if (!m) {
    return /^\s*bytes\s*=/i.test(header) && !header.includes(",") ? "unsatisfiable" : undefined;
  }
  const [a = "", b = ""] = [m[1], m[2]];
  if (a === "" && b === "") return "unsatisfiable";
  if (a === "") {
    const n = Number(b); // suffix: the last n bytes
    if (n === 0 || size === 0) return "unsatisfiable";
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  const end = b === "" ? size - 1 : Math.min(Number(b), size - 1);
  if (start >= size || start > end) return "unsatisfiable";
  return { start, end };
}

// 512 KiB reads: measured on loopback, 256–512 KiB keep up with nginx's sendfile where file.readable's
// 64 KiB chunks reach ~70 % of it (bench/http_bench.ts).
const chunk = 512 << 10;

/** A file (or a slice of it) as a response body; `onEnd` gets the bytes sent and whether the
 *  client took all of them (a reset download counts as incomplete). */
function fileBody(
  file: Deno.FsFile,
  start: number,
  length: number,
  onEnd: (bytes: number, complete: boolean) => void,
): ReadableStream<Uint8Array> {
  let sent = 0;
  let positioned = false;
  const finish = (complete: boolean) => {
    try {
      file.close();
    } catch { /* closed */ }
    onEnd(sent, complete);
  };
  return new ReadableStream({
    async pull(ctl) {
      try {
        if (!positioned) {
          if (start > 0) await file.seek(start, Deno.SeekMode.Start);
          positioned = true;
        }
        const buf = new Uint8Array(Math.min(chunk, length - sent));
        const n = buf.length ? await file.read(buf) : null;
        if (n === null) {
          ctl.close();
          return finish(sent === length);
        }
        sent += n;
        ctl.enqueue(n === buf.length ? buf : buf.subarray(0, n));
        if (sent >= length) {
          ctl.close();
          finish(true);
        }
      } catch (e) {
        ctl.error(e);
        finish(false);
      }
    },
    cancel() {
      finish(false);
    },
  }, { highWaterMark: 2 });
}

const memoryChunk = 4 << 20;

/** A slice of an in-memory file as a response body (views, no copies), counting what was sent. */
function memoryBody(
  bytes: Uint8Array,
  start: number,
  length: number,
  onEnd: (bytes: number, complete: boolean) => void,
): ReadableStream<Uint8Array> {
  let at = start;
  const end = start + length;
  let ended = false;
  const finish = (complete: boolean) => {
    if (ended) return;
    ended = true;
    onEnd(at - start, complete);
  };
  return new ReadableStream({
    pull(ctl) {
      const next = Math.min(at + memoryChunk, end);
      ctl.enqueue(bytes.subarray(at, next));
      at = next;
      if (at >= end) {
        ctl.close();
        finish(true);
      }
    },
    cancel() {
      finish(false);
    },
  });
}

// These routes are open to the boot network: an unknown MAC (a loop of retries) is written to the
// events table at most once a minute per MAC, and a flood of made-up ones at most at the rate
// limit of its source address (recordFromSource). Each bootRoutes instance remembers its own.
type UnknownNoted = (mac: string) => boolean;
function unknownNotes(): UnknownNoted {
  const seen = new Map<string, number>();
  return (mac, now = Date.now()) => {
    const last = seen.get(mac);
    if (last !== undefined && now - last < 60_000) return false;
    if (seen.size >= 10_000) seen.clear();
    seen.set(mac, now);
    return true;
  };
}

/** Serves a file with Content-Length, Accept-Ranges and Range (206/416); HEAD sends headers only. */
async function sendFile(
  c: HonoContext,
  cache: BootFileCache,
  path: string,
  contentType: string,
  onEnd?: (bytes: number, ms: number, complete: boolean) => void,
): Promise<Response> {
  const name = path.slice(path.lastIndexOf("/") + 1);
  const missing = (e: unknown) =>
    e instanceof Deno.errors.NotFound ? new Deno.errors.NotFound(`${name} is missing`) : e;
  const notRegular = () => new Deno.errors.NotFound(`${name} is not a regular file`);
  // A boot file is nearly always in the cache: a stat finds it there, and only a file that is not
  // is opened (then measured again through its descriptor: it may have been replaced since). The
  // stat is synchronous: a local inode's attributes take microseconds, where an async open and
  // fstat each went through the blocking thread pool (≈ 0.2 ms of every download's time to its
  // first byte on loopback, bench/http_bench.ts).
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path);
  } catch (e) {
    throw missing(e);
  }
  if (!st.isFile) throw notRegular();
  const head = c.req.method === "HEAD"; // headers only: neither the cache nor the file
  const cached = head ? undefined : cache.get(path, st);
  let file: Deno.FsFile | undefined;
  if (!head && !cached) {
    file = await Deno.open(path, { read: true }).catch((e) => {
      throw missing(e);
    });
    st = await file.stat().catch((e) => {
      file!.close();
      throw e;
    });
    if (!st.isFile) {
      file.close();
      throw notRegular();
    }
  }
  const range = parseRange(c.req.header("range"), st.size);
  const headers: Record<string, string> = {
    "content-type": contentType,
    "accept-ranges": "bytes",
    "cache-control": "no-store",
  };
  if (range === "unsatisfiable") {
    file?.close();
    return new Response(null, {
      status: 416,
      headers: { ...headers, "content-range": `bytes */${st.size}` },
    });
  }
  const { start, end } = range ?? { start: 0, end: st.size - 1 };
  const length = end - start + 1;
  headers["content-length"] = String(length);
  if (range) headers["content-range"] = `bytes ${start}-${end}/${st.size}`;
  const status = range ? 206 : 200;
  if (head || length === 0) {
    file?.close();
    return new Response(null, { status, headers });
  }
  const t0 = performance.now();
  const ended = (bytes: number, complete: boolean) =>
    onEnd?.(bytes, Math.round(performance.now() - t0), complete);
  const body = cached
    ? memoryBody(await cached.catch((e) => Promise.reject(missing(e))), start, length, ended)
    : fileBody(file!, start, length, ended);
  return new Response(body, { status, headers });
}

// ---- /boot's one error style (as src/apierror.ts is /api's) ----------------------------------
// A script fetch (iPXE) that cannot boot gets a refusal script (200: iPXE shows its text on the
// node's screen, and would only print the status of an error); every other refusal is one plain
// line with its HTTP status.

type Status = 200 | 400 | 403 | 404 | 408 | 413 | 500 | 503;

const text = (c: HonoContext, body: string, status: Status = 200) =>
  c.body(body, status, {
    "content-type": "text/plain; charset=utf-8",
    "cache-control": "no-store",
  });

/** A refusal, one line: as an iPXE script for a script fetch, else plain text with `status`. */
function refusal(c: HonoContext, message: string, status: Status, asScript = false): Response {
  return asScript ? text(c, renderRefusalScript(message)) : text(c, `${message}\n`, status);
}

/** A file the booter could not produce: missing (404) or the server's failure (500). */
function fileErrorStatus(e: unknown): 404 | 500 {
  const missing = e instanceof Deno.errors.NotFound ||
    (e as { code?: string }).code === "ENOENT" ||
    (e as { status?: number }).status === 404;
  return missing ? 404 : 500;
}

/** The client's IPv4 address as Deno.serve saw it (Hono passes the serve info as env). */
function remoteIpv4(c: HonoContext): string | undefined {
  const addr = (c.env as Deno.ServeHandlerInfo<Deno.NetAddr> | undefined)?.remoteAddr;
  const ip = addr?.hostname?.replace(/^::ffff:/, "");
  // Loopback is a test or a local client, never a node's boot address.
  return ip && isIPv4(ip) && !ip.startsWith("127.") ? ip : undefined;
}

/** The sender's address as a node's would be written (an IPv4 one without its `::ffff:`);
 *  undefined for the server machine's own (isLocalClient). */
function nodeSource(c: HonoContext): string | undefined {
  const source = sourceOf(c);
  return source && !isLocalClient(source) ? source.replace(/^::ffff:/, "") : undefined;
}

/** A report's free-form detail, at most 4 KiB of it: each stored event stays small. */
function boundedDetail(v: unknown): unknown {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length <= 4096 ? v : `${s.slice(0, 4096)}… (${s.length} characters)`;
}

/** GET /boot/<mac>.ipxe: the node's boot plan as an iPXE script, or a refusal script. */
async function scriptRoute(
  c: HonoContext,
  booter: HttpBooter,
  unknownNoted: UnknownNoted,
): Promise<Response> {
  const raw = c.req.param("file")!.replace(/\.ipxe$/, "");
  const mac = parseMacParam(raw);
  if (!mac) return refusal(c, `invalid MAC address in URL: ${raw}`, 400);
  // HEAD must not open a boot (a new token) or touch the timeline.
  if (c.req.method === "HEAD") return text(c, "");
  const base = booter.nodeUrl() ?? new URL(c.req.url).origin;
  const plan = await booter.script(mac, { base, remote: nodeSource(c) });
  const events = booter.events;
  if ("refused" in plan) {
    if (plan.unknown) {
      if (
        unknownNoted(mac) &&
        events.fromSource(sourceOf(c), mac, "http.unknown", { url: c.req.path })
      ) {
        log.warn("boot script for unknown node", { mac });
      }
    } else if (events.fromSource(sourceOf(c), mac, "http.refused", { reason: plan.refused })) {
      log.warn("boot refused", { mac, reason: plan.refused });
    }
    return refusal(c, plan.refused, 200, true);
  }
  events.fromSource(sourceOf(c), mac, "http.script", { image: plan.image.id }, "node");
  return text(c, renderPlanScript(plan));
}

/** GET /boot/<mac>/<kind>: streams one boot file and puts the download on the node's timeline
 *  when it ends. */
async function bootFileRoute(
  c: HonoContext,
  booter: HttpBooter,
  cache: BootFileCache,
  kind: BootFileKind,
  unknownNoted: UnknownNoted,
): Promise<Response> {
  const mac = parseMacParam(c.req.param("mac") ?? "");
  if (!mac) return refusal(c, "invalid MAC address in URL", 400);
  const file: { imageId: string; path(): Promise<string> } | Refusal = await booter.bootFile(
    mac,
    kind,
    c.req.query("image"),
  );
  const events = booter.events;
  if ("refused" in file) {
    if (file.unknown && unknownNoted(mac)) {
      events.fromSource(sourceOf(c), mac, "http.unknown", { url: c.req.path });
    }
    return refusal(c, file.refused, 404);
  }
  const image = file.imageId;
  try {
    return await sendFile(
      c,
      cache,
      await file.path(),
      kind === "manifest" ? "text/plain; charset=utf-8" : "application/octet-stream",
      (bytes, ms, complete) => {
        events.fromSource(sourceOf(c), mac, `http.${kind}`, {
          image,
          bytes,
          ms,
          ...(complete ? {} : { incomplete: true }),
          ...(c.req.header("range") ? { range: c.req.header("range") } : {}),
        }, "node");
      },
    );
  } catch (e) {
    // Missing files are 404; a failed initramfs build or I/O error is the server's (500).
    const msg = `${kind} of image ${image} unavailable: ${(e as Error).message}`;
    const detail = { image, error: msg };
    if (events.fromSource(sourceOf(c), mac, `http.${kind}.error`, detail, "node")) {
      log.error("boot file unavailable", { mac, kind, error: msg });
    }
    return refusal(c, msg, fileErrorStatus(e));
  }
}

/** GET /boot/ipxe/<file>: UEFI HTTP boot fetches iPXE itself by URL (no MAC in it): the timeline
 *  is found by address. */
async function ipxeRoute(
  c: HonoContext,
  booter: HttpBooter,
  cache: BootFileCache,
): Promise<Response> {
  const file = c.req.param("file")!;
  const ip = remoteIpv4(c);
  const mac = (ip && booter.macAt(ip)) || null;
  // A loader missing from the iPXE dir comes from the fallback (the release bundle's) if there.
  const path = await ipxeFile(booter.ipxeDir, file, booter.ipxeFallbackDir) ??
    join(booter.ipxeDir, file);
  try {
    return await sendFile(
      c,
      cache,
      path,
      "application/octet-stream",
      (bytes, ms, complete) => {
        const detail = { file, ip, bytes, ms, ...(complete ? {} : { incomplete: true }) };
        const budget = mac ? "node" : "refusal"; // anyone may fetch these
        booter.events.fromSource(sourceOf(c), mac, "http.ipxe", detail, budget);
      },
    );
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    booter.events.fromSource(sourceOf(c), mac, "http.ipxe.error", {
      file,
      ip,
      error: (e as Error).message,
    });
    return refusal(c, `${file} is not in ${booter.ipxeDir} (Debian package ipxe)`, 404);
  }
}

/** Boots whose last report number is remembered (past it, the least recent is forgotten). */
export const MAX_REPORTING_BOOTS = 4096;

/** POST /boot/report: stage reports of the node-side init, taken while its boot's token is: one
 *  report, or a batch of numbered ones (contract/report.ts parseReports), recorded all or none. */
async function reportRoute(
  c: HonoContext,
  booter: HttpBooter,
  lastSeq: Map<string, number>,
): Promise<Response> {
  const raw = await textUpTo(c.req.raw, 65536, sourceOf(c));
  if (raw instanceof BodyRefusal) return refusal(c, `report refused: ${raw.message}`, raw.status);
  const batch = parseReports(raw);
  if ("error" in batch) return refusal(c, batch.error, 400);
  const { token, reports } = batch;
  const mac = parseMacParam(batch.mac);
  if (!mac) return refusal(c, "report needs token and mac", 400);
  const events = booter.events;
  const accepted = booter.acceptReport(mac, token, nodeSource(c));
  if ("rejected" in accepted) {
    const reason = accepted.rejected;
    const stage = reports.length === 1 ? reports[0].stage : `${reports.length} reports`;
    events.fromSource(sourceOf(c), mac, "http.report.rejected", { stage, reason });
    return refusal(c, reason, 403);
  }
  let recorded = 0;
  for (const report of reports) {
    // A retry of a report already recorded (the node's wait for the answer ran out): once only.
    if (report.seq !== undefined) {
      const last = lastSeq.get(token);
      if (last !== undefined && report.seq <= last) continue;
      lastSeq.delete(token); // most recent last: the oldest boots are the ones forgotten
      lastSeq.set(token, report.seq);
      if (lastSeq.size > MAX_REPORTING_BOOTS) lastSeq.delete(lastSeq.keys().next().value!);
    }
    const stage = report.stage;
    // A progress report replaces the previous one: one line that updates, not one per second.
    const fields: Record<string, unknown> = { image: accepted.imageId, ...reportFields(report) };
    if (fields.detail !== undefined) fields.detail = boundedDetail(fields.detail);
    if (PROGRESS_STAGES.has(stage)) events.progress(mac, `init.${stage}`, fields);
    else events.fromSource(sourceOf(c), mac, `init.${stage}`, fields, "node");
    booter.reported(mac, token, stage);
    recorded++;
  }
  if (!recorded) return c.json({ ok: true, duplicate: true });
  return c.json(
    recorded === reports.length
      ? { ok: true }
      : { ok: true, recorded, duplicates: reports.length - recorded },
  );
}

/** The /boot routes over a Booter (src/boot/booter.ts); boot files come through `cache` (the
 *  server passes its booter.files, which TFTP shares). */
export function bootRoutes(booter: HttpBooter, cache = new BootFileCache()): Hono {
  const app = new Hono();
  // A failure no route expected (the database, a bug) in the same style as every refusal.
  app.onError((e, c) => {
    log.error("boot route failed", { path: c.req.path, error: e.message });
    return refusal(c, `internal error: ${e.message}`, 500, c.req.path.endsWith(".ipxe"));
  });
  const unknownNoted = unknownNotes();
  app.get("/:file{[^/]+\\.ipxe}", (c) => scriptRoute(c, booter, unknownNoted));
  for (const kind of ["kernel", "initramfs", "manifest"] as const) {
    app.get(`/:mac/${kind}`, (c) => bootFileRoute(c, booter, cache, kind, unknownNoted));
  }
  // At most a file name's 255 bytes: a longer one is no file of the iPXE dir, and its stat failed
  // (ENAMETOOLONG) as a 500 whose answer and log line carried the name twice, at no rate limit.
  app.get(
    "/ipxe/:file{[A-Za-z0-9][A-Za-z0-9._-]{0,248}\\.(?:efi|kpxe|kkpxe|pxe|lkrn)}",
    (c) => ipxeRoute(c, booter, cache),
  );
  // The last report number of each boot still reporting (bounded: tokens expire anyway).
  const lastSeq = new Map<string, number>();
  app.post("/report", (c) => reportRoute(c, booter, lastSeq));
  return app;
}
