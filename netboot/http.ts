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
import { BootFileCache } from "./bootcache.ts";
import { DEFAULTS, renderCmdline } from "../contract/cmdline.ts";
import { parseReport, PROGRESS_STAGES, reportFields } from "../contract/report.ts";
import { resolveInRoot as resolveImagePath } from "../contract/rootpath.ts";
import { Hono } from "hono";
import type { Context as HonoContext } from "hono";
import { join } from "node:path";
import type { Context } from "../src/context.ts";
import { bootExpiry, dropBoot, findBoot, openBoot, recordStage } from "../src/boots.ts";
import { notFound, UserError } from "../src/errors.ts";
import { recordFromSource, recordProgress } from "../src/events.ts";
import { ensureInitramfs } from "../src/initramfs/build.ts";
import { neighbourMac } from "../src/linux/neigh.ts";
import { logger } from "../src/log.ts";
import { normalizeMac } from "../src/mac.ts";
import { bootNetwork, nfsPersistPath, nfsRootPath } from "../src/nfs.ts";
import type { NodeInfo } from "../src/nodes.ts";
import { renderBootScript, renderRefusalScript } from "./ipxe.ts";

const log = logger("http");

/** The MAC in a URL segment (any common spelling), or undefined. */
export function parseMacParam(s: string): string | undefined {
  try {
    return normalizeMac(decodeURIComponent(s));
  } catch {
    return undefined;
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
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) {
    return /^\s*bytes\s*=/i.test(header) && !header.includes(",") ? "unsatisfiable" : undefined;
  }
  const [a, b] = [m[1], m[2]];
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

/** `path` (absolute, inside an image) resolved to a file under `root` (contract/rootpath.ts); a missing
 *  one is NotFound in the image's terms (the server's own paths are none of the node's business). */
export function resolveInRoot(root: string, path: string): Promise<string> {
  try {
    const r = resolveImagePath(root, path);
    if (r.missing) {
      throw new Deno.errors.NotFound(`${path}: ${r.missing} does not exist in the image`);
    }
    return Promise.resolve(r.host);
  } catch (e) {
    return Promise.reject(e);
  }
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

const bootFiles = new BootFileCache();

// These routes are open to the boot network: an unknown MAC (a loop of retries) is written to the
// events table at most once a minute per MAC, and a flood of made-up ones at most at the rate
// limit of its source address (recordFromSource).
const unknownSeen = new Map<string, number>();
function unknownNoted(mac: string, now = Date.now()): boolean {
  const last = unknownSeen.get(mac);
  if (last !== undefined && now - last < 60_000) return false;
  if (unknownSeen.size >= 10_000) unknownSeen.clear();
  unknownSeen.set(mac, now);
  return true;
}

/** Serves a file with Content-Length, Accept-Ranges and Range (206/416); HEAD sends headers only. */
async function sendFile(
  c: HonoContext,
  path: string,
  contentType: string,
  onEnd?: (bytes: number, ms: number, complete: boolean) => void,
): Promise<Response> {
  const name = path.slice(path.lastIndexOf("/") + 1);
  const file = await Deno.open(path, { read: true }).catch((e) => {
    throw e instanceof Deno.errors.NotFound ? new Deno.errors.NotFound(`${name} is missing`) : e;
  });
  const st = await file.stat();
  if (!st.isFile) {
    file.close();
    throw new Deno.errors.NotFound(`${name} is not a regular file`);
  }
  const size = st.size;
  const range = parseRange(c.req.header("range"), size);
  const headers: Record<string, string> = {
    "content-type": contentType,
    "accept-ranges": "bytes",
    "cache-control": "no-store",
  };
  if (range === "unsatisfiable") {
    file.close();
    return new Response(null, {
      status: 416,
      headers: { ...headers, "content-range": `bytes */${size}` },
    });
  }
  const { start, end } = range ?? { start: 0, end: size - 1 };
  const length = end - start + 1;
  headers["content-length"] = String(length);
  if (range) headers["content-range"] = `bytes ${start}-${end}/${size}`;
  const status = range ? 206 : 200;
  if (c.req.method === "HEAD" || length === 0) {
    file.close();
    return new Response(null, { status, headers });
  }
  const t0 = performance.now();
  const ended = (bytes: number, complete: boolean) =>
    onEnd?.(bytes, Math.round(performance.now() - t0), complete);
  const cached = bootFiles.get(path, st);
  if (cached) {
    file.close();
    return new Response(memoryBody(await cached, start, length, ended), { status, headers });
  }
  return new Response(fileBody(file, start, length, ended), { status, headers });
}

const text = (
  c: HonoContext,
  body: string,
  status: 200 | 400 | 403 | 404 | 413 | 500 | 503 = 200,
) =>
  c.body(body, status, {
    "content-type": "text/plain; charset=utf-8",
    "cache-control": "no-store",
  });

function setting(node: NodeInfo, key: string, fallback: string): string {
  const v = node.settings?.[key];
  return v === undefined || v === "" ? fallback : v;
}

/** The sender's address as Deno.serve saw it, loopback included (the rate limit's key). */
function sourceOf(c: HonoContext): string | undefined {
  return (c.env as Deno.ServeHandlerInfo<Deno.NetAddr> | undefined)?.remoteAddr?.hostname;
}

/** The client's IPv4 address as Deno.serve saw it (Hono passes the serve info as env). */
function remoteIpv4(c: HonoContext): string | undefined {
  const addr = (c.env as Deno.ServeHandlerInfo<Deno.NetAddr> | undefined)?.remoteAddr;
  const ip = addr?.hostname?.replace(/^::ffff:/, "");
  // Loopback is a test or a local client, never a node's boot address.
  return ip && /^\d+\.\d+\.\d+\.\d+$/.test(ip) && !ip.startsWith("127.") ? ip : undefined;
}

/** The request body as text, or undefined past `max` bytes: reading stops there (the route is
 *  open to anyone on the network, and a report is a few hundred bytes). */
async function textUpTo(req: Request, max: number): Promise<string | undefined> {
  if (Number(req.headers.get("content-length") ?? 0) > max) return undefined;
  if (!req.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    size += chunk.length;
    if (size > max) return undefined; // leaving the loop cancels the stream
    chunks.push(chunk);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.length;
  }
  return new TextDecoder().decode(all);
}

/** A report's free-form detail, at most 4 KiB of it: each stored event stays small. */
function boundedDetail(v: unknown): unknown {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length <= 4096 ? v : `${s.slice(0, 4096)}… (${s.length} characters)`;
}

export function bootRoutes(ctx: Context): Hono {
  const app = new Hono();

  /** The image a node boots: a specific one (?image=, pinned by the script so that kernel and
   *  initramfs come from the same image even if a deploy lands in between), else its current. */
  const imageFor = async (mac: string, pinned?: string) => {
    const id = pinned || ctx.nodes.currentImageId(mac);
    if (!id) return undefined;
    try {
      return await ctx.images.get(id);
    } catch {
      return undefined;
    }
  };

  const lookup = async (c: HonoContext) => {
    const mac = parseMacParam(c.req.param("mac") ?? "");
    const node = mac ? ctx.nodes.find(mac) : undefined;
    return { mac, node, image: node && await imageFor(node.mac, c.req.query("image")) };
  };

  app.get("/:file{[^/]+\\.ipxe}", async (c) => {
    const raw = c.req.param("file").replace(/\.ipxe$/, "");
    const mac = parseMacParam(raw);
    if (!mac) return text(c, `invalid MAC address in URL: ${raw}\n`, 400);
    // HEAD must not open a boot (a new token) or touch the timeline.
    if (c.req.method === "HEAD") return text(c, "");
    const base = ctx.nodeUrl ?? new URL(c.req.url).origin;
    const node = ctx.nodes.find(mac);
    if (!node) {
      if (
        unknownNoted(mac) &&
        recordFromSource(ctx.db, sourceOf(c), mac, "http.unknown", { url: c.req.path })
      ) {
        log.warn("boot script for unknown node", { mac });
      }
      return text(
        c,
        renderRefusalScript(`this machine (${mac}) is not registered on the netroot server`),
      );
    }
    const refuse = (reason: string) => {
      if (recordFromSource(ctx.db, sourceOf(c), mac, "http.refused", { reason })) {
        log.warn("boot refused", { mac, reason });
      }
      return text(c, renderRefusalScript(reason));
    };
    const imageId = ctx.nodes.currentImageId(mac);
    if (!imageId) return refuse(`node ${node.name} has no image deployed`);
    const image = await imageFor(mac, imageId);
    if (!image) return refuse(`image ${imageId} of node ${node.name} is missing`);
    if (!image.bootable) {
      return refuse(`image ${image.name} is not bootable: ${image.reason ?? "no kernel found"}`);
    }
    const initramfs = setting(node, "initramfs", "netroot");
    if (initramfs === "image" && !image.initrd) {
      return refuse(`image ${image.name} has no initrd of its own (node setting initramfs=image)`);
    }
    // The node's address on its command line: the admin's `ip` setting, else its DHCP lease,
    // else where this request came from, else the registry's last known one. The registry's
    // address (what its /persist export follows) moves only on evidence bound to the MAC:
    // anyone can fetch any node's script, so the source address alone proves nothing; the boot
    // interface's neighbour table holding this MAC for it does (docs/architecture.md).
    const lease = ctx.db.prepare("SELECT ip FROM leases WHERE mac = ? AND state = 'bound'")
      .get(mac) as { ip: string } | undefined;
    const net = bootNetwork(ctx);
    const remote = remoteIpv4(c);
    const nodeIp = node.settings.ip ?? lease?.ip ?? remote ?? node.ip ?? undefined;
    const iface = ctx.config.interface;
    if (!lease && remote && iface && neighbourMac(remote, iface) === mac) {
      ctx.nodes.observeAddress(mac, remote, "neighbour"); // NFS: /persist follows it
    }
    const serverIp = ctx.config.serverIp ?? new URL(base).hostname;
    const token = openBoot(ctx.db, mac, image.id);
    let cmdline: string;
    try {
      cmdline = renderCmdline({
        mac,
        hostname: node.name,
        nodeIp,
        serverIp,
        gateway: ctx.config.dhcp.router,
        netmask: net?.netmask ?? "255.255.255.0",
        url: base,
        root: `${serverIp}:${nfsRootPath(ctx, image.id)}`,
        persist: setting(node, "persist", "true") === "false"
          ? undefined
          : `${serverIp}:${nfsPersistPath(ctx, mac)}`,
        nfs: ctx.config.nfs.version === 3 ? "3" : "4.2",
        imageId: image.id,
        token,
        mode: node.settings?.["boot.mode"],
        timeout: node.settings?.["boot.timeout"],
        tmpfs: node.settings?.["tmpfs.size"],
        // The last console= is /dev/console: serial last so virtual nodes (and serial-attached lab
        // PCs) get the init's output; the screen still shows kernel messages.
        consoles: node.model === "pc-x86-64" ? ["tty0", "ttyS0,115200"] : [],
        extra: node.settings?.["kernel.cmdline"],
      });
    } catch (e) {
      dropBoot(ctx.db, token);
      return refuse((e as Error).message);
    }
    if (initramfs === "netroot") {
      // Build (or find) it now, while iPXE downloads the kernel.
      ensureInitramfs(ctx, image.id).catch((e) =>
        log.error("initramfs build failed", { image: image.id, error: (e as Error).message })
      );
    }
    const hyphen = mac.replaceAll(":", "-"); // colons in URL paths break some HTTP clients
    const q = `?image=${image.id}`;
    recordFromSource(ctx.db, sourceOf(c), mac, "http.script", { image: image.id }, "node");
    ctx.nodes.touch(mac);
    return text(
      c,
      renderBootScript({
        mac,
        node: node.name,
        imageName: image.name,
        imageId: image.id,
        kernelUrl: `${base}/boot/${hyphen}/kernel${q}`,
        initramfsUrl: `${base}/boot/${hyphen}/initramfs${q}`,
        cmdline,
      }),
    );
  });

  /** Streams one boot file and puts the download on the node's timeline when it ends. */
  const bootFile = (
    kind: "kernel" | "initramfs" | "manifest",
    pathOf: (
      mac: string,
      node: NodeInfo,
      image: { id: string; kernel?: string | null; initrd?: string | null },
    ) => Promise<string>,
  ) =>
  async (c: HonoContext) => {
    const { mac, node, image } = await lookup(c);
    if (!mac) return text(c, "invalid MAC address in URL\n", 400);
    if (!node) {
      if (unknownNoted(mac)) {
        recordFromSource(ctx.db, sourceOf(c), mac, "http.unknown", { url: c.req.path });
      }
      return text(c, `node ${mac} is not registered\n`, 404);
    }
    if (!image) return text(c, `node ${node.name} has no image to boot\n`, 404);
    try {
      return await sendFile(
        c,
        await pathOf(mac, node, image),
        kind === "manifest" ? "text/plain; charset=utf-8" : "application/octet-stream",
        (bytes, ms, complete) => {
          recordFromSource(ctx.db, sourceOf(c), mac, `http.${kind}`, {
            image: image.id,
            bytes,
            ms,
            ...(complete ? {} : { incomplete: true }),
            ...(c.req.header("range") ? { range: c.req.header("range") } : {}),
          }, "node");
        },
      );
    } catch (e) {
      // Missing files are 404; a failed initramfs build or I/O error is the server's (500).
      const missing = e instanceof Deno.errors.NotFound ||
        (e as { code?: string }).code === "ENOENT" ||
        (e instanceof UserError && e.status === 404);
      const msg = `${kind} of image ${image.id} unavailable: ${(e as Error).message}`;
      const detail = { image: image.id, error: msg };
      if (recordFromSource(ctx.db, sourceOf(c), mac, `http.${kind}.error`, detail, "node")) {
        log.error("boot file unavailable", { mac, kind, error: msg });
      }
      return text(c, msg + "\n", missing ? 404 : 500);
    }
  };

  app.get(
    "/:mac/kernel",
    bootFile("kernel", (_mac, _node, image) => {
      if (!image.kernel) return Promise.reject(notFound("the image's kernel"));
      return resolveInRoot(ctx.data.rootfs(image.id), image.kernel);
    }),
  );

  app.get(
    "/:mac/initramfs",
    bootFile("initramfs", (_mac, node, image) => {
      if (setting(node, "initramfs", "netroot") === "image") {
        if (!image.initrd) return Promise.reject(notFound("the image's initrd"));
        return resolveInRoot(ctx.data.rootfs(image.id), image.initrd);
      }
      return ensureInitramfs(ctx, image.id);
    }),
  );

  app.get(
    "/:mac/manifest",
    bootFile("manifest", (_m, _n, image) => Promise.resolve(ctx.data.manifest(image.id))),
  );

  // UEFI HTTP boot fetches iPXE itself by URL (no MAC in it): the timeline is found by address.
  app.get("/ipxe/:file{[A-Za-z0-9][A-Za-z0-9._-]*\\.(?:efi|kpxe|kkpxe|pxe|lkrn)}", async (c) => {
    const file = c.req.param("file");
    const ip = remoteIpv4(c);
    const mac = (ip && ctx.nodes.byIp(ip)?.mac) || null;
    try {
      return await sendFile(
        c,
        join(ctx.config.ipxeDir, file),
        "application/octet-stream",
        (bytes, ms, complete) => {
          const detail = { file, ip, bytes, ms, ...(complete ? {} : { incomplete: true }) };
          const budget = mac ? "node" : "refusal"; // anyone may fetch these
          recordFromSource(ctx.db, sourceOf(c), mac, "http.ipxe", detail, budget);
        },
      );
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      recordFromSource(ctx.db, sourceOf(c), mac, "http.ipxe.error", {
        file,
        ip,
        error: (e as Error).message,
      });
      return text(c, `${file} is not in ${ctx.config.ipxeDir} (Debian package ipxe)\n`, 404);
    }
  });

  app.post("/report", async (c) => {
    const raw = await textUpTo(c.req.raw, 65536);
    if (raw === undefined) return text(c, "report too large\n", 413);
    const report = parseReport(raw);
    if ("error" in report) return text(c, `${report.error}\n`, 400);
    const { token, stage } = report;
    const mac = parseMacParam(report.mac);
    if (!mac) return text(c, "report needs token and mac\n", 400);
    const boot = findBoot(ctx.db, token);
    const node = boot?.mac === mac ? ctx.nodes.find(mac) : undefined;
    const reject = (reason: string) => {
      recordFromSource(ctx.db, sourceOf(c), mac, "http.report.rejected", { stage, reason });
      return text(c, `${reason}\n`, 403);
    };
    if (!boot || !node) return reject("token does not belong to this node's boots");
    const silentS = Number(node.settings?.["boot.timeout"]) || DEFAULTS.timeoutS;
    if (Date.now() > bootExpiry(boot, silentS)) {
      return reject(
        boot.stage === "handover" || boot.stage === "fatal"
          ? `token expired: its boot ended (${boot.stage} at ${boot.reportedAt})`
          : `token expired: its boot has not been heard from since ${
            boot.reportedAt ?? boot.startedAt
          }`,
      );
    }
    // A progress report replaces the previous one: one line that updates, not one per second.
    const fields: Record<string, unknown> = { image: boot.imageId, ...reportFields(report) };
    if (fields.detail !== undefined) fields.detail = boundedDetail(fields.detail);
    if (PROGRESS_STAGES.has(stage)) recordProgress(ctx.db, mac, `init.${stage}`, fields);
    else recordFromSource(ctx.db, sourceOf(c), mac, `init.${stage}`, fields, "node");
    recordStage(ctx.db, token, stage);
    ctx.nodes.touch(mac);
    return c.json({ ok: true });
  });

  return app;
}
