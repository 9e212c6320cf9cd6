// Readable tables by default, JSON with --json.
import { jsonText } from "../log.ts";

/** A value as one table cell or key-value line, its control characters shown (visible): a value
 *  may come from a node (a DHCP vendor class, a report) or an image (its kernel's path, the
 *  reason it is not bootable). */
function cellText(v: unknown): string {
  return v === null || v === undefined
    ? "-"
    : visible(typeof v === "object" ? JSON.stringify(v) : String(v));
}

export function table(rows: Record<string, unknown>[], columns: string[]): string {
  const cell = cellText;
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i])).join("  ").trimEnd();
  return [
    line(columns.map((c) => c.toUpperCase())),
    ...rows.map((r) => line(columns.map((c) => cell(r[c])))),
  ]
    .join("\n");
}

export function keyValues(obj: Record<string, unknown>): string {
  const w = Math.max(...Object.keys(obj).map((k) => k.length));
  return Object.entries(obj).map(([k, v]) => `${k.padEnd(w)}  ${cellText(v)}`).join("\n");
}

/** What a command prints: `data` as JSON (--json), else `human()`, neither with a raw control
 *  character but the lines' own (answers quote nodes, images, devices: visibleLines). */
export function print(json: boolean | undefined, data: unknown, human: () => string): void {
  console.log(json ? jsonText(data, 2) : visibleLines(human()));
}

export function humanBytes(n: number): string {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

/** Text from an image or a node for the admin's terminal: control characters (escape sequences
 *  can retitle, recolour or rewrite a terminal, or set its clipboard) shown as `\xNN` instead. */
export function visible(text: string): string {
  // deno-lint-ignore no-control-regex -- finding control characters is the point
  return shown(text, /[\x00-\x08\x0a-\x1f\x7f-\x9f]/g);
}

/** visible() for a message whose lines are its own (an error from the server): newlines kept. */
export function visibleLines(text: string): string {
  // deno-lint-ignore no-control-regex -- finding control characters is the point
  return shown(text, /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g);
}

function shown(text: string, controls: RegExp): string {
  return text.replace(controls, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}
