// The one wire contract between the server and the node (contract/): what the server renders the
// node parses to the same values, a node setting is accepted exactly when the node accepts it on
// its command line, and a report the node makes reaches the timeline with its fields intact.
import assert from "node:assert/strict";
import {
  CmdlineError,
  type CmdlineValues,
  DEFAULTS,
  netconsoleOnDevice,
  parseCmdline,
  renderCmdline,
} from "../contract/cmdline.ts";
import { parseReport, progressText, type StageReport } from "../contract/report.ts";
import { defaultConfig } from "../src/config.ts";
import { openBoot } from "../src/boots.ts";
import { listEvents } from "../src/events.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";
import { Reporter } from "../overlay/report.ts";

const values: CmdlineValues = {
  mac: "52:54:00:00:00:01",
  hostname: "lab node #1",
  nodeIp: "10.77.0.23",
  serverIp: "10.77.0.1",
  gateway: "10.77.0.254",
  netmask: "255.255.254.0",
  url: "http://10.77.0.1:8080",
  root: "10.77.0.1:/netroot/images/abc",
  persist: "10.77.0.1:/netroot/persist/525400000001",
  nfs: "3",
  imageId: "abc",
  token: "t0k",
  mode: "network",
  timeout: "45",
  tmpfs: "2g",
  consoles: ["tty0", "ttyS0,115200"],
};

Deno.test("cmdline round trip: what the server renders, the node parses to the same values", () => {
  const p = parseCmdline(renderCmdline(values));
  assert.deepEqual(p, {
    mac: "52:54:00:00:00:01",
    ip: {
      address: "10.77.0.23",
      server: "10.77.0.1",
      gateway: "10.77.0.254",
      netmask: "255.255.254.0",
      prefix: 23,
      hostname: "lab-node--1", // made safe for the ip= field
    },
    server: "10.77.0.1",
    url: "http://10.77.0.1:8080",
    root: { host: "10.77.0.1", path: "/netroot/images/abc" },
    persist: { host: "10.77.0.1", path: "/netroot/persist/525400000001" },
    nfsVersion: "3",
    image: "abc",
    token: "t0k",
    mode: "network",
    timeoutS: 45,
    tmpfsSize: "2g",
    init: "/sbin/init",
    initArgs: [],
    warnings: [],
  });
});

Deno.test("cmdline: netconsole= names the node, the server and its MAC; the init adds the NIC", () => {
  const nc = { port: 6666, serverMac: "52:54:00:AA:BB:CC" };
  const p = parseCmdline(renderCmdline({ ...values, netconsole: nc }));
  assert.equal(p.netconsole, "6665@10.77.0.23/,6666@10.77.0.1/52:54:00:aa:bb:cc");
  assert.equal(
    netconsoleOnDevice(p.netconsole!, "eth1"),
    "6665@10.77.0.23/eth1,6666@10.77.0.1/52:54:00:aa:bb:cc",
  );
  // One the admin wrote with a device (kernel.cmdline, last wins) is kept as written.
  const own = "6665@10.77.0.23/enp1s0,6666@10.77.0.9/52:54:00:00:00:09";
  const o = parseCmdline(renderCmdline({ ...values, netconsole: nc, extra: `netconsole=${own}` }));
  assert.equal(netconsoleOnDevice(o.netconsole!, "eth1"), own);
  // Without the node's address (ip=dhcp) there is no netconsole=: the kernel needs it.
  assert.doesNotMatch(
    renderCmdline({ ...values, nodeIp: undefined, netconsole: nc }),
    /netconsole/,
  );
  assert.throws(() => renderCmdline({ ...values, netconsole: { port: 1, serverMac: "x" } }), /MAC/);
  assert.equal(parseCmdline(renderCmdline(values)).netconsole, undefined);
});

Deno.test("cmdline round trip: unset settings are the node's defaults; kernel.cmdline wins", () => {
  const unset = { ...values, mode: undefined, timeout: "", tmpfs: undefined, persist: undefined };
  const p = parseCmdline(renderCmdline(unset));
  assert.equal(p.mode, DEFAULTS.mode);
  assert.equal(p.timeoutS, DEFAULTS.timeoutS);
  assert.equal(p.tmpfsSize, DEFAULTS.tmpfs);
  assert.equal(p.persist, undefined);
  const o = parseCmdline(
    renderCmdline({ ...values, extra: "netroot.timeout=600 init=/bin/sh -- single" }),
  );
  assert.equal(o.timeoutS, 600);
  assert.equal(o.init, "/bin/sh");
  assert.deepEqual(o.initArgs, ["single"]);
});

Deno.test("cmdline rules: a setting is accepted exactly when the node accepts it (and the server renders it)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-contract-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  try {
    ctx.nodes.add(values.mac, { name: "n1" });
    const cases: (readonly [setting: "boot.mode" | "nfs.timeout" | "tmpfs.size", value: string])[] =
      [
        ...["auto", "network", "hybrid", "AUTO"].map((v) => ["boot.mode", v] as const),
        ...["9", "10", "180", "3600", "3601", "0", "1", "soon", "1.5"].map((v) =>
          ["nfs.timeout", v] as const
        ),
        ...["50%", "1%", "100%", "0%", "101%", "1000%", "512m", "2G", "0", "0m", "1x", "50"].map(
          (v) => ["tmpfs.size", v] as const,
        ),
      ];
    const key = { "boot.mode": "mode", "nfs.timeout": "timeout", "tmpfs.size": "tmpfs" } as const;
    for (const [setting, value] of cases) {
      let stored: string | undefined;
      try {
        stored = ctx.nodes.configure("n1", { [setting]: value }).settings[setting];
      } catch { /* refused */ }
      let rendered: string | undefined;
      try {
        rendered = renderCmdline({ ...values, [key[setting]]: value });
      } catch { /* refused */ }
      const text = `${renderCmdline(values)} netroot.${key[setting]}=${value}`;
      let nodeOk = true;
      try {
        parseCmdline(text);
      } catch (e) {
        assert.ok(e instanceof CmdlineError);
        nodeOk = false;
      }
      // The stored (normalised) value is what the server renders, and the node takes it.
      const storedOk = stored !== undefined &&
        (() => {
          try {
            parseCmdline(renderCmdline({ ...values, [key[setting]]: stored }));
            return true;
          } catch {
            return false;
          }
        })();
      const label = `${setting}=${value}`;
      if (setting === "boot.mode" && value === "AUTO") {
        // The setting normalises case; the command line is case-sensitive, as the kernel is.
        assert.equal(stored, "auto", label);
        assert.ok(storedOk, label);
        continue;
      }
      assert.equal(stored !== undefined, nodeOk, `${label}: setting vs node`);
      assert.equal(rendered !== undefined, nodeOk, `${label}: server render vs node`);
      if (stored !== undefined) {
        assert.ok(storedOk, `${label}: stored ${stored} renders and parses`);
      }
    }
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report parser: known fields of the right type kept, others dropped, bad bodies named", () => {
  const r = parseReport(JSON.stringify({
    token: "t",
    mac: "52-54-00-00-00-01",
    stage: "hybrid-copy",
    done: 10,
    total: 20,
    rate: 5,
    ok: "yes", // wrong type: dropped
    detail: { nested: true }, // wrong type: dropped
    extra: 1, // unknown: dropped
  }));
  assert.deepEqual(r, {
    token: "t",
    mac: "52-54-00-00-00-01",
    stage: "hybrid-copy",
    done: 10,
    total: 20,
    rate: 5,
  });
  for (
    const [body, error] of [
      ["{not json", /JSON object/],
      ["[]", /JSON object/],
      [JSON.stringify({ token: "t", stage: "start" }), /needs token and mac/],
      [JSON.stringify({ token: "t", mac: "m", stage: "Bad Stage" }), /needs stage/],
    ] as const
  ) {
    const e = parseReport(body);
    assert.ok("error" in e, body);
    assert.match(e.error, error);
  }
});

Deno.test("progress text: percentage, MB/s and ETA; nothing for other details", () => {
  assert.equal(
    progressText({ done: 126e6, total: 300e6, rate: 12.3e6 }),
    "42% (126.0/300.0 MB, 12.3 MB/s, ETA 15 s)",
  );
  assert.equal(
    progressText({ done: 0, total: 3e9, rate: 20e6 }),
    "0% (0.0/3000.0 MB, 20.0 MB/s, ETA 2 min 30 s)",
  );
  assert.equal(progressText({ done: 5, total: 5, rate: 1 }), "100% (0.0/0.0 MB, 0.0 MB/s)");
  assert.equal(progressText({ done: 0, total: 0 }), "100% (0.0/0.0 MB)");
  assert.equal(progressText({ detail: '{"done":1}' } as Record<string, unknown>), undefined);
});

Deno.test("reports from the node's Reporter reach the timeline with top-level fields; progress is one row", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-contract-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    buildApp(ctx).fetch,
  );
  try {
    const mac = "52:54:00:00:00:02";
    ctx.nodes.add(mac, { name: "n2" });
    const token = openBoot(ctx.db, mac, null);
    const errors: string[] = [];
    const reporter = new Reporter({ token, mac }, (m) => errors.push(m));
    reporter.enable(`http://127.0.0.1:${server.addr.port}`);
    const sent: StageReport[] = [
      { stage: "hybrid-detect", ms: 12, ok: true, detail: "found /dev/vda1" },
      { stage: "hybrid-copy", done: 10e6, total: 100e6, rate: 5e6 },
      { stage: "hybrid-copy", done: 50e6, total: 100e6, rate: 6e6 },
      { stage: "hybrid-copy", done: 100e6, total: 100e6, rate: 7e6 },
      { stage: "hybrid-ready", ok: true, ms: 1500, variant: "volatile", bytesWritten: 100e6 },
    ];
    for (const r of sent) reporter.send(r);
    assert.equal(await reporter.flush(10_000), true);
    assert.deepEqual(errors, []);
    const init = listEvents(ctx.db, { mac }).filter((e) => e.kind.startsWith("init."));
    assert.deepEqual(init.map((e) => e.kind), [
      "init.hybrid-detect",
      "init.hybrid-copy", // three reports, one row: the latest
      "init.hybrid-ready",
    ]);
    assert.deepEqual(init[1].detail, { image: null, done: 100e6, total: 100e6, rate: 7e6 });
    assert.equal(init[2].detail.bytesWritten, 100e6);
    assert.equal(init[2].detail.variant, "volatile");
    // A progress row is replaced only while it is the node's newest event.
    reporter.send({ stage: "hybrid-copy", done: 1, total: 2, rate: 1 });
    assert.equal(await reporter.flush(10_000), true);
    const copies = listEvents(ctx.db, { mac }).filter((e) => e.kind === "init.hybrid-copy");
    assert.equal(copies.length, 2);
  } finally {
    await server.shutdown();
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});
