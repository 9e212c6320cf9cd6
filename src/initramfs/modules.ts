// Which kernel modules the node init loads, in which order — resolved from the image's own
// /lib/modules/<kv>/modules.dep like `modprobe --show-depends`, without running modprobe (the
// initramfs has none and the image kernel is not the host's). Pure: text in, lists out.

/** What a node needs before its root is mounted: NICs, disks, NFS, overlay, ext4, the ESP. */
export const WANTED_MODULES = [
  // NICs: virtual machines, then the common wired chips in lab PCs
  "virtio_pci",
  "virtio_net",
  "e1000",
  "e1000e",
  "igb",
  "igc",
  "ixgbe",
  "r8169",
  "tg3",
  // disks (hybrid mode copies the image to a local partition)
  "virtio_blk",
  "virtio_scsi",
  "sd_mod",
  "ahci",
  "nvme",
  // filesystems
  "nfsv4",
  "nfsv3",
  "overlay",
  "ext4",
  "vfat",
  "nls_cp437",
  "nls_iso8859_1",
  // raw sockets for DHCP (built in on Debian kernels)
  "af_packet",
];

/** Shipped, not loaded at start: the init loads them (the last with its target as parameter)
 *  when the kernel command line has netconsole=. */
export const NETCONSOLE_MODULES = ["netconsole"];

/**
 * /netroot/modules.plan (overlay/modules.ts parseModulesPlan): for each of `wanted` that this
 * kernel has as a module, `module <name> <paths in load order>`, then every modules.alias line
 * (globs included) naming one of them. The init loads from it only what its devices and its mode
 * need.
 */
export function renderModulesPlan(idx: ModuleIndex, wanted: string[], aliasText = ""): string {
  const lines = [
    "# netroot modules plan: module <name> <load order>; alias <modalias glob> <name>",
  ];
  const names = new Set<string>();
  for (const w of wanted) {
    const name = moduleName(w);
    if (names.has(name) || !idx.paths.has(name)) continue;
    names.add(name);
    lines.push(`module ${name} ${planModules(idx, [name]).order.join(" ")}`);
  }
  for (const line of aliasText.split("\n")) {
    const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line.trim());
    if (m && names.has(moduleName(m[2]))) lines.push(`alias ${m[1]} ${moduleName(m[2])}`);
  }
  return lines.join("\n") + "\n";
}

/** Module name as the kernel knows it: basename without .ko[.xz|.zst|.gz], `-` read as `_`. */
export function moduleName(path: string): string {
  return path.replace(/^.*\//, "").replace(/\.ko(\.(xz|zst|gz))?$/, "").replaceAll("-", "_");
}

export interface ModuleIndex {
  /** name → path relative to /lib/modules/<kv>/ */
  paths: Map<string, string>;
  /** path → direct and indirect dependencies as modules.dep lists them (paths) */
  deps: Map<string, string[]>;
  builtin: Set<string>;
  /** name → modules to load before it (modules.softdep `pre:`), possibly aliases */
  softPre: Map<string, string[]>;
  /** exact (non-glob) aliases → module names, e.g. crypto-crc32c → crc32c_generic, crc32c_intel */
  aliases: Map<string, string[]>;
}

export function parseModuleIndex(files: {
  dep: string;
  builtin?: string;
  softdep?: string;
  alias?: string;
}): ModuleIndex {
  const idx: ModuleIndex = {
    paths: new Map(),
    deps: new Map(),
    builtin: new Set(),
    softPre: new Map(),
    aliases: new Map(),
  };
  for (const line of files.dep.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    idx.paths.set(moduleName(path), path);
    idx.deps.set(path, line.slice(colon + 1).trim().split(/\s+/).filter(Boolean));
  }
  for (const line of (files.builtin ?? "").split("\n")) {
    if (line.trim()) idx.builtin.add(moduleName(line.trim()));
  }
  // Lists grow in place and lines are read word by word, as kmod does: a copy of the list per
  // line, or a lazy match retried at each blank of a line, took time quadratic in a hostile
  // index's length (25 s for 560 KB of one alias repeated) on the server's only thread.
  const add = (map: Map<string, string[]>, key: string, value: string) => {
    const list = map.get(key);
    if (list) list.push(value);
    else map.set(key, [value]);
  };
  for (const line of (files.softdep ?? "").split("\n")) {
    const [word, module, ...rest] = line.trim().split(/\s+/);
    if (word !== "softdep" || !module) continue;
    let pre = false;
    for (const w of rest) {
      if (w === "pre:" || w === "post:") pre = w === "pre:";
      else if (pre) add(idx.softPre, moduleName(module), w);
    }
  }
  for (const line of (files.alias ?? "").split("\n")) {
    const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line.trim());
    if (!m || /[*?[]/.test(m[1])) continue;
    add(idx.aliases, m[1], moduleName(m[2]));
  }
  return idx;
}

export interface ModulePlan {
  /** paths relative to /lib/modules/<kv>/, dependencies before their users, no duplicates */
  order: string[];
  /** wanted names the kernel has built in (nothing to load) */
  builtin: string[];
  /** wanted names this kernel does not have (skipped) */
  missing: string[];
}

/**
 * Load order for `wanted`: each module after its dependencies (depth-first, post-order) and after
 * its soft `pre:` dependencies (optional: those this kernel lacks are dropped silently).
 */
export function planModules(idx: ModuleIndex, wanted: string[]): ModulePlan {
  const plan: ModulePlan = { order: [], builtin: [], missing: [] };
  const done = new Set<string>();
  // A path visited once is done or on the stack from then on, so a visit again does nothing: a
  // module name's soft dependencies, and an alias's modules, are walked once in all, each walk
  // going on from where the last one (maybe one under way, further up) got to. Walked again from
  // the start for each path of the name, 10,000 paths of one name with 10,000 soft dependencies
  // (290 KB of index) took 7 s of the server's only thread.
  const walked = new Map<string[], number>();
  const walk = (list: string[], each: (item: string) => void) => {
    for (let i = walked.get(list) ?? 0; i < list.length; i = walked.get(list)!) {
      walked.set(list, i + 1);
      each(list[i]);
    }
  };
  const visit = (path: string, stack: Set<string>) => {
    if (done.has(path) || stack.has(path)) return; // modules.dep has no cycles; guard anyway
    stack.add(path);
    walk(
      idx.softPre.get(moduleName(path)) ?? [],
      (pre) =>
        walk(idx.aliases.get(pre) ?? [moduleName(pre)], (name) => {
          const p = idx.paths.get(name);
          if (p) visit(p, stack);
        }),
    );
    // modules.dep lists the full closure with the first-needed last (modprobe loads it
    // backwards); recursing on each keeps the order right even for hand-written files.
    for (const dep of [...(idx.deps.get(path) ?? [])].reverse()) visit(dep, stack);
    stack.delete(path);
    done.add(path);
    plan.order.push(path);
  };
  for (const w of wanted) {
    const name = moduleName(w);
    const path = idx.paths.get(name);
    if (path) visit(path, new Set());
    else if (idx.builtin.has(name)) plan.builtin.push(name);
    else plan.missing.push(name);
  }
  return plan;
}
