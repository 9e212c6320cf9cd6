// Stage reports: the node init POSTs its boot stages to <netroot.url>/boot/report, several numbered
// reports in one batch (overlay/report.ts sends them, netboot/http.ts records them as
// `init.<stage>` events; one report object alone is accepted too). Flat: every
// field at the top level with one type, so the timeline shows values, not JSON inside a string.
// The server keeps the known fields of the right type and drops anything else.

/** One report as the node makes it (the sender adds the boot's identity: token and mac). */
export interface StageReport {
  /** start, modules, network, hybrid-detect, hybrid-copy, hybrid-ready, hybrid-failed, nfs-root,
   *  overlay, persist, handover, fatal (docs/architecture.md). */
  stage: string;
  /** How long the stage took. */
  ms?: number;
  ok?: boolean;
  /** One human-readable line. */
  detail?: string;
  /** Bytes the NFS client has read from the server so far (root + persist). */
  nfsReadBytes?: number;
  /** hybrid-copy progress: bytes done (written, linked or kept) of total, bytes/s written. */
  done?: number;
  total?: number;
  rate?: number;
  /** hybrid-ready: what the copy did. */
  variant?: string;
  entries?: number;
  bytesTotal?: number;
  bytesWritten?: number;
  bytesLinked?: number;
  bytesReused?: number;
  /** data kept in place from the previous version's copy (a re-deploy in place) */
  bytesKept?: number;
  resumed?: boolean;
  evicted?: number;
  /** hybrid-failed: why (no-space, corrupt, io, manifest, overlay: the kernel refused the overlay
   *  on the local copy, init: the root it made has no init to hand over to). */
  reason?: string;
}

/** A report on the wire: the boot's identity (the per-boot token of netroot.token) and its fields. */
export interface WireReport extends StageReport {
  token: string;
  mac: string;
  /** The report's number in its boot (1, 2, …; the node's Reporter counts): a retry of a report
   *  the server did receive (the node gave up waiting for the answer) carries the same number, and
   *  the server records it once. Absent: always recorded. */
  seq?: number;
}

type Field = Exclude<keyof StageReport, "stage">;
const FIELDS: Record<Field, "number" | "string" | "boolean"> = {
  ms: "number",
  ok: "boolean",
  detail: "string",
  nfsReadBytes: "number",
  done: "number",
  total: "number",
  rate: "number",
  variant: "string",
  entries: "number",
  bytesTotal: "number",
  bytesWritten: "number",
  bytesLinked: "number",
  bytesReused: "number",
  bytesKept: "number",
  resumed: "boolean",
  evicted: "number",
  reason: "string",
};

export const STAGE_NAME = /^[a-z][a-z0-9_-]{0,39}$/;

/** The stages the node init reports (overlay/init.ts, hybrid/mod.ts): what the server counts by
 *  name (metrics); any other name a node sends is counted as "other". */
export const KNOWN_STAGES: ReadonlySet<string> = new Set([
  "start",
  "modules",
  "network",
  "hybrid-detect",
  "hybrid-copy",
  "hybrid-ready",
  "hybrid-failed",
  "nfs-root",
  "overlay",
  "persist",
  "handover",
  "fatal",
]);

/** Stages after which the init sends nothing more (the boot's end: src/boots.ts bootExpiry). */
export const FINAL_STAGES: ReadonlySet<string> = new Set(["handover", "fatal"]);

/** Stages that report progress: each report replaces the previous one on the timeline instead of
 *  adding an event per second of copy. */
export const PROGRESS_STAGES: ReadonlySet<string> = new Set(["hybrid-copy"]);

/** At most this many reports in one batch (a boot makes about ten; hybrid progress adds one a
 *  second, sent together when the server was slow). */
export const MAX_BATCH = 64;

/** A batch on the wire: the boot's identity once, then its numbered reports, oldest first. */
export interface WireBatch {
  token: string;
  mac: string;
  reports: (StageReport & { seq: number })[];
}

const OBJECT_FORM = "report must be a JSON object {token, mac, stage, ms?, ok?, detail?}";

/** The report in `text` (its MAC as written: the receiver parses it), or why it is refused. */
export function parseReport(text: string): WireReport | { error: string } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { error: OBJECT_FORM };
  }
  return reportOf(body);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** One report object: its identity (token, mac), stage, seq and the known fields. */
function reportOf(body: unknown): WireReport | { error: string } {
  if (!isObject(body)) return { error: OBJECT_FORM };
  const { token, mac } = body;
  if (typeof token !== "string" || typeof mac !== "string") {
    return { error: "report needs token and mac" };
  }
  return fieldsOf(body, token, mac);
}

/** A report's numbers are counts, bytes, ms or bytes/s: 0 to 2^53, where a double still counts
 *  by ones. Each is added to a server-wide counter (src/metrics.ts): two reports of 1.7e308 bytes
 *  made one +Inf for the server's life, and one of 1e300 swallowed every later boot's bytes. */
function isCount(v: number): boolean {
  return v >= 0 && v <= Number.MAX_SAFE_INTEGER;
}

function fieldsOf(
  body: Record<string, unknown>,
  token: string,
  mac: string,
): WireReport | { error: string } {
  const { stage } = body;
  if (typeof stage !== "string" || !STAGE_NAME.test(stage)) {
    return { error: "report needs stage: lower-case letters, digits, - or _" };
  }
  const r: WireReport = { token, mac, stage };
  const seq = body.seq;
  if (seq !== undefined) {
    if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) {
      return { error: "report seq must be a whole number ≥ 0" };
    }
    r.seq = seq;
  }
  for (const [k, type] of Object.entries(FIELDS) as [Field, string][]) {
    const v = body[k];
    if (typeof v === type && (type !== "number" || isCount(v as number))) {
      (r as unknown as Record<string, unknown>)[k] = v;
    }
  }
  return r;
}

/**
 * The reports in `text`: one report object (the older form), or a batch
 * `{token, mac, reports: [{seq, stage, …}, …]}` — one boot's identity for all, at most MAX_BATCH
 * reports, each numbered (seq) in increasing order; an identity inside a report is ignored. All or
 * nothing: one bad report refuses the batch, so a node never has part of one recorded.
 */
export function parseReports(
  text: string,
): { token: string; mac: string; reports: WireReport[] } | { error: string } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { error: OBJECT_FORM };
  }
  if (!isObject(body) || !("reports" in body)) {
    const r = reportOf(body);
    return "error" in r ? r : { token: r.token, mac: r.mac, reports: [r] };
  }
  const { token, mac, reports } = body;
  if (typeof token !== "string" || typeof mac !== "string") {
    return { error: "report needs token and mac" };
  }
  if (!Array.isArray(reports) || reports.length === 0 || reports.length > MAX_BATCH) {
    return { error: `reports must be an array of 1 to ${MAX_BATCH} report objects` };
  }
  const out: WireReport[] = [];
  for (const item of reports) {
    if (!isObject(item)) {
      return { error: `reports must be an array of 1 to ${MAX_BATCH} report objects` };
    }
    const r = fieldsOf(item, token, mac);
    if ("error" in r) return r;
    if (r.seq === undefined) return { error: "each report of a batch needs its seq" };
    if (out.length && r.seq <= out[out.length - 1].seq!) {
      return { error: "the reports of a batch go in increasing seq order" };
    }
    out.push(r);
  }
  return { token, mac, reports: out };
}

/** The fields of a report the timeline keeps (everything but the boot's identity). */
export function reportFields(r: WireReport): Record<string, unknown> {
  const { token: _t, mac: _m, stage: _s, seq: _n, ...fields } = r;
  return fields;
}

/**
 * Progress as one line — "42% (126.0/300.0 MB, 12.3 MB/s, ETA 14 s)" — or undefined when `d` holds
 * no progress. Shared by the node console, `netroot node log` and the dashboard, which embeds this
 * function's source in its page: keep it self-contained (no outside names).
 */
export function progressText(
  d: { done?: unknown; total?: unknown; rate?: unknown },
): string | undefined {
  const { done, total, rate } = d;
  if (typeof done !== "number" || typeof total !== "number") return undefined;
  const mb = (n: number) => (n / 1e6).toFixed(1);
  const pct = total > 0 ? Math.min(100, Math.floor((done / total) * 100)) : 100;
  let text = `${pct}% (${mb(done)}/${mb(total)} MB`;
  if (typeof rate === "number") {
    text += `, ${mb(rate)} MB/s`;
    if (rate > 0 && done < total) {
      const s = Math.ceil((total - done) / rate);
      text += `, ETA ${s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`}`;
    }
  }
  return `${text})`;
}
