// Structured log lines: `2026-11-26T00:00:00.000Z INFO dhcp offer node=n1 mac=52:54:00:00:00:01 ip=10.0.0.5`.
// One line per event, key=value fields (values quoted when they contain spaces) so that
// `grep`/`awk` work on a lab server without a log stack; or one JSON object per line
// (`--log-format json`). A line about a node names it (`node=`, looked up from its `mac`).
// Under systemd with stderr on the journal the timestamp is left out (the journal has its own)
// and each line starts with its sd-daemon priority, `<3>` error … `<7>` debug, which journald
// strips and stores as the entry's PRIORITY.

export type Level = "debug" | "info" | "warn" | "error";
export type Fields = Record<string, unknown>;
export type LogFormat = "text" | "json";

const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
/** sd-daemon(3) priorities (syslog levels). */
const priority: Record<Level, number> = { debug: 7, info: 6, warn: 4, error: 3 };
let threshold: Level = (Deno.env.get("NETROOT_LOG") as Level | undefined) ?? "info";
let sink: (line: string) => void = (line) => console.error(line);
let format: LogFormat = Deno.env.get("NETROOT_LOG_FORMAT") === "json" ? "json" : "text";
const journal = stderrIsJournal();
let nodeName: ((mac: string) => string | undefined) | undefined;

export function setLogLevel(level: Level): void {
  threshold = level;
}

export function setLogFormat(f: LogFormat): void {
  format = f;
}

/** Redirects log lines (tests capture them; the node init writes to the console). */
export function setLogSink(fn: (line: string) => void): void {
  sink = fn;
}

/** Names the node of lines that carry a `mac` field (the server sets its registry lookup).
 *  Returns the function that removes it again. */
export function setNodeNamer(fn: (mac: string) => string | undefined): () => void {
  nodeName = fn;
  return () => {
    if (nodeName === fn) nodeName = undefined;
  };
}

/**
 * True when stderr is the journal stream systemd opened for this service: $JOURNAL_STREAM holds
 * that stream's "device:inode", compared with stderr's own (a child whose stderr goes elsewhere
 * inherits the variable, and $INVOCATION_ID alone says systemd started us, not where stderr goes:
 * a file or a terminal keeps its timestamps).
 */
export function stderrIsJournal(env = Deno.env.get("JOURNAL_STREAM")): boolean {
  const m = /^(\d+):(\d+)$/.exec(env ?? "");
  if (!m) return false;
  try {
    const st = Deno.statSync("/proc/self/fd/2"); // the magic link stats the open stream
    return st.dev === Number(m[1]) && st.ino === Number(m[2]);
  } catch {
    return false;
  }
}

export function formatValue(v: unknown): string {
  const s = typeof v === "string" ? v : v instanceof Error ? v.message : JSON.stringify(v);
  // Quoted (JSON-escaped) when it holds a blank, a quote, `=` or a control character: values come
  // from the boot network and from images, and an escape sequence written raw would act on the
  // terminal of an admin who reads the log.
  // deno-lint-ignore no-control-regex -- finding control characters is the point
  return /[\s"=\x00-\x1f\x7f-\x9f]/.test(s ?? "") ? jsonText(s) : String(s);
}

/** JSON.stringify for a terminal: it escapes C0 controls but leaves DEL and the C1 ones raw
 *  (U+0080–U+009F: CSI and OSC among them, which terminals obey, and which a TFTP file name or an
 *  HTTP header carries byte for byte); they are written \u00XX, the same JSON value (outside
 *  strings JSON has no such character). */
export function jsonText(data: unknown, indent?: number): string {
  return JSON.stringify(data, null, indent).replace(
    /[\x7f-\x9f]/g,
    (c) => `\\u00${c.charCodeAt(0).toString(16)}`,
  );
}

/** The fields with `node` first when the line is about a known node. */
function withNode(fields: Fields | undefined): Fields {
  const mac = fields?.mac;
  if (!nodeName || typeof mac !== "string" || fields?.node !== undefined) return fields ?? {};
  let node: string | undefined;
  try {
    node = nodeName(mac);
  } catch { /* the registry is closing: the line still goes out, with its mac */ }
  return node === undefined ? fields! : { node, ...fields };
}

export function formatLine(level: Level, component: string, msg: string, fields?: Fields): string {
  const all = withNode(fields);
  const ts = journal ? undefined : new Date().toISOString();
  let line: string;
  if (format === "json") {
    const obj: Fields = { ts, level, component, msg };
    for (const [k, v] of Object.entries(all)) {
      if (v !== undefined && !(k in obj)) obj[k] = v instanceof Error ? v.message : v;
    }
    line = jsonText(obj);
  } else {
    line = `${ts ? `${ts} ` : ""}${level.toUpperCase()} ${component} ${msg}`;
    for (const [k, v] of Object.entries(all)) {
      if (v !== undefined) line += ` ${k}=${formatValue(v)}`;
    }
  }
  return journal ? `<${priority[level]}>${line}` : line;
}

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
}

export function logger(component: string): Logger {
  const emit = (level: Level) => (msg: string, fields?: Fields) => {
    if (order[level] >= order[threshold]) sink(formatLine(level, component, msg, fields));
  };
  return { debug: emit("debug"), info: emit("info"), warn: emit("warn"), error: emit("error") };
}
