// Network-boot figures from real qemu (TCG) boots in an e2e lab (root; nfs-ganesha; debootstrap
// for the realistic image). Run by hand: `deno run -A bench/nfs_boot_bench.ts [--no-minbase]`.
//   (a) the node's boot timeline (vnode start → DHCP → iPXE script → kernel → initramfs → init
//       stages → handover) and the netroot init's own time: /init start to the execve of the
//       image's init, without module loading (init.* reports carry ms; the console carries the
//       kernel's timestamp of "Run /init" and the init's "handover … since init start").
//   (b) bytes read over NFS during boot as a fraction of the image size, for Debian bookworm
//       minbase + systemd + the Debian kernel and modules (tests/support/minbase.ts): at the
//       handover (init.handover report) and once systemd reached multi-user (the image's bench
//       unit prints its mountstats figure), against the seed's claim: < 10 %.
// First run: ≈ 1 min debootstrap + copies (cached in .work/minbase/); then ≈ 75 s (two boots).
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Event } from "../src/events.ts";
import { debianKernel } from "../tests/support/kernel.ts";
import { benchLine, minbaseImage } from "../tests/support/minbase.ts";
import { buildTestImage } from "../tests/support/testimage.ts";
import { type Lab, lastEventId, startLab } from "../tests/e2e/harness.ts";

const { values: opt } = parseArgs({
  options: { "no-minbase": { type: "boolean" }, keep: { type: "boolean" } },
});
const seedClaim = 0.10;
const MB = 1e6;
const stages = [
  "vnode.start",
  "vnode.reset",
  "dhcp.ack",
  "http.script",
  "http.kernel",
  "http.initramfs",
  "init.start",
  "init.modules",
  "init.network",
  "init.hybrid-detect",
  "init.nfs-root",
  "init.overlay",
  "init.persist",
  "init.handover",
];

interface ImageRow {
  name: string;
  id: string;
  size: number;
  files: number;
}

/** "1.2 MiB" (overlay/console.ts fmtBytes) → bytes. */
function parseFmtBytes(s: string): number | undefined {
  const m = /([\d.]+) (B|KiB|MiB|GiB)/.exec(s);
  if (!m) return undefined;
  return Number(m[1]) * 1024 ** ["B", "KiB", "MiB", "GiB"].indexOf(m[2]);
}

/** One boot's figures from its events (after `since`) and its console text. */
function bootFigures(events: Event[], since: number, consoleText: string) {
  const mine = events.filter((e) => e.id > since);
  const first = (k: string) => mine.find((e) => e.kind === k);
  const t0e = first("vnode.reset") ?? first("vnode.start") ?? mine[0];
  const t0 = Date.parse(t0e.ts);
  const timeline = stages.map((k) => first(k)).filter((e): e is Event => !!e).map((e) => ({
    kind: e.kind,
    atMs: Date.parse(e.ts) - t0,
    ms: typeof e.detail.ms === "number" ? e.detail.ms : undefined,
  }));
  // The init queues its reports until the network is up, so init.* events arrive together: place
  // each stage by its own duration, counting back from the handover (whose ms is the total).
  const hand = timeline.find((s) => s.kind === "init.handover");
  if (hand?.ms !== undefined) {
    let at = hand.atMs - hand.ms;
    for (const s of timeline) {
      if (!s.kind.startsWith("init.") || s.kind === "init.handover" || s.ms === undefined) continue;
      at += s.ms;
      s.atMs = Math.round(at);
    }
  }
  const ms = (k: string) => first(k)?.detail.ms as number | undefined;
  // Console: kernel printk time of "Run /init", the init's own start and handover lines.
  const runInit = /\[\s*([\d.]+)\] Run \/init as init process/.exec(consoleText)?.[1];
  const started = /netroot-init: starting \(pid 1, kernel uptime ([\d.]+) (ms|s)\)/.exec(
    consoleText,
  );
  const handover = /netroot-init: handover to \S+ \(([\d.]+) (ms|s) since init start\)/.exec(
    consoleText,
  );
  const toMs = (v: string, u: string) => Number(v) * (u === "s" ? 1000 : 1);
  return {
    timeline,
    modulesMs: ms("init.modules"),
    handoverReportMs: ms("init.handover"),
    execveMs: handover ? toMs(handover[1], handover[2]) : undefined,
    denoStartMs: runInit && started
      ? toMs(started[1], started[2]) - Number(runInit) * 1000
      : undefined,
    nfsAtHandover: parseFmtBytes(String(first("init.handover")?.detail.detail ?? "")),
  };
}

function printTimeline(title: string, f: ReturnType<typeof bootFigures>) {
  console.log(`\n${title}: timeline (ms after ${f.timeline[0]?.kind}; init stages placed by ms)`);
  for (const s of f.timeline) {
    console.log(
      `  ${s.kind.padEnd(20)} at ${String(s.atMs).padStart(6)} ms` +
        (s.ms === undefined
          ? ""
          : `   ${s.kind === "init.handover" ? "init total" : "stage took"} ` +
            `${String(s.ms).padStart(5)} ms`),
    );
  }
  const initMs = f.execveMs ?? f.handoverReportMs;
  if (initMs !== undefined && f.modulesMs !== undefined) {
    const total = f.timeline.find((s) => s.kind === "init.handover")?.atMs;
    console.log(
      `  netroot init, /init start → execve of the image's init: ${initMs.toFixed(0)} ms, ` +
        `of which modules ${f.modulesMs} ms → init time without modules ${
          (initMs - f.modulesMs).toFixed(0)
        } ms` + (total
          ? ` (${((initMs - f.modulesMs) / total * 100).toFixed(1)} % of the ` +
            `${total} ms from power-on to handover)`
          : ""),
    );
  }
  if (f.denoStartMs !== undefined) {
    console.log(
      `  before that: kernel "Run /init" → netroot init running (static /init + deno start): ` +
        `${f.denoStartMs.toFixed(0)} ms`,
    );
  }
}

const pct = (a: number, b: number) => `${(a / b * 100).toFixed(2)} %`;
const mb = (n: number) => n < MB ? `${(n / 1e3).toFixed(1)} kB` : `${(n / MB).toFixed(1)} MB`;
function nfsLine(label: string, bytes: number, image: ImageRow) {
  console.log(
    `  ${label}: NFS read ${mb(bytes)} of ${mb(image.size)} image = ${pct(bytes, image.size)} ` +
      `(seed claim < ${seedClaim * 100} %: ` +
      `${bytes / image.size < seedClaim ? "holds" : "does NOT hold"}, ratio to the claim ` +
      `${(bytes / image.size / seedClaim).toFixed(3)})`,
  );
}

const kernel = await debianKernel();
const work = await Deno.makeTempDir({ prefix: "nr-bench-nfs-" });
let minbaseDir: string | undefined;
let minbaseWhyNot = "";
if (!opt["no-minbase"]) {
  try {
    const t = performance.now();
    minbaseDir = await minbaseImage(kernel);
    console.log(`minbase image tree ready in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  } catch (e) {
    minbaseWhyNot = (e as Error).message;
    console.log(`NO minbase image (measuring the test image only): ${minbaseWhyNot}`);
  }
}
const test = await buildTestImage(join(work, "test"), { kernel, release: "bench" });

let lab: Lab | undefined;
let ok = false;
try {
  lab = await startLab({ nfs: "ganesha" });
  await lab.cli("image", "import", test.dir, "--name", "test");
  if (minbaseDir) {
    const t = performance.now();
    await lab.cli("image", "import", minbaseDir, "--name", "minbase");
    lab.log(`minbase imported in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  }
  const images = JSON.parse((await lab.cli("image", "ls", "--json")).stdout) as ImageRow[];
  const img = Object.fromEntries(images.map((i) => [i.name, i]));

  // ---- test image: busybox init, powers off once up ----
  const vm = await lab.createVnode("bench", { image: "test", ram: "1024M" });
  await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, 300_000);
  await lab.waitEvent(vm.mac, "vnode.exit", 60_000);
  const testFig = bootFigures(await lab.events(vm.mac), 0, await lab.console(vm.mac));
  printTimeline(`test image (busybox, ${(img.test.size / MB).toFixed(1)} MB)`, testFig);
  if (testFig.nfsAtHandover !== undefined) {
    nfsLine("at handover", testFig.nfsAtHandover, img.test);
  }

  // ---- minbase: systemd up to multi-user, then the bench unit reports and powers off ----
  if (minbaseDir) {
    const mark = await lastEventId(lab, vm.mac);
    const at = (await lab.console(vm.mac)).length;
    const t = performance.now();
    await lab.cli("node", "boot", "bench", "minbase");
    const out = await lab.waitConsole(vm.mac, benchLine, 600_000, { from: at });
    const wall = (performance.now() - t) / 1000;
    const m = benchLine.exec(out)!;
    const fig = bootFigures(await lab.events(vm.mac), mark, out);
    printTimeline(
      `Debian minbase + systemd (${(img.minbase.size / MB).toFixed(1)} MB, ` +
        `${img.minbase.files} files)`,
      fig,
    );
    const welcome = /\[\s*([\d.]+)\] systemd\[1\]: systemd \S+ running/.exec(out)?.[1];
    console.log(
      `  systemd started${welcome ? ` at kernel uptime ${welcome} s` : ""}; multi-user reached ` +
        `and the bench unit ran at uptime ${m[2]} s (${wall.toFixed(1)} s wall from the deploy)`,
    );
    // What held systemd up (under TCG every device or job timeout shows here).
    const slow = out.split("\n").filter((l) =>
      /A start job is running|Timed out|Dependency failed|\bFAILED\b|Failed to start/.test(l)
      // deno-lint-ignore no-control-regex -- stripping the console's colour sequences
    ).map((l) => l.replace(/\x1b\[[0-9;]*[a-zA-Z]/g, "").trim());
    for (const l of [...new Set(slow)].slice(0, 12)) console.log(`  console: ${l}`);
    if (fig.nfsAtHandover !== undefined) nfsLine("at handover", fig.nfsAtHandover, img.minbase);
    nfsLine("systemd up (multi-user)", Number(m[1]), img.minbase);
    const modulesBytes = Number(
      await new Deno.Command("du", {
        args: ["-sb", join(minbaseDir, "usr/lib/modules")],
        stdout: "piped",
      }).output().then((o) => new TextDecoder().decode(o.stdout).split("\t")[0]),
    );
    // Module files are read only when udev loads one (those bytes are in the figure): the same
    // bytes against the image without /usr/lib/modules are an upper bound for a module-less image.
    console.log(
      `  (${mb(modulesBytes)} of the image are kernel modules; the same bytes against the ` +
        `${mb(img.minbase.size - modulesBytes)} outside /usr/lib/modules: ` +
        `${pct(Number(m[1]), img.minbase.size - modulesBytes)}, an upper bound)`,
    );
    await lab.waitEvent(vm.mac, "vnode.exit", 120_000, mark).catch((e) =>
      console.log(`  (no poweroff after the bench unit: ${e.message.split("\n")[0]})`)
    );
  } else if (!opt["no-minbase"]) {
    console.log(`\nminbase NOT measured: ${minbaseWhyNot}`);
  }
  ok = true;
} finally {
  await lab?.close({ keep: opt.keep || !ok || undefined });
  await Deno.remove(work, { recursive: true }).catch(() => {});
}
