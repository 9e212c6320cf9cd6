// The Booter (netboot/booter.ts) from the server's stores: node registry, images, leases, boots and
// the events table. The protocols ask it; it gathers the facts, lets src/boot/plan.ts decide, and
// records what the decision opened (a boot token, an address observed, an initramfs build).
import type { Context } from "../context.ts";
import {
  bootedOn,
  bootExpiry,
  dropBoot,
  findBoot,
  openBoot,
  recordStage,
  unheardBoot,
  unheardBootImage,
} from "../boots.ts";
import { DEFAULTS } from "../../contract/cmdline.ts";
import { resolveInRoot } from "../../contract/rootpath.ts";
import { tx } from "../db.ts";
import { BootFileCache } from "../../netboot/bootcache.ts";
import { MAX_REPORTING_BOOTS } from "../../netboot/http.ts";
import { notFound } from "../errors.ts";
import { eventRecorder, recordDhcpAllowed, recordFromSource, recordProgress } from "../events.ts";
import { ensureInitramfs } from "../initramfs/build.ts";
import { neighbourMac } from "../linux/neigh.ts";
import { logger } from "../log.ts";
import { metricsFor } from "../metrics.ts";
import { bootNetwork, nfsPersistPath, nfsRootPath } from "../nfs.ts";
import type { NodeInfo } from "../nodes.ts";
import { nodeReported, SCRIPT_FETCHED } from "../nodestate.ts";
import type { ImageInfo } from "../images/store.ts";
import type {
  Booter,
  BootFileKind,
  EventSink,
  PiBootFile,
  Refusal,
  ScriptPlan,
} from "../../netboot/booter.ts";
import { boundLeaseIp, LeaseStore } from "./leases.ts";
import {
  checkBoot,
  initramfsSource,
  nodeAddress,
  planBoot,
  type PlanInput,
  type PlanNetwork,
  renderPiConfig,
} from "./plan.ts";
import { hardwareAddress } from "../linux/netif.ts";
import { PiBootVersions } from "./piboot.ts";
import { isIPv4 } from "node:net";

const log = logger("http");

/** A string a sender on the boot network chose (a Range header, a URL, a report's reason) is kept
 *  to this many characters in an event: a header or a path may be ~64 KiB, a report body 64 KiB,
 *  and a source adds thousands of events (10,000 kept per node, 100,000 for the rest). */
const maxSenderText = 4096;

/** `detail` with each string past maxSenderText cut, saying how long it was. */
export function senderDetail(detail: Record<string, unknown> = {}): Record<string, unknown> {
  const long = Object.entries(detail).filter(([, v]) =>
    typeof v === "string" && v.length > maxSenderText
  );
  if (!long.length) return detail;
  const cut = { ...detail };
  for (const [k, v] of long as [string, string][]) {
    cut[k] = `${v.slice(0, maxSenderText)}… (${v.length} characters)`;
  }
  return cut;
}

/** The events table as the protocols' sink. */
export function eventSink(db: Context["db"]): EventSink {
  let record: ReturnType<typeof eventRecorder> | undefined;
  return {
    fromSource: (source, mac, kind, detail, budget) =>
      recordFromSource(db, source, mac, kind, senderDetail(detail), budget),
    progress: (mac, kind, detail) => recordProgress(db, mac, kind, senderDetail(detail)),
    record(mac, kind, detail, at) {
      if (!recordDhcpAllowed(db, mac, kind, detail)) return; // spoofed DHCP: bounded per MAC
      (record ??= eventRecorder(db))(mac, kind, detail, at);
    },
  };
}

/** The image a node boots: a specific one (`?image=`, pinned by the script so that kernel and
 *  initramfs come from one image even if a deploy lands in between), else its current one. */
function imageFor(ctx: Context, mac: string, pinned?: string): ImageInfo | undefined {
  const id = pinned || ctx.nodes.currentImageId(mac);
  if (!id) return undefined;
  try {
    return ctx.images.get(id);
  } catch {
    return undefined;
  }
}

/** Where nodes send their netconsole: the receiver's port and the boot interface's MAC (read at
 *  each plan: a bridge's MAC follows its ports until set). */
function netconsoleTarget(ctx: Context): PlanNetwork["netconsole"] {
  const iface = ctx.config.interface;
  if (ctx.netconsolePort === undefined || !iface) return undefined;
  try {
    return { port: ctx.netconsolePort, serverMac: hardwareAddress(iface) };
  } catch {
    return undefined;
  }
}

/** The plan's input for a node, of version `imageId` (default: its current one); `token` and
 *  `nodeIp` are filled in once the boot passes checkBoot. */
function planInput(
  ctx: Context,
  node: NodeInfo,
  base: string,
  imageId = ctx.nodes.currentImageId(node.mac),
): PlanInput {
  const image = imageId ? imageFor(ctx, node.mac, imageId) : undefined;
  const serverIp = ctx.config.serverIp ?? new URL(base).hostname;
  return {
    mac: node.mac,
    node,
    imageId,
    image,
    network: {
      serverIp,
      netmask: bootNetwork(ctx)?.netmask ?? "255.255.255.0",
      gateway: ctx.config.dhcp.router,
      base,
      nfs: ctx.config.nfs.version === 3 ? "3" : "4.2",
      rootPath: image ? nfsRootPath(ctx, image.id) : "",
      persistPath: nfsPersistPath(ctx, node.mac),
      netconsole: netconsoleTarget(ctx),
    },
    token: "",
    sshKey: serverKey(ctx),
  };
}

/** The server's ssh public key for the node's command line; none (a logged reason, every reboot
 *  hard) when it cannot be made. */
function serverKey(ctx: Context): string | undefined {
  try {
    return ctx.ssh.key.publicKey();
  } catch {
    return undefined;
  }
}

/** A script fetch: the node's plan (a new boot opened for it), or why it boots nothing; of
 *  version `imageId` when given (a Pi's boot's: piboot.ts), else of the node's current one. */
function script(
  ctx: Context,
  mac: string,
  req: { base: string; remote?: string },
  imageId?: string,
): (ScriptPlan & { token: string }) | Refusal {
  const node = ctx.nodes.find(mac);
  if (!node) {
    return {
      refused: `this machine (${mac}) is not registered on the netroot server`,
      unknown: true,
    };
  }
  const input = planInput(ctx, node, req.base, imageId);
  const early = checkBoot(input);
  if (early) return early;
  // A boot (its token) is opened only for the node's own address, once it has one; a first
  // fetch from an address the neighbour table maps to the MAC gives it one (foreignSource).
  const foreign = foreignSource(ctx, mac, req.remote);
  if (foreign) return { refused: `${foreign}: not this node's boot` };
  const lease = boundLeaseIp(ctx.db, mac);
  input.nodeIp = nodeAddress(
    node,
    lease,
    req.remote && isIPv4(req.remote) ? req.remote : undefined,
  );
  if (ctx.images.isThin(input.image!.id)) {
    // A thin version (its tree removed while nothing used it; a node set to it since without a
    // deploy, e.g. `node add --image NAME@ID`): written again now, the node's retry boots it.
    ctx.images.ensureTree(input.image!.id).catch(() => {});
    return {
      refused: `image version ${input.image!.id.slice(0, 12)} is being written from its ` +
        "manifest (thin version); retrying",
    };
  }
  // A boot not heard from yet is handed out again for a while (boots.ts unheardBoot).
  const reused = unheardBoot(ctx.db, mac, input.image!.id);
  input.token = reused ?? openBoot(ctx.db, mac, input.image!.id);
  ctx.images.schedulePrune(); // the version this node ran may be used by nothing now
  const plan = planBoot(input);
  if ("refused" in plan) {
    if (!reused) dropBoot(ctx.db, input.token);
    return plan;
  }
  if (plan.initramfs === "netroot") {
    // Build (or find) it now, while iPXE downloads the kernel.
    ensureInitramfs(ctx, plan.image.id).catch((e) =>
      log.error("initramfs build failed", { image: plan.image.id, error: (e as Error).message })
    );
  }
  ctx.nodes.touch(mac);
  ctx.nodes.setState(mac, "booting", SCRIPT_FETCHED);
  return { ...plan, token: input.token };
}

/** `path` (absolute, inside an image) resolved to a file under `root` (contract/rootpath.ts); a
 *  missing one is NotFound in the image's terms (the server's own paths are none of the node's
 *  business). */
export function resolveInImage(root: string, path: string): Promise<string> {
  try {
    const r = resolveInRoot(root, path);
    if (r.missing) {
      throw new Deno.errors.NotFound(`${path}: ${r.missing} does not exist in the image`);
    }
    return Promise.resolve(r.host);
  } catch (e) {
    return Promise.reject(e);
  }
}

/** The path of one boot file of an image; rejects NotFound-like (status 404) when missing. */
function bootFilePath(
  ctx: Context,
  node: NodeInfo,
  image: ImageInfo,
  kind: BootFileKind,
): Promise<string> {
  const inImage = (path: string | null, what: string) =>
    path ? resolveInImage(ctx.data.rootfs(image.id), path) : Promise.reject(notFound(what));
  if (kind === "kernel") return inImage(image.kernel, "the image's kernel");
  if (kind === "manifest") return Promise.resolve(ctx.data.manifest(image.id));
  if (initramfsSource(node) === "image") return inImage(image.initrd, "the image's initrd");
  return ensureInitramfs(ctx, image.id);
}

/** How long a boot waits for a thin version's tree to be written (≈ 1–2 s for 22 000 entries). */
const THIN_TREE_WAIT_MS = 60_000;

/** A node set to a thin version (its tree removed while nothing used it, e.g. `node add --image
 *  NAME@ID` since): its tree is written again before the boot is opened, so the node boots it
 *  now rather than at its next try; a refusal only when it cannot be written in time. */
async function thinTreeWritten(ctx: Context, mac: string): Promise<Refusal | undefined> {
  const id = ctx.nodes.find(mac) && ctx.nodes.currentImageId(mac);
  if (!id || !ctx.images.isThin(id)) return undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("not written within 60 s")), THIN_TREE_WAIT_MS);
  });
  try {
    await Promise.race([ctx.images.ensureTree(id), late]);
    return undefined;
  } catch (e) {
    return { refused: `image version ${id.slice(0, 12)}: ${(e as Error).message}` };
  } finally {
    clearTimeout(timer);
  }
}

/** The version node `mac`'s TFTP fetch of `file` (under its image's /boot) is served from: for a
 *  Pi, the one its boot's first fetch fixed while it can be served and the boot it opened has
 *  not been heard from (piboot.ts). */
function piBootVersion(ctx: Context, pins: PiBootVersions, mac: string, file: string) {
  return pins.version(
    mac,
    file,
    ctx.nodes.currentImageId(mac),
    (id, token) =>
      ctx.images.hasTree(id) && imageFor(ctx, mac, id) !== undefined &&
      (!token || findBoot(ctx.db, token)?.stage === null),
  );
}

/** A Pi node's boot file fetched by TFTP: the kernel and initramfs of its image (as HTTP boot
 *  serves them), or config.txt / cmdline.txt rendered in memory, of the version of the Pi's boot
 *  (piBootVersion). cmdline.txt opens the boot, as an iPXE script fetch does. */
async function piFile(
  ctx: Context,
  pins: PiBootVersions,
  mac: string,
  name: PiBootFile,
  remote: string,
): Promise<{ file: string } | { data: Uint8Array } | Refusal> {
  const node = ctx.nodes.find(mac);
  if (!node) return { refused: `node ${mac} is not registered`, unknown: true };
  const base = ctx.nodeUrl;
  if (!base) return { refused: "the HTTP address nodes use is unknown (no --http for nodes)" };
  if (name === "netroot-kernel" || name === "netroot-initramfs") {
    const input = planInput(ctx, node, base);
    const early = checkBoot(input) ?? await thinTreeWritten(ctx, mac);
    if (early) return early;
    const kind = name === "netroot-kernel" ? "kernel" : "initramfs";
    // From the version of the boot its cmdline.txt (fetched first) opened, as an iPXE script
    // pins them (`?image=`): a deploy or a commit's follow landing in between gave the Pi the new
    // version's kernel and initramfs under the old one's command line and NFS root.
    const opened = unheardBootImage(ctx.db, mac);
    const image = (opened && imageFor(ctx, mac, opened)) || imageFor(ctx, mac, input.imageId!)!;
    return { file: await bootFilePath(ctx, node, image, kind) };
  }
  const input = planInput(ctx, node, base, piBootVersion(ctx, pins, mac, name) ?? undefined);
  // A thin current version is written now (a pinned one has its tree: piBootVersion).
  const early = checkBoot(input) ?? await thinTreeWritten(ctx, mac);
  if (early) return early;
  let text: string;
  if (name === "config.txt") {
    text = renderPiConfig({ nodeName: node.name, image: input.image! });
  } else {
    const plan = script(ctx, mac, { base, remote }, input.imageId!);
    if ("refused" in plan) return plan;
    pins.cmdlineServed(mac, plan.image.id, plan.token);
    text = plan.cmdline + "\n";
  }
  return { data: new TextEncoder().encode(text) };
}

/** Whether a report with `token` is taken from `mac` now, sent from `source`. */
function acceptReport(
  ctx: Context,
  mac: string,
  token: string,
  source: string | undefined,
): { imageId: string | null } | { rejected: string } {
  const boot = findBoot(ctx.db, token);
  const node = boot?.mac === mac ? ctx.nodes.find(mac) : undefined;
  if (!boot || !node) return { rejected: "token does not belong to this node's boots" };
  const foreign = foreignSource(ctx, mac, source);
  if (foreign) return { rejected: foreign };
  const silentS = Number(node.settings?.["nfs.timeout"]) || DEFAULTS.timeoutS;
  if (Date.now() > bootExpiry(boot, silentS)) {
    return {
      rejected: boot.stage === "handover" || boot.stage === "fatal"
        ? `token expired: its boot ended (${boot.stage} at ${boot.reportedAt})`
        : `token expired: its boot has not been heard from since ${
          boot.reportedAt ?? boot.startedAt
        }`,
    };
  }
  return { imageId: boot.imageId };
}

/**
 * Why a request from `source` is not the node's, if it is not: a script fetch (which opens a boot
 * and hands out its token) or a report (a handover says which image the node runs: its exports
 * and `image rm` follow it) comes from an address the boot interface's neighbour table maps to
 * the node's MAC — which then becomes the registry's address (unless a lease or the setting fixes
 * it) — or, when the table does not know the address, from the node's address bound to its MAC:
 * the `ip` setting, its bound lease, the registry's address (the evidence its NFS exports follow).
 * The table is read first: a machine that takes a node's address keeping its own MAC (the node
 * being off, or the server's ARP cache poisoned) is not the node. The source address alone proves
 * nothing. A node with no address yet (never booted in proxy mode; behind a router without an
 * `ip` setting, where the table holds no entry for it) cannot be told from anyone off the link;
 * `source` undefined is the server machine itself.
 */
function foreignSource(ctx: Context, mac: string, source: string | undefined): string | undefined {
  if (!source) return undefined;
  const iface = ctx.config.interface;
  const seen = iface && isIPv4(source) ? neighbourMac(source, iface) : undefined;
  if (seen && seen !== mac) {
    return `request from ${source}: that address is ${seen}'s on ${iface}, not this node's (${mac})`;
  }
  const at = ctx.nodes.addressOf(mac);
  if (source === at) return undefined;
  if (seen === mac) {
    if (!boundLeaseIp(ctx.db, mac)) ctx.nodes.observeAddress(mac, source, "neighbour");
    return undefined;
  }
  return at ? `request from ${source}: the node's address is ${at}` : undefined;
}

/** The server's Booter: one per server, shared by DHCP, TFTP and HTTP boot. */
export function contextBooter(ctx: Context, piBoots = new PiBootVersions()): Booter {
  const events = eventSink(ctx.db);
  // Boots counted by outcome once each: a node's token may repeat a report under new numbers (one
  // inflated `handover` to 640). handover and fatal end a boot, once (recordStage); a fallback
  // from hybrid mode is not final, so the boots that reported one are remembered (the most
  // recent, as many as the report route remembers).
  const fellBack = new Set<string>();
  const isBootOutcome = (stage: string, token: string) => {
    if (stage === "handover" || stage === "fatal") return true;
    if (stage !== "hybrid-failed" || fellBack.has(token)) return false;
    fellBack.add(token);
    if (fellBack.size > MAX_REPORTING_BOOTS) fellBack.delete(fellBack.values().next().value!);
    return true;
  };
  return {
    events,
    files: new BootFileCache(),
    // DHCP
    seen: (mac, at) => ctx.nodes.seenByDhcp(mac, at),
    register: (mac, source) => ctx.nodes.register(mac, source),
    observeAddress: (mac, ip, evidence) => ctx.nodes.observeAddress(mac, ip, evidence),
    countAutoRegistered: () => ctx.nodes.countAutoRegistered(),
    ageOut: (ttl) => ctx.nodes.ageOut(ttl),
    leases: (o) => new LeaseStore(ctx.db, o, ctx.nodes),
    transaction: (fn) => tx(ctx.db, fn),
    // TFTP
    nodeAt(ip) {
      const node = ctx.nodes.byIp(ip);
      return node && { mac: node.mac, fs: ctx.data.nodeFs(node.mac) };
    },
    piFile: (mac, name, remote) => piFile(ctx, piBoots, mac, name, remote),
    bootRoot(mac, file) {
      const version = piBootVersion(ctx, piBoots, mac, file);
      return version ? ctx.data.rootfs(version) : ctx.data.nodeFs(mac);
    },
    // HTTP
    script: async (mac, req) => (await thinTreeWritten(ctx, mac)) ?? script(ctx, mac, req),
    bootFile(mac, kind, pinned) {
      const node = ctx.nodes.find(mac);
      if (!node) {
        return Promise.resolve({ refused: `node ${mac} is not registered`, unknown: true });
      }
      // Anyone may claim the MAC: a pin is taken only for a version netroot gave this node (its
      // current one, or one a boot was opened for: a deploy landed after its script). Any other
      // version or image name served every image's manifest (each file's sha256 and xattrs),
      // kernel and initrd to the boot network.
      if (pinned && pinned !== node.imageId && !bootedOn(ctx.db, node.mac, pinned)) {
        return Promise.resolve({
          refused: `image ${pinned.slice(0, 80)}: not a version node ${node.name} was given`,
        });
      }
      const image = imageFor(ctx, node.mac, pinned);
      if (!image) return Promise.resolve({ refused: `node ${node.name} has no image to boot` });
      return Promise.resolve({
        imageId: image.id,
        path: () => bootFilePath(ctx, node, image, kind),
      });
    },
    macAt: (ip) => ctx.nodes.byIp(ip)?.mac,
    acceptReport: (mac, token, source) => acceptReport(ctx, mac, token, source),
    reported(mac, token, stage) {
      const changed = recordStage(ctx.db, token, stage);
      if (changed && isBootOutcome(stage, token)) metricsFor(ctx.db).boots.inc({ outcome: stage });
      ctx.nodes.touch(mac);
      nodeReported(ctx, mac, stage);
    },
    get ipxeDir() {
      return ctx.config.ipxeDir;
    },
    get ipxeFallbackDir() {
      return ctx.config.ipxeFallbackDir;
    },
    nodeUrl: () => ctx.nodeUrl,
  };
}
