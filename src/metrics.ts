// Prometheus metrics (GET /metrics, text exposition format 0.0.4). The counters are fed by the
// events table's observer (src/events.ts observeEvents): DHCP, TFTP, HTTP boot, node reports and
// NFS reloads are all events already, so nothing in netboot/ counts anything itself. Gauges (nodes,
// images, database size, memory) are read at scrape time. Labels stay low-cardinality: no MACs,
// no addresses, no image ids, and anything a node on the boot network chooses (a stage name) is
// bounded to a known set.
import { KNOWN_STAGES } from "../contract/report.ts";
import { NODE_STATES } from "./nodestate.ts";
import { Hono } from "hono";
import type { Context } from "./context.ts";
import type { Db } from "./db.ts";
import { type EventObserver, observeEvents } from "./events.ts";
import { statvfs } from "./linux/fsops.ts";

type Labels = Record<string, string>;

/** A counter family: one value per label set. */
class Counter {
  readonly values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels = {}, by = 1): void {
    if (!Number.isFinite(by) || by < 0) return;
    const k = labelText(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [k, v] of this.values) out.push(`${this.name}${k} ${v}`);
    return out;
  }
}

/** Seconds; node stages run from milliseconds (modules) to minutes (a hybrid copy). */
const BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

class Histogram {
  readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; n: number }>();
  constructor(readonly name: string, readonly help: string) {}
  observe(labels: Labels, value: number): void {
    if (!Number.isFinite(value) || value < 0) return;
    const k = labelText(labels);
    let s = this.series.get(k);
    if (!s) this.series.set(k, s = { labels, counts: BUCKETS.map(() => 0), sum: 0, n: 0 });
    BUCKETS.forEach((b, i) => {
      if (value <= b) s.counts[i]++;
    });
    s.sum += value;
    s.n++;
  }
  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const s of this.series.values()) {
      BUCKETS.forEach((b, i) => {
        out.push(`${this.name}_bucket${labelText({ ...s.labels, le: String(b) })} ${s.counts[i]}`);
      });
      out.push(`${this.name}_bucket${labelText({ ...s.labels, le: "+Inf" })} ${s.n}`);
      out.push(`${this.name}_sum${labelText(s.labels)} ${s.sum}`);
      out.push(`${this.name}_count${labelText(s.labels)} ${s.n}`);
    }
    return out;
  }
}

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"')}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

function gauge(name: string, help: string, rows: [Labels, number][]): string[] {
  return [
    `# HELP ${name} ${help}`,
    `# TYPE ${name} gauge`,
    ...rows.map(([l, v]) => `${name}${labelText(l)} ${v}`),
  ];
}

const HTTP_FILES = new Set(["kernel", "initramfs", "manifest", "ipxe"]);

/** A label value from an event's detail: a short lowercase word, else "other". */
function word(v: unknown): string {
  return typeof v === "string" && /^[a-z0-9][a-z0-9-]{0,23}$/.test(v) ? v : "other";
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : 0;
}

/** The server's counters, fed by events. */
export class Metrics {
  readonly dhcp = new Counter(
    "netroot_dhcp_packets_total",
    "DHCP messages the server handled, by event (offer, ack, proxy-offer, nak, ...) and client firmware.",
  );
  readonly tftp = new Counter(
    "netroot_tftp_transfers_total",
    "TFTP transfers by outcome (done, refused, aborted, failed).",
  );
  readonly tftpBytes = new Counter("netroot_tftp_bytes_total", "Bytes sent by TFTP.");
  readonly httpScripts = new Counter(
    "netroot_http_boot_scripts_total",
    "iPXE boot script requests by outcome (script, refused, unknown).",
  );
  readonly httpFiles = new Counter(
    "netroot_http_boot_transfers_total",
    "HTTP boot file transfers by file (kernel, initramfs, manifest, ipxe) and outcome (ok, incomplete, error).",
  );
  readonly httpBytes = new Counter(
    "netroot_http_boot_bytes_total",
    "Bytes of boot files sent over HTTP, by file.",
  );
  readonly reports = new Counter(
    "netroot_boot_reports_total",
    "Stage reports from booting nodes, by stage (accepted and rejected).",
  );
  readonly boots = new Counter(
    "netroot_boots_total",
    "Node boots by outcome: handover (init handed over to the image), fatal, hybrid-failed (fell back to network mode), rejected (report refused).",
  );
  readonly stageSeconds = new Histogram(
    "netroot_boot_stage_duration_seconds",
    "How long each node init stage took (the ms of its report).",
  );
  readonly hybridBytes = new Counter(
    "netroot_hybrid_copy_bytes_total",
    "Bytes of completed hybrid copies, by how (written, linked, reused, kept).",
  );
  readonly nfsReloads = new Counter(
    "netroot_nfs_export_reloads_total",
    "NFS export table updates.",
  );
  readonly configReloads = new Counter(
    "netroot_config_reloads_total",
    "Config file reloads (SIGHUP) by result (ok, error).",
  );

  /** 1 while every /persist is exported read-only for want of room (src/nfs.ts, PersistRoom). */
  persistReadOnly = 0;

  readonly observer: EventObserver = (kind, d) => {
    const [component, ...rest] = kind.split(".");
    const what = rest.join(".");
    if (component === "dhcp") {
      this.dhcp.inc({ type: word(what), firmware: word(d.firmware ?? "unknown") });
    } else if (component === "tftp") {
      this.tftp.inc({ outcome: word(what) });
      this.tftpBytes.inc({}, num(d.bytes));
    } else if (component === "http") {
      this.http(what, d);
    } else if (component === "init") {
      const stage = KNOWN_STAGES.has(what) ? what : "other";
      this.reports.inc({ stage });
      if (typeof d.ms === "number" && stage !== "hybrid-copy") {
        this.stageSeconds.observe({ stage }, d.ms / 1000);
      }
      if (stage === "hybrid-ready") {
        this.hybridBytes.inc({ how: "written" }, num(d.bytesWritten));
        this.hybridBytes.inc({ how: "linked" }, num(d.bytesLinked));
        this.hybridBytes.inc({ how: "reused" }, num(d.bytesReused));
        this.hybridBytes.inc({ how: "kept" }, num(d.bytesKept));
      }
    } else if (kind === "nfs.exports") {
      this.nfsReloads.inc();
    } else if (kind === "nfs.persist-read-only" || kind === "nfs.persist-writable") {
      this.persistReadOnly = kind === "nfs.persist-read-only" ? 1 : 0;
    }
  };

  private http(what: string, d: Record<string, unknown>): void {
    if (what === "script" || what === "refused" || what === "unknown") {
      this.httpScripts.inc({ outcome: what });
    } else if (what === "report.rejected") {
      this.reports.inc({ stage: "rejected" });
      this.boots.inc({ outcome: "rejected" });
    } else {
      const [file, error] = what.split(".");
      if (!HTTP_FILES.has(file)) return;
      const outcome = error ? "error" : d.incomplete ? "incomplete" : "ok";
      this.httpFiles.inc({ file, outcome });
      this.httpBytes.inc({ file }, num(d.bytes));
    }
  }

  /** The exposition text: counters, then the gauges read now from `ctx`. */
  render(ctx: Context): string {
    const counters = [
      this.dhcp,
      this.tftp,
      this.tftpBytes,
      this.httpScripts,
      this.httpFiles,
      this.httpBytes,
      this.reports,
      this.boots,
      this.nfsReloads,
      this.hybridBytes,
      this.configReloads,
    ];
    const lines = [...counters.flatMap((c) => c.render()), ...this.stageSeconds.render()];
    lines.push(...nodeGauges(ctx));
    lines.push(
      ...gauge("netroot_images", "Images in the store.", [[{}, ctx.images.list().length]]),
    );
    lines.push(
      ...gauge("netroot_database_bytes", "Size of the database files (netroot.db and its WAL).", [
        [{}, databaseBytes(ctx.data.db)],
      ]),
    );
    // What an alert wants before /persist turns read-only: the room left where the nodes' /persist
    // (and, unless the admin moved them, the images and the database) are.
    const space = statvfs(ctx.data.nodes);
    lines.push(
      ...gauge(
        "netroot_nodes_fs_free_bytes",
        "Free bytes on the file system holding the nodes' /persist (root-reserved blocks included).",
        [[{}, space.freeBytesForRoot]],
      ),
      ...gauge(
        "netroot_persist_read_only",
        "1 while every node's /persist is exported read-only: less than --nfs-reserve free.",
        [[{}, this.persistReadOnly]],
      ),
    );
    const http = ctx.httpConnections?.();
    if (http) {
      lines.push(
        ...gauge("netroot_http_connections", "HTTP connections open now.", [[{}, http.open]]),
        "# HELP netroot_http_connections_refused_total HTTP connections closed unanswered: " +
          "past an address's share or the total (src/httpbounds.ts).",
        "# TYPE netroot_http_connections_refused_total counter",
        `netroot_http_connections_refused_total ${http.refused}`,
      );
    }
    const m = Deno.memoryUsage();
    lines.push(
      ...gauge("netroot_process_memory_bytes", "Memory of the server process (Deno.memoryUsage).", [
        [{ kind: "rss" }, m.rss],
        [{ kind: "heap_total" }, m.heapTotal],
        [{ kind: "heap_used" }, m.heapUsed],
        [{ kind: "external" }, m.external],
      ]),
    );
    return lines.join("\n") + "\n";
  }
}

/** Registered nodes by whether they have an image, and by state (every state, 0 included). */
function nodeGauges(ctx: Context): string[] {
  const nodes = ctx.nodes.list();
  const withImage = nodes.filter((n) => n.imageId).length;
  const out = gauge("netroot_nodes", "Registered nodes, by whether an image is deployed to them.", [
    [{ image: "yes" }, withImage],
    [{ image: "no" }, nodes.length - withImage],
  ]);
  out.push(...gauge(
    "netroot_nodes_by_state",
    "Registered nodes by state.",
    NODE_STATES.map((state) => [{ state }, nodes.filter((n) => n.state === state).length]),
  ));
  return out;
}

function databaseBytes(path: string): number {
  let total = 0;
  for (const p of [path, `${path}-wal`]) {
    try {
      total += Deno.statSync(p).size;
    } catch { /* no WAL right now */ }
  }
  return total;
}

const registries = new WeakMap<Db, Metrics>();

/** The metrics of the server using `db`, created (and observing its events) on first use. */
export function metricsFor(db: Db): Metrics {
  let m = registries.get(db);
  if (!m) {
    registries.set(db, m = new Metrics());
    observeEvents(db, m.observer);
  }
  return m;
}

/** GET /metrics: unauthenticated like most scrape targets (it holds counts, no MACs or tokens). */
export function metricsRoutes(ctx: Context): Hono {
  const app = new Hono();
  app.get("/", (c) =>
    c.body(metricsFor(ctx.db).render(ctx), 200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
    }));
  return app;
}
