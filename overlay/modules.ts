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

// ---- Only the modules this node needs (/netroot/modules.plan, written by the builder) ----------
// The builder ships the candidates (src/initramfs/modules.ts WANTED_MODULES and their
// dependencies) and a plan: for each candidate its load order (dependencies first, itself last)
// and the image kernel's modules.alias lines naming it. The init loads the drivers whose aliases
// match the devices the kernel found (/sys/bus/*/devices/*/modalias, as udev would), in rounds
// (virtio_pci makes the virtio devices appear), then the file systems its mode needs; never the
// rest. Loading 58 modules took 2.4 s under qemu TCG; a virtio node needs about 15.

export interface ModulesPlan {
  /** module name → paths in load order (dependencies first, the module last) */
  modules: Map<string, string[]>;
  /** modules.alias globs (fnmatch: * ? [...]) → module name, in file order; `prefix` is the glob's
   *  text before its first wildcard (most globs fail on it: no pattern is compiled for them) */
  aliases: { glob: string; prefix: string; name: string; pattern?: RegExp }[];
}

/** fnmatch(3) without flags, as modprobe matches modalias globs: `*`, `?`, `[...]`, `[!...]`. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") re += "[\\s\\S]*";
    else if (c === "?") re += "[\\s\\S]";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) re += "\\[";
      else {
        let set = glob.slice(i + 1, end);
        if (set.startsWith("!")) set = "^" + set.slice(1);
        re += `[${set.replace(/\\/g, "\\\\")}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** `module <name> <path>…` and `alias <glob> <name>` lines; `#` comments and blanks skipped. */
export function parseModulesPlan(text: string): ModulesPlan {
  const plan: ModulesPlan = { modules: new Map(), aliases: [] };
  for (const raw of text.split("\n")) {
    const w = raw.trim().split(/\s+/);
    if (w[0] === "module" && w.length >= 3) {
      const paths = parseModulesOrder(w.slice(2).join("\n"));
      plan.modules.set(w[1], paths);
    } else if (w[0] === "alias" && w.length === 3) {
      const wild = w[1].search(/[*?[]/);
      plan.aliases.push({ glob: w[1], prefix: wild < 0 ? w[1] : w[1].slice(0, wild), name: w[2] });
    }
  }
  return plan;
}

/** Module names whose aliases match one of `modaliases`, in plan order, without duplicates. */
export function matchModaliases(plan: ModulesPlan, modaliases: string[]): string[] {
  const names: string[] = [];
  for (const a of plan.aliases) {
    if (names.includes(a.name)) continue;
    for (const m of modaliases) {
      if (!m.startsWith(a.prefix)) continue;
      a.pattern ??= globToRegExp(a.glob);
      if (a.pattern.test(m)) {
        names.push(a.name);
        break;
      }
    }
  }
  return names;
}

/**
 * The modalias of every device the kernel knows (`/sys/bus/<bus>/devices/<dev>/modalias`). With
 * `seen`, only devices not in it are read (and added): the hardware rounds ask again after each
 * load, and under qemu TCG reading every device's file again (most of them have none: an exception
 * each) costs tens of ms a round.
 */
export function readModaliases(sys = "/sys", seen?: Set<string>): string[] {
  const out: string[] = [];
  const list = (dir: string) => {
    try {
      return [...Deno.readDirSync(dir)].map((e) => e.name);
    } catch {
      return [];
    }
  };
  for (const bus of list(`${sys}/bus`)) {
    for (const dev of list(`${sys}/bus/${bus}/devices`)) {
      const path = `${sys}/bus/${bus}/devices/${dev}`;
      if (seen?.has(path)) continue;
      seen?.add(path);
      try {
        const m = Deno.readTextFileSync(`${path}/modalias`).trim();
        if (m) out.push(m);
      } catch { /* no modalias (or not readable): nothing to match */ }
    }
  }
  return out;
}

/** readModaliases of the devices that appeared since the last call (the first: all of them). */
export function newModaliases(sys = "/sys"): () => string[] {
  const seen = new Set<string>();
  return () => readModaliases(sys, seen);
}

/** Loads `names` (each after its dependencies) into `r`, skipping paths in `done`; names the plan
 *  does not have (built in, or not shipped) are skipped. */
export function loadNamed(
  plan: ModulesPlan,
  names: string[],
  dir: string,
  load: LoadModule,
  done: Set<string>,
  r: ModulesResult,
): void {
  const order: string[] = [];
  for (const n of names) {
    for (const p of plan.modules.get(n) ?? []) {
      if (!done.has(p)) {
        done.add(p);
        order.push(p);
      }
    }
  }
  const got = loadModules(dir, order, load);
  r.loaded.push(...got.loaded);
  r.present.push(...got.present);
  r.failed.push(...got.failed);
}

/** Disk controllers: a node with one of these may hold a hybrid partition (ext4). */
export const DISK_DRIVERS = ["virtio_blk", "virtio_scsi", "ahci", "nvme", "sd_mod", "ata_piix"];

/**
 * The hardware's drivers: rounds of modalias matching until nothing new loads (the devices of a
 * bus driver, e.g. virtio_pci's, appear once it is loaded); sd_mod once SCSI is in (disks behind
 * ahci or virtio_scsi are found asynchronously, after their controller's module returns).
 * `modaliases` may return only the devices new since its last call (newModaliases): a device
 * seen before has had its driver asked for already. Returns the names asked for besides the result.
 */
export function loadHardwareModules(
  plan: ModulesPlan,
  dir: string,
  load: LoadModule,
  modaliases: () => string[],
  done = new Set<string>(),
): { result: ModulesResult; names: string[] } {
  const r: ModulesResult = { loaded: [], present: [], failed: [] };
  const names: string[] = [];
  for (let round = 0; round < 5; round++) {
    const fresh = matchModaliases(plan, modaliases()).filter((n) => !names.includes(n));
    if (round > 0 && [...done].some((p) => moduleName(p) === "scsi_mod")) {
      if (!names.includes("sd_mod") && !fresh.includes("sd_mod")) fresh.push("sd_mod");
    }
    if (!fresh.length) break;
    names.push(...fresh);
    loadNamed(plan, fresh, dir, load, done, r);
  }
  return { result: r, names };
}
