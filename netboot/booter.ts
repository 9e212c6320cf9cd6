// What the boot protocols need from the rest of the server, as one small interface (danderson/
// netboot's Booter): DHCP, TFTP and HTTP boot never ask the database or the registries themselves.
// src/boot/booter.ts implements it from the stores; the boot decision itself (which kernel,
// initramfs and command line a node gets) is src/boot/plan.ts `planBoot`, pure.
// This file holds types only: netboot/ imports nothing of the registry or the database
// (tests/netboot_imports_test.ts walks the import graph).

import type { EventKind } from "../src/eventkinds.ts";
import type { BootFileCache } from "./bootcache.ts";

/** Which rate budget of its source an event counts against (src/events.ts recordFromSource). */
export type Budget = "refusal" | "node";

/** Where the protocols write the node timelines (the events table). */
export interface EventSink {
  /** An event caused by a sender at `source` on the boot network, within its budget; false when
   *  it was suppressed (then say nothing in the log either). */
  fromSource(
    source: string | undefined,
    mac: string | null,
    kind: EventKind,
    detail?: Record<string, unknown>,
    budget?: Budget,
  ): boolean;
  /** A progress report: replaces the node's newest event when it is progress of the same kind. */
  progress(mac: string, kind: EventKind, detail: Record<string, unknown>): void;
  /** A DHCP event, stamped at `at` (ms since the epoch). DHCP has no source address to limit by:
   *  the sink limits it per MAC (src/events.ts recordDhcpAllowed); the caller limits what unknown
   *  MACs cause (registration) itself. */
  record(mac: string | null, kind: EventKind, detail: Record<string, unknown>, at: number): void;
}

// ---- DHCP ---------------------------------------------------------------------------------

/** A node as DHCP sees it. */
export interface DhcpNode {
  mac: string;
  name?: string;
  ip?: string | null;
}

export interface Lease {
  mac: string;
  ip: string;
  expiresAt: number;
  state: "offered" | "bound" | "released" | "declined";
}

export interface LeaseOptions {
  range: { start: string; end: string };
  /** Never handed out (our own address, the router). */
  exclude?: string[];
  /** How long an OFFER holds its address before another client may get it. */
  offerSeconds?: number;
  /** How long a DECLINEd (in use elsewhere) address stays out of the pool. */
  declineSeconds?: number;
}

/** Address allocation of full-mode DHCP (src/boot/leases.ts: the `leases` table). Times in
 *  seconds since the epoch. */
export interface Leases {
  get(mac: string): Lease | undefined;
  /** The address to offer (reservation, current lease, requested, next free), or undefined
   *  when the pool is exhausted. */
  pick(mac: string, now: number, reserved?: string, requested?: string): string | undefined;
  offer(mac: string, ip: string, now: number): void;
  bind(mac: string, ip: string, seconds: number, now: number): void;
  release(mac: string, ip: string, now: number): boolean;
  /** Whether `ip` is offered or leased to `mac` (only then may it decline it). */
  declinable(mac: string, ip: string): boolean;
  /** False (nothing changed) unless `ip` was offered or leased to `mac`. */
  decline(mac: string, ip: string, now: number): boolean;
}

export interface DhcpBooter {
  /** The registered node with this MAC, its last-seen time moved to `at` (the hot path: every
   *  packet of every known node). */
  seen(mac: string, at: number): DhcpNode | undefined;
  /** Registers a first-seen MAC (the caller applies the rate and the cap). */
  register(mac: string, source: Record<string, unknown>): DhcpNode;
  /** An address we ACKed to the MAC: the node's address (unless an admin fixed it). */
  observeAddress(mac: string, ip: string, evidence: "lease"): unknown;
  /** Nodes registered by us that no admin has adopted (checked against registerMax). */
  countAutoRegistered(): number;
  /** Forgets auto-registered nodes that never booted within the TTL. */
  ageOut(ttlSeconds: number): unknown;
  leases(o: LeaseOptions): Leases;
  /** Runs `fn` as one transaction (one commit per DHCP request). */
  transaction<T>(fn: () => T): T;
  events: EventSink;
}

// ---- TFTP ---------------------------------------------------------------------------------

/** A Raspberry Pi's boot file that netroot makes for the node (netboot/tftp/resolve.ts). */
export type PiBootFile = "config.txt" | "cmdline.txt" | "netroot-kernel" | "netroot-initramfs";

export interface TftpBooter {
  /** The node behind a client address, and its deploy link (nodes/<mac>/fs → image rootfs). */
  nodeAt(ip: string): { mac: string; fs: string } | undefined;
  /** One of a Pi node's boot files: the kernel or initramfs (a path), config.txt or cmdline.txt
   *  (rendered bytes; cmdline.txt opens a boot, as an iPXE script fetch does), or why not;
   *  `remote` is the TFTP client's address. */
  piFile?(
    mac: string,
    name: PiBootFile,
    remote: string,
  ): Promise<{ file: string } | { data: Uint8Array } | Refusal>;
  /** The image root a node's fetch of `file` (a name under its image's /boot, a Pi's serial
   *  directory dropped) is read from: that of the version the Booter picks for the fetch (a Pi's
   *  whole boot from one version: src/boot/piboot.ts). Without it, the deploy link `fs`. */
  bootRoot?(mac: string, file: string): string;
  events: EventSink;
}

// ---- HTTP ---------------------------------------------------------------------------------

/** A node's boot as iPXE runs it (src/boot/plan.ts BootPlan, the parts HTTP renders). */
export interface ScriptPlan {
  mac: string;
  nodeName: string;
  image: { id: string; name: string };
  kernelUrl: string;
  initramfsUrl: string;
  cmdline: string;
}

/** Why a node gets no boot: `unknown` when the MAC is not registered at all. */
export interface Refusal {
  refused: string;
  unknown?: boolean;
}

import type { BootFileKind } from "../contract/bootfiles.ts";
export type { BootFileKind };

export interface HttpBooter {
  /** The node's boot plan for a script fetch (opens a boot: a new token), or why not; `remote`
   *  is the client's address (undefined: the server machine's own). */
  script(mac: string, req: { base: string; remote?: string }): Promise<ScriptPlan | Refusal>;
  /** Where one of the node's boot files is (image pinned by `?image=`, else its current one);
   *  `path` rejects with a missing file (Deno.errors.NotFound, ENOENT or `status` 404: HTTP 404)
   *  or another error (a failed initramfs build, I/O: 500). */
  bootFile(
    mac: string,
    kind: BootFileKind,
    pinned?: string,
  ): Promise<{ imageId: string; path(): Promise<string> } | Refusal>;
  /** The registered node at an address (UEFI HTTP boot fetches iPXE without a MAC). */
  macAt(ip: string): string | undefined;
  /** Whether a report with this token is taken from this MAC now, sent from `source` (the
   *  sender's address; undefined: the server machine's own): the boot's image, or why not. */
  acceptReport(
    mac: string,
    token: string,
    source: string | undefined,
  ): { imageId: string | null } | { rejected: string };
  /** An accepted report was recorded: the boot's stage and the node's last-seen time move. */
  reported(mac: string, token: string, stage: string): void;
  /** The iPXE binaries' directory (GET /boot/ipxe/<file>). */
  ipxeDir: string;
  /** Where a binary missing from ipxeDir is looked for (the release bundle's loaders). */
  ipxeFallbackDir?: string;
  /** Base URL nodes use, when the server knows it (else the request's origin). */
  nodeUrl(): string | undefined;
  events: EventSink;
}

/** Everything the boot protocols need, from one object. */
export interface Booter extends DhcpBooter, TftpBooter, HttpBooter {
  /** The boot files HTTP and TFTP send, held in memory: one cache (one budget) per server. */
  files: BootFileCache;
}
