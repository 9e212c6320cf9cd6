// Kernel modules from /netroot/modules.order (one path per line, relative to
// /lib/modules/<release>/, dependency order as computed by the initramfs builder). The loader
// keeps going past failures: some are expected (crc32c-intel without SSE4.2 under TCG) and a real
// problem shows up later, at the stage that needs the module, with its own message.

/** Paths in load order: blank lines and `#` comments skipped, duplicates keep their first place. */
export function parseModulesOrder(text: string): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const raw of text.split("\n")) {
    const p = raw.trim();
    if (!p || p.startsWith("#") || seen.has(p)) continue;
    if (p.startsWith("/") || p.split("/").includes("..")) {
      throw new Error(`modules.order: ${p}: paths must be relative to /lib/modules/<release>/`);
    }
    seen.add(p);
    out.push(p);
  }
  return out;
}

/** Loads one module file (with module parameters, e.g. `netconsole=…`). */
export type LoadModule = (path: string, params?: string) => "loaded" | "present";

export interface ModulesResult {
  loaded: string[];
  present: string[];
  failed: { path: string; error: string }[];
}

/** Loads each module in order, never stopping at a failure. */
export function loadModules(dir: string, order: string[], load: LoadModule): ModulesResult {
  const r: ModulesResult = { loaded: [], present: [], failed: [] };
  for (const p of order) {
    try {
      r[load(`${dir}/${p}`) === "loaded" ? "loaded" : "present"].push(p);
    } catch (e) {
      r.failed.push({ path: p, error: e instanceof Error ? e.message : String(e) });
    }
  }
  return r;
}

export const moduleName = (path: string) =>
  path.slice(path.lastIndexOf("/") + 1).replace(/\.ko(\.(xz|zst|gz))?$/, "");

export function summarize(r: ModulesResult): string {
  const parts = [`${r.loaded.length} loaded`];
  if (r.present.length) parts.push(`${r.present.length} already present`);
  if (r.failed.length) {
    parts.push(`${r.failed.length} failed (${r.failed.map((f) => moduleName(f.path)).join(", ")})`);
  }
  return parts.join(", ");
}
