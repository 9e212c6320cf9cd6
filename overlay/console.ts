// Console output of the node init: every line starts with `netroot-init:` (the e2e harness and
// humans grep for it). /dev/console is our stdout when the kernel starts us as /init.
const enc = new TextEncoder();
export const PREFIX = "netroot-init:";

export interface InitConsole {
  line(msg: string): void;
  /** A failure a human must see even when scrolling fast (framed, several lines). */
  loud(title: string, lines: string[]): void;
}

let devConsole: Deno.FsFile | undefined;
/** Set by toKernelLog: lines go to the kernel log at this level. */
let kmsgLevel: number | undefined;
/** /dev/kmsg opened by toKernelLog: used when the path is gone (between moving /dev into the new
 *  root and the switch to it). */
let kmsgHeld: Deno.FsFile | undefined;

/**
 * From now on the console lines go to the kernel log instead: the kernel prints them on every
 * console it has — the screen, the serial line and netconsole (the kernel's netconsole sends what
 * the kernel prints, not what a process writes to /dev/console) — once each, and they stay in the
 * node's `dmesg`. Their level is one the kernel prints (below console_loglevel, so `quiet` still
 * shows them). Returns false (lines stay on the console) when the kernel log is not writable.
 */
export function toKernelLog(): boolean {
  try {
    const printk = Deno.readTextFileSync("/proc/sys/kernel/printk");
    const consoleLevel = Number(printk.trim().split(/\s+/)[0]);
    if (!(consoleLevel > 1)) return false;
    kmsgHeld = Deno.openSync("/dev/kmsg", { write: true }); // close-on-exec: not the image's
    kmsgLevel = Math.min(6, consoleLevel - 1);
    return true;
  } catch {
    return false;
  }
}

/** One kernel log record per line. /dev/kmsg allows 10 records per 5 s per open file (the
 *  default printk_devkmsg=ratelimit), hence one open per line; the held one when /dev/kmsg is not
 *  there (during the switch to the new root). */
function writeKernelLog(b: Uint8Array, level: number): boolean {
  try {
    for (const line of new TextDecoder().decode(b).split("\n")) {
      if (!line) continue;
      const record = enc.encode(`<${level}>${line}`);
      let f: Deno.FsFile | undefined;
      try {
        f = Deno.openSync("/dev/kmsg", { write: true });
      } catch {
        kmsgHeld!.writeSync(record);
        continue;
      }
      try {
        f.writeSync(record);
      } finally {
        f.close();
      }
    }
    return true;
  } catch {
    kmsgLevel = undefined; // back to the console for good
    return false;
  }
}

/**
 * The kernel log after toKernelLog, else stdout, or /dev/console when stdout is not open (an
 * initramfs without a /dev/console node: the kernel then starts init without fds 0-2;
 * /dev/console appears with devtmpfs). Output that cannot be written is dropped: a console
 * problem must never kill PID 1.
 */
function writeConsole(b: Uint8Array): number {
  if (kmsgLevel !== undefined && writeKernelLog(b, kmsgLevel)) return b.length;
  try {
    return Deno.stdout.writeSync(b);
  } catch {
    try {
      devConsole ??= Deno.openSync("/dev/console", { write: true });
      return devConsole.writeSync(b);
    } catch {
      return b.length;
    }
  }
}

/** Writes synchronously (a dying init must not lose its last words to a pending promise). */
export function consoleOn(write: (b: Uint8Array) => number = writeConsole) {
  const put = (text: string) => {
    let b = enc.encode(text);
    while (b.length) b = b.subarray(write(b));
  };
  const c: InitConsole = {
    line: (msg) => put(`${PREFIX} ${msg}\n`),
    loud: (title, lines) => {
      const bar = `${PREFIX} ${"*".repeat(68)}\n`;
      put(bar + [title, ...lines].map((l) => `${PREFIX} * ${l}\n`).join("") + bar);
    },
  };
  return c;
}

export const fmtMs = (ms: number) =>
  ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let v = n;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}
