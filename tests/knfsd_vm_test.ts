// `--nfs kernel` for real (root, qemu TCG): netroot serves from a server VM whose Debian kernel
// has nfsd (tests/support/servervm.ts), and a node VM on a network it shares only with that VM
// (qemu dgram over host loopback) PXE-boots from it through qemu's iPXE ROM. One node, four boots:
//   A. image v1, network mode, NFSv4.2: the node checks the export policy itself (its image is
//      read-only; root is squashed on an image it does not boot; another node's /persist is
//      refused; its /persist is read-write) and then holds, reading its NFS root every few
//      seconds, while the server side proves: `exportfs -v` shows exactly netroot's exports plus
//      the admin's own /etc/exports line (untouched), from /etc/exports.d/netroot.exports; `serve`
//      stopped, exports changed behind its back, started again → reconciled; the same after
//      kill -9; the node stays `booted` and keeps reading its root throughout.
//   B. released, it reboots (e2e.reboots=2): the RAM overlay is reset, /persist kept.
//   C. NFSv3: `serve --nfs-version 3` refuses clearly while rpcbind is down; once the admin starts
//      rpcbind and restarts the NFS service (as the error says), it serves.
//   D. v2 deployed (the node booted v1): the node boots v2 in network mode over NFSv3, /persist
//      kept.
//   E. one hybrid boot (a hybrid-boot-v disk): v2 copied to the disk, /persist over NFSv3.
//   F. only with NETROOT_KNFSD_BENCH=1 (after A-E) or =only (F alone), docs/benchmarks.md: v1
//      booted once from kernel nfsd (NFSv4.2) and once from ganesha, both in the server VM; NFS
//      bytes the node read by its image's init and DHCP ack → handover side by side (a `BENCH`
//      block in the output).
// Measured (logged): each phase's wall time, NFS bytes the server sent and DHCP→handover time of
// boot B. 2026-12-02, 2 shared cores: the test (A-E) in 198 s at load average ~2.5, 381 s at ~8,
// 759 s at 40-80.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Event } from "../src/events.ts";
import { netrootCommand } from "../src/lab/self.ts";
import { createDisk } from "../src/vnode/disks.ts";
import { debianKernel } from "./support/kernel.ts";
import {
  adminExport,
  adminLine,
  bootNet,
  bundleNetroot,
  dataDir,
  hostDenoDir,
  type ServerVm,
  startServerVm,
} from "./support/servervm.ts";
import { buildTestImage } from "./support/testimage.ts";

const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const t0 = performance.now();
const say = (msg: string) =>
  console.log(`[knfsd ${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);

const me = "52:54:00:78:00:21", other = "52:54:00:78:00:22";
const otherIp = "10.78.0.99", otherIpMoved = "10.78.0.98";
const subnet = "10.78.0.0/24";

/** In front of the test image's /sbin/init: prints what an earlier boot left in /etc, checks the
 *  export policy from the node (e2e.policy), holds while reading its root (e2e.hold) until the
 *  server's /persist/go appears, then execs the test image's init. */
const probe = `#!/bin/sh
mount -t proc proc /proc 2>/dev/null
arg() { for a in $(cat /proc/cmdline); do case $a in $1=*) echo "\${a#*=}";; esac; done; }
p() { echo "E2E-PROBE $*"; }
p "etc-before=$(cat /etc/e2e-probe 2>/dev/null || echo none)"
echo "written at uptime $(cut -d' ' -f1 /proc/uptime)" > /etc/e2e-probe
grep ' nfs' /proc/mounts | sed 's/^/E2E-PROBE mount /'
srv=$(arg e2e.srv); o=vers=4.2,soft,timeo=30,retrans=2
if [ -n "$(arg e2e.policy)" ]; then
  mkdir -p /e2e/own /e2e/other /e2e/theirs
  if mount -t nfs4 -o $o $srv:$(arg e2e.own) /e2e/own; then
    if touch /e2e/own/probe 2>/dev/null; then p OWN-WRITE=allowed; else p OWN-WRITE=refused; fi
    if cat /e2e/own/etc/secret >/dev/null 2>&1; then p OWN-ROOTONLY=read; else p OWN-ROOTONLY=denied; fi
  else p OWN-MOUNT=failed; fi
  if mount -t nfs4 -o $o $srv:$(arg e2e.other) /e2e/other; then
    p "OTHER-PUBLIC=$(cat /e2e/other/etc/image-release)"
    if cat /e2e/other/etc/secret >/dev/null 2>&1; then p OTHER-ROOTONLY=read; else p OTHER-ROOTONLY=denied; fi
    if touch /e2e/other/probe 2>/dev/null; then p OTHER-WRITE=allowed; else p OTHER-WRITE=refused; fi
  else p OTHER-MOUNT=failed; fi
  if mount -t nfs4 -o $o $srv:$(arg e2e.theirs) /e2e/theirs; then p THEIRS=mounted; else p THEIRS=refused; fi
  if echo from-node > /persist/hello; then p PERSIST-WRITE=ok; else p PERSIST-WRITE=failed; fi
fi
if [ -n "$(arg e2e.hold)" ]; then
  httpd -p 2222 -h / # the port the server probes to call the node booted (boot.probe-port)
  p HOLD
  i=0
  while :; do
    echo 3 > /proc/sys/vm/drop_caches
    [ -e /persist/go ] && break
    i=$((i+1))
    if cat /bin/busybox /etc/image-release >/dev/null; then p "ALIVE $i ok"; else p "ALIVE $i FAIL"; fi
    sleep 2
  done
  rm -f /persist/go
  p RELEASED
fi
# What the node read over NFS (server read bytes, every nfs/nfs4 mount) by the time the image's
# init runs: the figure the bench (F) compares.
p "nfs-read=$(awk '/^device/ { n = / with fstype nfs/ } n && $1 == "bytes:" { s += $6 } END { print s + 0 }' /proc/self/mountstats)"
exec /sbin/init.testimage
`;

async function addProbe(root: string): Promise<void> {
  await Deno.rename(join(root, "sbin/init"), join(root, "sbin/init.testimage"));
  await Deno.writeTextFile(join(root, "sbin/init"), probe, { mode: 0o755 });
  await Deno.chmod(join(root, "sbin/init"), 0o755);
  // A root-only file, as every real image has (sshd host keys, /etc/shadow).
  await Deno.writeTextFile(join(root, "etc/secret"), "secret\n", { mode: 0o600 });
  await Deno.chmod(join(root, "etc/secret"), 0o600);
}

/** Path → clients of `exportfs -v` (a line per path and client; a long path puts the client on
 *  the next line). */
function parseExports(text: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  let path = "";
  for (const tok of text.split(/\s+/).filter(Boolean)) {
    if (tok.startsWith("/")) {
      path = tok;
      if (!m.has(path)) m.set(path, []);
    } // one line per path and client

    else m.get(path)!.push(tok);
  }
  return m;
}

/** The client names of one path, sorted (options dropped). */
const clientsOf = (m: Map<string, string[]>, path: string) =>
  (m.get(path) ?? []).map((c) => c.replace(/\(.*$/, "")).sort();

async function runCli(server: string, token: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(netrootCommand()[0], {
    args: [...netrootCommand().slice(1), ...args],
    env: { NETROOT_SERVER: server, NETROOT_TOKEN: token, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`netroot ${args.join(" ")}: ${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

/** Imports the images with a host `serve` of the bundle on `data` and waits for their
 *  initramfs; returns name → image id. */
async function prepareData(
  bundle: string,
  data: string,
  images: Record<string, string>,
): Promise<Record<string, string>> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const server = `http://127.0.0.1:${port}`;
  const serve = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--no-config",
      bundle,
      "serve",
      "--data",
      data,
      "--http",
      `127.0.0.1:${port}`,
    ],
    env: { NO_COLOR: "1", DENO_DIR: hostDenoDir(dirname(data)) },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    let token = "";
    for (let i = 0; !token; i++) {
      await sleep(500);
      try {
        token = Deno.readTextFileSync(join(data, "token")).trim();
        const res = await fetch(`${server}/api/v1/health`);
        await res.body?.cancel();
      } catch (e) {
        token = "";
        if (i > 120) throw e;
      }
    }
    await Promise.all(
      Object.entries(images).map(([name, dir]) =>
        runCli(server, token, "image", "import", dir, "--name", name)
      ),
    );
    const list = JSON.parse(await runCli(server, token, "image", "ls", "--json")) as {
      name: string;
      id: string;
    }[];
    const ids = Object.fromEntries(list.map((i) => [i.name, i.id]));
    return ids;
  } finally {
    serve.kill("SIGTERM");
    await serve.status;
  }
}

/** The nodes' initramfs of each image, by the bundle the server VM runs (its cache key). */
async function buildInitramfs(bundle: string, data: string, names: string[]): Promise<void> {
  for (const name of names) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-config", bundle, "initramfs", "build", name, "--data", data],
      env: { NO_COLOR: "1", DENO_DIR: hostDenoDir(dirname(data)) },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`initramfs build ${name}: ${dec.decode(out.stderr)}`);
  }
}

class Node {
  proc?: Deno.ChildProcess;
  constructor(readonly vm: ServerVm, readonly log: string) {}
  start(disks: string[] = []) {
    this.proc = new Deno.Command("qemu-system-x86_64", {
      args: [
        ...["-accel", "tcg", "-machine", "pc,graphics=off", "-vga", "none", "-m", "512"],
        ...["-display", "none", "-monitor", "none", "-boot", "n"],
        ...["-chardev", `file,id=console,path=${this.log},append=on`, "-serial", "chardev:console"],
        ...this.vm.nodeNetdev(me),
        ...disks.flatMap((d) => ["-drive", `file=${d},format=raw,if=virtio`]),
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  }
  console(): string {
    return existsSync(this.log) ? readFileSync(this.log, "utf8") : "";
  }
  async wait(re: RegExp, from: number, ms = 300_000): Promise<string> {
    const end = Date.now() + ms;
    for (;;) {
      const text = this.console().slice(from);
      if (re.test(text)) return text;
      if (Date.now() > end) {
        throw new Error(
          `node console lacks ${re} after ${ms / 1000} s; ends:\n${text.slice(-3000)}`,
        );
      }
      await sleep(1000);
    }
  }
  async exited(ms = 120_000): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = await Promise.race([
      this.proc!.status.then(() => true),
      new Promise<false>((r) => timer = setTimeout(() => r(false), ms)),
    ]);
    clearTimeout(timer);
    assert.ok(done, "the node powered off");
    this.proc = undefined;
  }
  async kill() {
    if (!this.proc) return;
    try {
      this.proc.kill("SIGKILL");
    } catch { /* exited */ }
    await this.proc.status;
    this.proc = undefined;
  }
}

Deno.test({
  name: "kernel nfsd (root, qemu): netroot serves from a server VM with nfsd; a node VM boots " +
    "NFSv4.2, survives serve restart and kill -9, reboots; NFSv3: refused without rpcbind, then a " +
    "deployed image booted in network and hybrid mode",
  ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const kernel = await debianKernel();
    const work = await Deno.makeTempDir({ prefix: "nr-knfsd-vm-" });
    let vm: ServerVm | undefined;
    let node: Node | undefined;
    let ok = false;
    try {
      const [bundle, v1, v2] = await Promise.all([
        bundleNetroot(work),
        buildTestImage(join(work, "v1"), { kernel, release: "v1" }),
        buildTestImage(join(work, "v2"), { kernel, release: "v2" }),
      ]);
      await addProbe(v1.dir);
      await addProbe(v2.dir);
      say("images and bundle built");
      // The data dir is prepared on the host (imports and the nodes' initramfs: minutes of deno
      // and gzip under TCG) by this same bundle, then becomes the server VM's data disk.
      const id = await prepareData(bundle, join(work, "data"), { v1: v1.dir, v2: v2.dir });
      await buildInitramfs(bundle, join(work, "data"), ["v1", "v2"]);
      const disk = join(work, "data.img");
      const mk = await new Deno.Command("mkfs.ext4", {
        args: ["-q", "-F", "-d", join(work, "data"), disk, "1G"],
      }).output();
      assert.ok(mk.success, "data disk");
      say(`data dir prepared: ${JSON.stringify(id)}`);
      vm = await startServerVm({ kernel, work, bundle, dataDisk: disk });
      node = new Node(vm, join(work, "node-console.log"));
      say("server VM up");
      const sh = vm.sh.bind(vm);
      let token = "";

      const api = async <T>(path: string): Promise<T> => {
        const res = await fetch(`${vm!.apiUrl}/api/v1${path}`, {
          headers: { authorization: `Bearer ${token}` },
        });
        assert.ok(res.ok, `GET ${path}: ${res.status}`);
        return await res.json() as T;
      };
      const cli = async (...args: string[]) => {
        const out = await new Deno.Command(netrootCommand()[0], {
          args: [...netrootCommand().slice(1), ...args],
          env: { NETROOT_SERVER: vm!.apiUrl, NETROOT_TOKEN: token, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = dec.decode(out.stdout);
        if (!out.success) {
          throw new Error(`netroot ${args.join(" ")}: ${dec.decode(out.stderr)}`);
        }
        return text;
      };
      /** Starts serve; resolves when its API answers, or with its log when it exits first. */
      const serve = async (
        args: string[] = [],
      ): Promise<{ up: true } | { up: false; log: string }> => {
        await sh(
          "[ -f /run/serve.log ] && mv /run/serve.log /run/serve.log.$(date +%s%N); " +
            vm!.serveCommand(args),
        );
        const started = performance.now();
        for (;;) {
          try {
            const res = await fetch(`${vm!.apiUrl}/api/v1/health`, {
              signal: AbortSignal.timeout(3000),
            });
            await res.body?.cancel();
            if (res.ok) {
              token = (await sh(`cat ${dataDir}/token`)).trim();
              say(`serve up in ${((performance.now() - started) / 1000).toFixed(1)} s`);
              return { up: true };
            }
          } catch { /* not yet */ }
          if (
            (await sh("alive $(cat /run/serve.pid) && echo running", { check: false }))
              .trim() !== "running"
          ) {
            return { up: false, log: await sh("cat /run/serve.log") };
          }
          if (performance.now() - started > 240_000) {
            throw new Error(`serve not up in 240 s:\n${await sh("tail -30 /run/serve.log")}`);
          }
          await sleep(2000);
        }
      };
      const stopServe = async (signal: "TERM" | "KILL") => {
        await sh(
          `p=$(cat /run/serve.pid); kill -${signal} $p; ` +
            "for i in $(seq 120); do alive $p || exit 0; sleep 0.5; done; exit 1",
        );
      };
      const exportsNow = async () => parseExports(await sh("exportfs -v"));
      // Image trees are exported from the read-only view of images/ serve mounts.
      const rootfs = (id: string) => `${dataDir}/images-ro/${id}/rootfs`;
      const views = async () => {
        const lines = (await sh("cat /proc/self/mountinfo")).split("\n")
          .filter((l) => l.split(" ")[4] === `${dataDir}/images-ro`);
        return lines.map((l) => l.split(" ")[5].split(",")[0]);
      };
      const persistOf = (mac: string) => `${dataDir}/nodes/${mac}/persist`;

      // ---- serve (NFSv4) and the state: two images, our node, a neighbour with a fixed address ----
      const first = await serve();
      assert.ok(first.up, `serve failed to start:\n${!first.up && first.log}`);
      await cli("node", "add", me, "--name", "n1", "--image", "v1");
      await cli("node", "add", other, "--name", "n2", "--image", "v1");
      await cli("node", "config", "n2", `ip=${otherIp}`);
      const args = (extra: string) =>
        `kernel.cmdline=e2e.srv=${bootNet.server} e2e.own=${rootfs(id.v1)} ` +
        `e2e.other=${rootfs(id.v2)} e2e.theirs=${persistOf(other)} ${extra}`;
      await cli(
        "node",
        "config",
        "n1",
        args("e2e.policy=1 e2e.hold=1 e2e.reboots=2"),
        "boot.probe-port=2222",
      );

      const bench = Deno.env.get("NETROOT_KNFSD_BENCH") ?? "";
      // NETROOT_KNFSD_BENCH=only: the bench phase (F) alone, on the same setup.
      const nfsBytes = async () =>
        Number(/^io (\d+)/m.exec(await sh("cat /proc/net/rpc/nfsd"))?.[1] ?? NaN);
      /** The figures of the node's last boot after event `mark`: DHCP ack → init.handover (server
       *  clock), the init's own time to handover and the NFS bytes the node had read by then. */
      const bootFigures = async (mark: number) => {
        const ev = (await api<Event[]>(`/nodes/${me}/events?limit=1000`))
          .filter((e) => e.id > mark).sort((x, y) => x.id - y.id);
        const hand = ev.filter((e) => e.kind === "init.handover").at(-1);
        assert.ok(hand, `an init.handover after event ${mark}`);
        const dhcp = ev.filter((e) => e.kind === "dhcp.ack" && e.id < hand.id).at(-1)!;
        const m = /nfs read ([\d.]+) (B|KiB|MiB|GiB)/.exec(String(hand.detail.detail ?? ""));
        return {
          handoverMs: Date.parse(hand.ts) - Date.parse(dhcp.ts),
          initMs: Number(hand.detail.ms),
          nfsRead: m
            ? Math.round(Number(m[1]) * 1024 ** ["B", "KiB", "MiB", "GiB"].indexOf(m[2]))
            : NaN,
          last: ev.at(-1)!.id,
        };
      };
      const lastEvent = async () =>
        Math.max(0, ...(await api<Event[]>(`/nodes/${me}/events?limit=1`)).map((e) => e.id));
      if (bench !== "only") {
        // ---- A: the boot, the policy from the node ----
        node.start();
        const a = await node.wait(/E2E-PROBE HOLD/, 0);
        say("boot A held");
        const myIp = (await api<{ ip: string }>(`/nodes/${me}`)).ip;
        assert.match(myIp, /^10\.78\.0\.1\d\d$/);
        assert.match(a, /E2E-PROBE mount \S+ \/persist nfs4 [^\n]*vers=4\.2/, a);
        for (
          const line of [
            "OWN-WRITE=refused", // the image is read-only on the server
            "OWN-ROOTONLY=read", // root kept for the nodes that boot the image
            "OTHER-PUBLIC=netroot-test-image v2",
            "OTHER-ROOTONLY=denied", // root squashed on an image it does not boot
            "OTHER-WRITE=refused",
            "THEIRS=refused", // another node's /persist
            "PERSIST-WRITE=ok",
          ]
        ) {
          assert.ok(a.includes(`E2E-PROBE ${line}`), `${line}\n${a.slice(-3000)}`);
        }
        assert.equal(
          (await sh(`stat -c '%u %s' ${persistOf(me)}/hello`)).trim(),
          "0 10",
          "/persist written by the node's root, as root",
        );
        const kinds = (await api<Event[]>(`/nodes/${me}/events?limit=1000`)).map((e) => e.kind);
        assert.ok(kinds.includes("init.handover"), kinds.join(" "));
        const state = async () => (await api<{ state: string }>(`/nodes/${me}`)).state;
        for (let i = 0; i < 60 && await state() !== "booted"; i++) await sleep(1000);
        assert.equal(
          await state(),
          "booted",
          "the server calls the node booted (its port answers)",
        );

        // ---- exportfs -v: exactly netroot's exports, and the admin's ----
        const expected = () =>
          new Map([
            [adminExport, [subnet]],
            [rootfs(id.v1), [myIp, otherIp, subnet].sort()],
            [rootfs(id.v2), [subnet]],
            [persistOf(me), [myIp]],
            [persistOf(other), [otherIp]],
          ]);
        const assertExports = async (want: Map<string, string[]>, why: string) => {
          // netroot applies within ~10 s of a change (its recheck).
          let got = await exportsNow();
          for (let i = 0; i < 30; i++) {
            const same = got.size === want.size &&
              [...want].every(([p, c]) => JSON.stringify(clientsOf(got, p)) === JSON.stringify(c));
            if (same) break;
            await sleep(1000);
            got = await exportsNow();
          }
          assert.deepEqual(
            new Map([...got.keys()].map((p) => [p, clientsOf(got, p)])),
            new Map([...want].map(([p, c]) => [p, [...c].sort()])),
            `${why}: exportfs -v`,
          );
          return got;
        };
        const got = await assertExports(expected(), "after boot A");
        const opts = (p: string, client: string) =>
          got.get(p)!.find((c) => c.startsWith(`${client}(`))!;
        assert.match(opts(rootfs(id.v2), subnet), /\bro\b.*\broot_squash\b/);
        assert.match(opts(rootfs(id.v1), myIp), /\bro\b.*\bno_root_squash\b/);
        assert.match(opts(persistOf(me), myIp), /\brw\b.*\bno_root_squash\b/);
        for (const [p, cs] of got) {
          if (p === adminExport) continue;
          for (const c of cs) assert.ok(!c.includes("no_subtree_check"), `${p} ${c}`);
        }
        assert.deepEqual(await views(), ["ro"], "one read-only view of images/");
        assert.match(
          await sh(`touch ${rootfs(id.v1)}/written 2>&1`, { check: false }),
          /Read-only file system/,
        );
        assert.equal(
          await sh("cat /etc/exports"),
          `# the admin's own exports\n${adminLine}\n`,
          "the admin's /etc/exports is untouched",
        );
        assert.equal(
          (await sh("ls /etc/exports.d")).trim(),
          "netroot.exports",
          "netroot owns one file under /etc/exports.d/",
        );

        // ---- restart with changes behind serve's back; then kill -9 ----
        const alive = () => (node!.console().match(/E2E-PROBE ALIVE \d+ ok/g) ?? []).length;
        const stayedUp = async (why: string, serving = true) => {
          const before = alive();
          await node!.wait(new RegExp(`ALIVE ${before + 2} ok`), 0, 60_000);
          assert.doesNotMatch(node!.console(), /ALIVE \d+ FAIL/, why);
          if (!serving) return;
          const n = await api<{ state: string }>(`/nodes/${me}`);
          assert.equal(n.state, "booted", `${why}: the node stays booted`);
        };
        await stopServe("TERM");
        say("serve stopped (SIGTERM)");
        // Exports left in place for the booted node; meanwhile an admin unexports an image and the
        // neighbour's address changes in the database.
        assert.deepEqual(clientsOf(await exportsNow(), persistOf(me)), [myIp]);
        // The exports of a netroot from before the read-only view (the image trees themselves,
        // the same fsids): the node, which mounted its root through the view, keeps reading it,
        // and so will a node booted before an upgrade once netroot moves its exports to the view
        // (the restart below): a handle names the export by its fsid, not its path.
        const file = "/etc/exports.d/netroot.exports";
        await sh(`sed -i 's#/images-ro/#/images/#' ${file} && exportfs -ra`);
        assert.ok(
          [...(await exportsNow()).keys()].includes(`${dataDir}/images/${id.v1}/rootfs`),
          "exported from the tree itself",
        );
        await stayedUp("exports moved off the read-only view", false);
        await sh(`exportfs -u ${subnet}:${dataDir}/images/${id.v2}/rootfs`);
        await sh(
          `sqlite3 ${dataDir}/netroot.db "UPDATE node_settings SET value='${otherIpMoved}' ` +
            `WHERE mac='${other}' AND key='ip'"`,
        );
        assert.ok((await serve()).up);
        const moved = expected();
        moved.set(rootfs(id.v1), [myIp, otherIpMoved, subnet].sort());
        moved.set(persistOf(other), [otherIpMoved]);
        await assertExports(moved, "after a restart (missing added, stale removed)");
        await stayedUp("restart: exports moved back to the read-only view");
        say("restart reconciled");

        await stopServe("KILL");
        await sh(`exportfs -u ${subnet}:${rootfs(id.v1)}`);
        assert.ok((await serve()).up, "serve starts after kill -9");
        await assertExports(moved, "after kill -9");
        await stayedUp("kill -9");
        assert.deepEqual(await views(), ["ro"], "the view kept, not mounted again");
        say("kill -9 reconciled");

        // ---- B: released, the node reboots; the overlay is reset, /persist kept ----
        await cli("node", "config", "n1", args("e2e.reboots=2"));
        const atB = node.console().length;
        const bytesB0 = await nfsBytes();
        await sh(`touch ${persistOf(me)}/go`);
        const b = await node.wait(/REBOOTING[\s\S]*IMAGE-BOOT-OK/, atB);
        await node.exited();
        const bytesB = (await nfsBytes()) - bytesB0;
        const second = b.slice(b.indexOf("REBOOTING"));
        assert.match(second, /E2E-PROBE etc-before=none/, "the RAM overlay is reset");
        assert.match(second, /previous-boot-marker=none/);
        assert.match(second, /bootcount=2\b/, "/persist kept");
        const figB = await bootFigures(0);
        say(
          `boot B (kernel nfsd, NFSv4.2): DHCP ack → handover ${figB.handoverMs} ms, NFS read at ` +
            `handover ${figB.nfsRead} B (node), NFS bytes sent ${bytesB} (server, whole boot)`,
        );
        const handoverMs = figB.handoverMs;
        assert.ok(bytesB > 0 && handoverMs > 0);

        // ---- C: NFSv3 needs rpcbind: refused clearly without it, served once it runs ----
        await stopServe("TERM");
        await sh("nfs-system stop; nfs-system start 3; kill $(pidof rpcbind)");
        await sh("for i in $(seq 50); do rpcinfo -p 127.0.0.1 || exit 0; sleep 0.2; done; exit 1");
        // HTTP may answer before the NFS check runs: wait for the exit.
        await serve(["--nfs-version", "3"]);
        await sh(
          "for i in $(seq 240); do alive $(cat /run/serve.pid) || exit 0; sleep 0.5; done; exit 1",
        );
        const refused = await sh("cat /run/serve.log");
        assert.match(refused, /--nfs-version 3: rpcbind is not running/, refused);
        say("NFSv3 without rpcbind: refused clearly");
        // The admin does what the error says: starts rpcbind, then restarts the NFS service.
        await sh("nfs-system stop; nfs-system start 3");
        const table = await sh("rpcinfo -p 127.0.0.1");
        assert.match(table, /^\s*100005\s+3\s+tcp\b/m, `mountd registered for v3:\n${table}`);
        const v3 = await serve(["--nfs-version", "3"]);
        assert.ok(v3.up, `serve --nfs-version 3 once rpcbind runs:\n${!v3.up && v3.log}`);
        say("NFSv3: served once rpcbind runs");

        // ---- D: the node booted v1; v2 is deployed; it boots v2 (network mode, NFSv3) ----
        await cli("node", "boot", "n1", "v2", "--no-reboot");
        await cli("node", "config", "n1", args("e2e.reboots=1"));
        const atD = node.console().length;
        const tD = performance.now();
        node.start();
        const d = await node.wait(/IMAGE-BOOT-OK/, atD);
        await node.exited();
        assert.match(d, /image init started: netroot-test-image v2/, d.slice(-3000));
        assert.doesNotMatch(d, /hybrid mode/, "network mode");
        assert.match(d, /E2E-PROBE mount \S+ \/persist nfs [^\n]*vers=3/, d.slice(-3000));
        assert.doesNotMatch(d, /E2E-PROBE mount \S+ \S+ nfs4 /, "no NFSv4 mount");
        assert.match(d, /bootcount=3\b/, "/persist kept across the deploy");
        say(
          `boot D: v2 deployed, network mode over NFSv3 (${
            ((performance.now() - tD) / 1000).toFixed(0)
          } s)`,
        );

        // ---- E: one hybrid boot (v2 copied to a hybrid-boot-v disk), same server (NFSv3) ----
        const hybridDisk = join(work, "hybrid.img");
        await createDisk(hybridDisk, { size: 256e6, template: "hybrid-boot-v" });
        const atE = node.console().length;
        const tE = performance.now();
        node.start([hybridDisk]);
        const e = await node.wait(/IMAGE-BOOT-OK/, atE);
        await node.exited();
        assert.match(e, /hybrid mode \(volatile\)/, e.slice(-3000));
        assert.match(e, /image init started: netroot-test-image v2/);
        assert.match(e, /E2E-PROBE mount \S+ \/persist nfs [^\n]*vers=3/, e.slice(-3000));
        assert.match(e, /bootcount=4\b/);
        say(`boot E: hybrid, v2, NFSv3 (${((performance.now() - tE) / 1000).toFixed(0)} s)`);
      }
      // ---- F (NETROOT_KNFSD_BENCH=1): image v1 booted once from kernel nfsd (NFSv4.2) and once
      // from ganesha, both in this server VM: NFS bytes and DHCP ack → handover side by side ----
      if (bench === "1" || bench === "only") {
        await cli("node", "boot", "n1", "v1", "--no-reboot");
        await cli("node", "config", "n1", args("e2e.reboots=1"));
        const rows: string[] = [];
        for (const mode of ["kernel", "ganesha"] as const) {
          await stopServe("TERM");
          await sh(mode === "kernel" ? "nfs-system stop; nfs-system start 4" : "nfs-system stop");
          const up = await serve(["--nfs", mode]);
          assert.ok(up.up, `serve --nfs ${mode}:\n${!up.up && up.log}`);
          const mark = await lastEvent();
          const at = node.console().length;
          node.start();
          const f = await node.wait(/IMAGE-BOOT-OK/, at);
          await node.exited();
          assert.match(f, /image init started: netroot-test-image v1/);
          const fig = await bootFigures(mark);
          const read = Number(/E2E-PROBE nfs-read=(\d+)/.exec(f)?.[1]);
          rows.push(
            `${mode.padEnd(8)} DHCP ack → handover ${String(fig.handoverMs).padStart(6)} ms, ` +
              `init start → handover ${String(fig.initMs).padStart(6)} ms, NFS read by the ` +
              `image's init ${read} B (at handover ${fig.nfsRead} B)`,
          );
          assert.ok(read > 0, `the node read its root over NFS (${mode})`);
          say(`bench boot (${mode}): ${rows.at(-1)}`);
        }
        console.log(`BENCH kernel nfsd vs ganesha (image v1, server VM, TCG):\n${rows.join("\n")}`);
      }
      ok = true;
    } finally {
      if (!ok && vm) {
        console.error(`serve log:\n${await vm.sh("tail -40 /run/serve.log").catch((e) => e)}`);
        console.error(`server serial:\n${vm.serial().slice(-1500)}`);
        console.error(
          `ganesha log (problems):\n${await vm.sh(
            `grep -E 'CRIT|MAJ|FATAL|Export' ${dataDir}/run/ganesha/ganesha.log | tail -30`,
            { check: false },
          ).catch((e) => e)}`,
        );
        if (node) console.error(`node console:\n${node.console().slice(-2500)}`);
      }
      await node?.kill();
      await vm?.close();
      if (ok || Deno.env.get("NETROOT_E2E_KEEP") !== "1") {
        await Deno.remove(work, { recursive: true }).catch(() => {});
      } else console.error(`kept ${work}`);
      say(`done (${ok ? "ok" : "failed"})`);
    }
  },
});
