// Structured log lines: `2026-11-26T00:00:00.000Z INFO dhcp offer mac=52:54:00:00:00:01 ip=10.0.0.5`.
// One line per event, key=value fields (values quoted when they contain spaces) so that
// `grep`/`awk` work on a lab server without a log stack.

export type Level = "debug" | "info" | "warn" | "error";
export type Fields = Record<string, unknown>;

const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
let threshold: Level = (Deno.env.get("NETROOT_LOG") as Level | undefined) ?? "info";
let sink: (line: string) => void = (line) => console.error(line);

export function setLogLevel(level: Level): void {
  threshold = level;
}

/** Redirects log lines (tests capture them; the node init writes to the console). */
export function setLogSink(fn: (line: string) => void): void {
  sink = fn;
}

export function formatValue(v: unknown): string {
  const s = typeof v === "string" ? v : v instanceof Error ? v.message : JSON.stringify(v);
  return /[\s"=]/.test(s ?? "") ? JSON.stringify(s) : String(s);
}

export function formatLine(level: Level, component: string, msg: string, fields?: Fields): string {
  let line = `${new Date().toISOString()} ${level.toUpperCase()} ${component} ${msg}`;
  for (const [k, v] of Object.entries(fields ?? {})) {
    if (v !== undefined) line += ` ${k}=${formatValue(v)}`;
  }
  return line;
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
