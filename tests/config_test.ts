import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig, loadServeConfig } from "../src/config.ts";
import { DatabaseSync } from "node:sqlite";
import { migrate } from "../src/db.ts";
import { pruneEvents } from "../src/events.ts";
import { UserError } from "../src/errors.ts";

Deno.test("serve config: embedded defaults need no file", async () => {
  const c = await loadServeConfig([]);
  assert.deepEqual(c.http, { port: 8080 }); // no host: the server picks (httpHosts)
  assert.equal(c.api.auth, "writes");
  assert.equal(c.dhcp.mode, "proxy");
  assert.equal(c.interface, undefined);
  assert.equal(c.nfs.mode, "off");
  assert.deepEqual(defaultConfig().tftp, { port: 69 });
});

Deno.test("serve config: a DHCP range means full mode; flags parse and validate", async () => {
  const c = await loadServeConfig([
    "--interface=eth1",
    "--dhcp-range",
    "10.0.0.100-10.0.0.200",
    "--http",
    "127.0.0.1:9000",
    "--lease-time",
    "600",
    "--dhcp-router",
    "10.0.0.1",
    "--nfs",
    "ganesha",
  ]);
  assert.equal(c.dhcp.mode, "full");
  assert.deepEqual(c.dhcp.range, { start: "10.0.0.100", end: "10.0.0.200" });
  assert.deepEqual(c.http, { host: "127.0.0.1", port: 9000 });
  assert.equal(c.dhcp.leaseSeconds, 600);
  assert.equal(c.dhcp.router, "10.0.0.1");
  assert.equal(c.nfs.mode, "ganesha");
  const b = await loadServeConfig(["--bridge", "netroot0", "--address", "10.77.0.1/24"]);
  assert.equal(b.interface, "netroot0");
  assert.deepEqual(b.bridge, { name: "netroot0", address: "10.77.0.1/24" });
  assert.equal(b.serverIp, "10.77.0.1");
  for (
    const [args, re] of [
      [["--bridge", "br0"], /needs --address/],
      [["--dhcp-mode", "full"], /needs --dhcp-range/],
      [["--dhcp-range", "10.0.0.1"], /START-END/],
      [["--http", "x:y"], /HOST:PORT/],
      [["--nfs", "smb"], /one of kernel, ganesha, off/],
      [["--lease-time", "5"], /≥ 60/],
      [["--register-unknown", "maybe"], /true or false/],
      [["--tftp-port", "sixty-nine"], /port number/],
      [["--tftp-port", "70000"], /port number/],
      [["--address", "server.lab"], /A\.B\.C\.D/],
      [["--nfs-reserve", "1.5G"], /expects a size/],
      [["--nfs-reserve=-1"], /expects a size/],
      [["--nfs-reserve", "99999999999999999G"], /expects a size/],
    ] as const
  ) {
    await assert.rejects(
      loadServeConfig([...args]),
      (e) => e instanceof UserError && re.test(e.message),
    );
  }
  await assert.rejects(loadServeConfig(["--bogus"]), /bogus/);
});

Deno.test("serve config: a JSON file merges under the flags", async () => {
  const f = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(
      f,
      JSON.stringify({
        http: { port: 7000 },
        dhcp: { range: { start: "10.1.0.10", end: "10.1.0.20" } },
      }),
    );
    const c = await loadServeConfig(["--config", f, "--http", "7001"]);
    assert.equal(c.http.port, 7001);
    assert.equal(c.http.host, undefined);
    assert.equal(c.dhcp.mode, "full");
    assert.equal(c.dhcp.leaseSeconds, 86400);
    await Deno.writeTextFile(f, "{not json");
    await assert.rejects(loadServeConfig(["--config", f]), /cannot read config file/);
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("serve config: the file's own dhcp.mode is kept (a range does not turn off into full)", async () => {
  const f = await Deno.makeTempFile({ suffix: ".json" });
  const range = { start: "10.1.0.10", end: "10.1.0.20" };
  try {
    await Deno.writeTextFile(f, JSON.stringify({ dhcp: { mode: "off", range } }));
    assert.equal((await loadServeConfig(["--config", f])).dhcp.mode, "off");
    await Deno.writeTextFile(f, JSON.stringify({ dhcp: { mode: "proxy", range } }));
    assert.equal((await loadServeConfig(["--config", f])).dhcp.mode, "proxy");
    assert.equal((await loadServeConfig(["--config", f, "--dhcp-mode", "full"])).dhcp.mode, "full");
    await Deno.writeTextFile(f, JSON.stringify({ dhcp: { mode: "fulll" } }));
    await assert.rejects(loadServeConfig(["--config", f]), /dhcp-mode must be one of/);
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("serve config: offer hold and registration limits, from flags or the file, checked", async () => {
  const d = defaultConfig().dhcp;
  assert.deepEqual(
    [d.offerSeconds, d.registerRate, d.registerMax, d.registerTtlSeconds],
    [60, 60, 1000, 86400],
  );
  const c = await loadServeConfig([
    "--offer-time",
    "30",
    "--register-rate",
    "10",
    "--register-max",
    "200",
    "--register-ttl",
    "0",
  ]);
  assert.deepEqual(
    [c.dhcp.offerSeconds, c.dhcp.registerRate, c.dhcp.registerMax, c.dhcp.registerTtlSeconds],
    [30, 10, 200, 0],
  );
  for (
    const [args, re] of [
      [["--offer-time", "1"], /--offer-time expects a whole number from 5 to 3600/],
      [["--register-rate", "0"], /--register-rate expects/],
      [["--register-rate", "ten"], /--register-rate expects/],
      [["--register-max", "0"], /--register-max expects/],
      [["--register-ttl", "30"], /--register-ttl expects 0 \(never\) or seconds ≥ 60/],
      [["--register-ttl", "1.5"], /--register-ttl expects/],
    ] as const
  ) {
    await assert.rejects(
      loadServeConfig([...args]),
      (e) => e instanceof UserError && re.test(e.message),
    );
  }
  const f = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(f, JSON.stringify({ dhcp: { registerMax: 50, offerSeconds: 120 } }));
    const fromFile = await loadServeConfig(["--config", f, "--offer-time", "90"]);
    assert.equal(fromFile.dhcp.registerMax, 50);
    assert.equal(fromFile.dhcp.offerSeconds, 90, "the flag wins over the file");
    assert.equal(fromFile.dhcp.registerRate, 60);
    await Deno.writeTextFile(f, JSON.stringify({ dhcp: { registerRate: -1 } }));
    await assert.rejects(loadServeConfig(["--config", f]), /--register-rate expects/);
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("serve config: --api-auth and event retention keys parse and validate", async () => {
  assert.equal((await loadServeConfig(["--api-auth", "all"])).api.auth, "all");
  await assert.rejects(
    loadServeConfig(["--api-auth", "reads"]),
    (e) => e instanceof UserError && /one of writes, all/.test(e.message),
  );
  assert.deepEqual((await loadServeConfig([])).events, {
    maxAgeDays: 30,
    maxPerNode: 10000,
    maxOther: 100000,
  });
  const f = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(
      f,
      JSON.stringify({ api: { auth: "all" }, events: { maxAgeDays: 7 } }),
    );
    const c = await loadServeConfig(["--config", f]);
    assert.equal(c.api.auth, "all");
    assert.deepEqual(c.events, { maxAgeDays: 7, maxPerNode: 10000, maxOther: 100000 });
    await Deno.writeTextFile(f, JSON.stringify({ events: { maxPerNode: 0 } }));
    await assert.rejects(loadServeConfig(["--config", f]), /events\.maxPerNode expects/);
    await Deno.writeTextFile(f, JSON.stringify({ api: { auth: "none" } }));
    await assert.rejects(loadServeConfig(["--config", f]), /one of writes, all/);
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("serve config: an event retention too long to prune by is refused, not taken for ever", async () => {
  // "Never by age" written as a billion days: the cutoff fell outside a date's range, every prune
  // pass failed on it (a warning every 10 minutes) before the counts ran, and events piled up.
  const f = await Deno.makeTempFile({ suffix: ".json" });
  try {
    for (
      const events of [{ maxAgeDays: 1e9 }, { maxPerNode: 2 ** 63 }, { maxOther: 1e300 }]
    ) {
      await Deno.writeTextFile(f, JSON.stringify({ events }));
      await assert.rejects(
        loadServeConfig(["--config", f]),
        (e) =>
          e instanceof UserError &&
          new RegExp(`events\\.${Object.keys(events)[0]} expects a whole number from 1 to`)
            .test(e.message),
      );
    }
    // The largest values taken still prune.
    await Deno.writeTextFile(
      f,
      JSON.stringify({ events: { maxAgeDays: 36_500, maxPerNode: 1e9, maxOther: 1e9 } }),
    );
    const { events } = await loadServeConfig(["--config", f]);
    const db = new DatabaseSync(":memory:");
    try {
      migrate(db);
      assert.equal(await pruneEvents(db, events), 0);
    } finally {
      db.close();
    }
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("serve config: a DHCP range whose end comes before its start is refused at load", async () => {
  // Taken as "config ok" by --check-config; serve then started HTTP and died on a stack trace.
  await assert.rejects(
    loadServeConfig(["--dhcp-range", "10.9.0.200-10.9.0.100"]),
    (e) => e instanceof UserError && /10\.9\.0\.200-10\.9\.0\.100 is empty/.test(e.message),
  );
  const f = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(
      f,
      JSON.stringify({ dhcp: { range: { start: "10.9.1.9", end: "10.9.0.250" } } }),
    );
    await assert.rejects(
      loadServeConfig(["--config", f]),
      (e) => e instanceof UserError && /config key dhcp\.range: .* is empty/.test(e.message),
    );
  } finally {
    await Deno.remove(f);
  }
  const one = await loadServeConfig(["--dhcp-range", "10.9.0.7-10.9.0.7"]);
  assert.deepEqual(one.dhcp.range, { start: "10.9.0.7", end: "10.9.0.7" });
});

Deno.test("serve config: a FIFO or a huge file as the config file is refused, not waited on", async () => {
  // A FIFO at /etc/netroot/config.json: a SIGHUP's reload waited on it for ever, and SIGTERM (which
  // waits for the reload) no longer stopped the server.
  const dir = await Deno.makeTempDir({ prefix: "nr-config-fifo-" });
  try {
    const fifo = join(dir, "config.json");
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(made.success);
    const loading = loadServeConfig(["--config", fifo]).then(() => "loaded", (e) => e);
    const outcome = await Promise.race([
      loading,
      new Promise((r) => setTimeout(r, 3000)).then(() => "waiting"),
    ]);
    if (outcome === "waiting") {
      // Lets the read end (the old code's), so the test itself ends.
      (await Deno.open(fifo, { write: true })).close();
      await loading;
    }
    assert.ok(
      outcome instanceof UserError && /config\.json: not a regular file/.test(outcome.message),
      String(outcome),
    );
    const big = join(dir, "big.json");
    await Deno.writeTextFile(big, "{}");
    await Deno.truncate(big, 256 << 20);
    await assert.rejects(
      loadServeConfig(["--config", big]),
      (e) => e instanceof UserError && /big\.json: larger than 1 MiB/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve config: every flag has a config file key giving the same config", async () => {
  const { serveOptions } = await import("../src/config.ts");
  const cases: [string[], Record<string, unknown>][] = [
    [["--data", "/srv/nr"], { dataDir: "/srv/nr" }],
    [["--http", "127.0.0.1:9000"], { http: { host: "127.0.0.1", port: 9000 } }],
    [["--api-auth", "all"], { api: { auth: "all" } }],
    [["--interface", "eth9"], { interface: "eth9" }],
    [["--bridge", "br9", "--address", "10.1.0.1/24"], {
      bridge: { name: "br9", address: "10.1.0.1/24" },
    }],
    [["--address", "10.1.0.5"], { serverIp: "10.1.0.5" }],
    [["--dhcp-mode", "off"], { dhcp: { mode: "off" } }],
    [["--dhcp-range", "10.1.0.100-10.1.0.200"], { dhcp: { range: "10.1.0.100-10.1.0.200" } }],
    [["--lease-time", "600"], { dhcp: { leaseSeconds: 600 } }],
    [["--dhcp-router", "10.1.0.254"], { dhcp: { router: "10.1.0.254" } }],
    [["--proxy-strategy", "port4011"], { dhcp: { proxyStrategy: "port4011" } }],
    [["--register-unknown", "false"], { dhcp: { registerUnknown: false } }],
    [["--offer-time", "90"], { dhcp: { offerSeconds: 90 } }],
    [["--register-rate", "5"], { dhcp: { registerRate: 5 } }],
    [["--register-max", "9"], { dhcp: { registerMax: 9 } }],
    [["--register-ttl", "0"], { dhcp: { registerTtlSeconds: 0 } }],
    [["--tftp-port", "6969"], { tftp: { port: 6969 } }],
    [["--netconsole-port", "6667"], { netconsole: { port: 6667 } }],
    [["--ipxe-dir", "/opt/ipxe"], { ipxeDir: "/opt/ipxe" }],
    [["--nfs", "ganesha"], { nfs: { mode: "ganesha" } }],
    [["--nfs-version", "3"], { nfs: { version: 3 } }],
    [["--nfs-reserve", "512M"], { nfs: { reserve: "512M" } }],
    [["--ra", "false"], { ra: false }],
    [["--accel", "tcg"], { vnode: { accel: "tcg" } }],
    [["--log-format", "json"], { logFormat: "json" }],
  ];
  const covered = new Set(cases.flatMap(([a]) => a.filter((x) => x.startsWith("--"))));
  for (const flag of Object.keys(serveOptions)) {
    if (["config", "check-config", "help"].includes(flag)) continue;
    assert.ok(covered.has(`--${flag}`), `--${flag} has no config file case`);
  }
  const dir = await Deno.makeTempDir();
  try {
    const f = `${dir}/c.json`;
    for (const [flags, file] of cases) {
      await Deno.writeTextFile(f, JSON.stringify(file));
      assert.deepEqual(
        await loadServeConfig(["--config", f]),
        await loadServeConfig(flags),
        flags.join(" "),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
