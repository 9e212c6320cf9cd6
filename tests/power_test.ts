// Power settings and the `command` driver through the real API and CLI: secrets never shown,
// the admin's program run without a shell (placeholders are arguments, never syntax), deadlines
// that end the program and what it started, one-line errors, `node reboot` through the driver.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { powerCommandDir, splitCommandLine } from "../src/power/command.ts";
import { PowerDrivers, type PowerTarget, runTool } from "../src/power/driver.ts";
import { ipmiDriver } from "../src/power/ipmi.ts";
import { livePid, sleep, withPowerServer } from "./support/power.ts";

const mac = "02:00:00:00:aa:01";

/** A smart-plug stand-in: records its argv and NETROOT_* environment, keeps on/off in a file. */
const plugScript = `#!/bin/sh
d=$(dirname "$0")
printf '%s\\n' "$@" > "$d/argv"
env | grep '^NETROOT_' | sort > "$d/env"
case "$NETROOT_ACTION" in
  status) cat "$d/state" 2>/dev/null || echo off ;;
  on|off) echo "$NETROOT_ACTION" > "$d/state" ;;
  cycle) echo on > "$d/state"; echo cycle >> "$d/cycles" ;;
esac
`;

async function installScript(dir: string, name: string, text: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, name), text, { mode: 0o755 });
}

Deno.test("power settings: validated; secrets shown as *** in API, CLI, events, never returned", () =>
  withPowerServer(async ({ ctx, call, cli }) => {
    assert.equal((await call("POST", "/nodes", { mac, name: "bm1" })).status, 201);
    const set = await call("PATCH", "/nodes/bm1/config", {
      "power.driver": "IPMI",
      "power.host": "127.0.0.1:6230",
      "power.user": "admin",
      "power.password": "hunter2 secret",
      "power.community": "c0mmunity!",
      "power.auth.key": "authkey-123",
      "power.priv.key": "privkey-456",
      "power.poe.port": "7",
      "power.cipher": "3",
    });
    assert.equal(set.status, 200, JSON.stringify(set.json));
    const shown = {
      "power.auth.key": "***",
      "power.cipher": "3",
      "power.community": "***",
      "power.driver": "ipmi",
      "power.host": "127.0.0.1:6230",
      "power.password": "***",
      "power.poe.port": "1.7",
      "power.priv.key": "***",
      "power.user": "admin",
    };
    assert.deepEqual(set.json.settings, shown);
    assert.deepEqual((await call("GET", "/nodes/bm1")).json.settings, shown);
    const list = (await call("GET", "/nodes")).json as unknown as { settings: unknown }[];
    assert.deepEqual(list[0].settings, shown);
    // The stored values are intact for the drivers.
    assert.equal(ctx.nodes.secretSettings(mac)["power.password"], "hunter2 secret");

    // No reply, event or CLI output anywhere holds a secret.
    const secrets = ["hunter2", "c0mmunity!", "authkey-123", "privkey-456"];
    const events = JSON.stringify((await call("GET", "/nodes/bm1/events")).json);
    assert.match(events, /"power.password":"\*\*\*"/);
    const config = await cli("node", "config", "bm1");
    const show = await cli("node", "show", "bm1", "--json");
    const log = await cli("node", "log", "bm1");
    for (const text of [events, config.out, show.out, log.out]) {
      for (const s of secrets) assert.ok(!text.includes(s), `${s} leaked: ${text}`);
    }
    assert.match(config.out, /power\.password\s+\*\*\*/);

    // Bad values: one clear line each. "***" (a listing echoed back) is not a password.
    const bad: [Record<string, string>, RegExp][] = [
      [{ "power.driver": "telnet" }, /power\.driver must be one of command, ipmi, qemu, snmp-poe/],
      [{ "power.host": "-oProxyCommand=x" }, /power\.host must be a host name/],
      [{ "power.host": "bmc:99999" }, /power\.host must be/],
      [{ "power.password": "***" }, /how a set secret is shown/],
      [{ "power.password": "a\nb" }, /single line/],
      [{ "power.community": "two words" }, /must not contain blanks/],
      [{ "power.auth.key": "short" }, /at least 8 characters/],
      [{ "power.poe.port": "0" }, /PoE port index/],
      [{ "power.cipher": "18" }, /cipher suite between 0 and 17/],
      [{ "power.user": "-x" }, /must not start with "-"/],
      [{ "power.command": "/bin/sh -c reboot" }, /file name in <data dir>\/power\//],
      [{ "power.command": "plug 'open" }, /unclosed ' quote/],
    ];
    for (const [body, re] of bad) {
      const r = await call("PATCH", "/nodes/bm1/config", body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.match(String(r.json.error), re);
    }
    assert.equal(ctx.nodes.secretSettings(mac)["power.password"], "hunter2 secret");
  }));

Deno.test("command line split: quotes and backslashes only, no shell syntax", () => {
  assert.deepEqual(splitCommandLine(`plug  a'b c'"d \\" e" f\\ g ;  $(x) 'it''s'`), [
    "plug",
    'ab cd " e',
    "f g",
    ";",
    "$(x)",
    "its",
  ]);
  assert.deepEqual(splitCommandLine(`x "" ''`), ["x", "", ""]);
  assert.throws(() => splitCommandLine(`x "open`), /unclosed " quote/);
});

Deno.test("command driver: argv without a shell, NETROOT_* env, status, on/off/cycle, reboot", () =>
  withPowerServer(async ({ ctx, dir, call, cli }) => {
    const scripts = powerCommandDir(ctx.data);
    await installScript(scripts, "plug.sh", plugScript);
    const pwned = join(dir, "pwned");
    await call("POST", "/nodes", { mac, name: "bm1" });
    ctx.nodes.setIp(mac, "10.0.0.21");
    const line = `plug.sh {action} --node={name} "mac {mac}" ip={ip} '; touch ${pwned}' ` +
      `"$(touch ${pwned})" \`touch ${pwned}\` | touch ${pwned}`;
    const cfg = await call("PATCH", "/nodes/bm1/config", {
      "power.driver": "command",
      "power.command": line,
      "power.password": "s3cret",
    });
    assert.equal(cfg.status, 200, JSON.stringify(cfg.json));

    const st = await call("POST", "/nodes/bm1/power", { action: "status" });
    assert.deepEqual(st.json, {
      mac,
      name: "bm1",
      driver: "command",
      action: "status",
      state: "off",
    });
    const on = await call("POST", "/nodes/bm1/power", { action: "on" });
    assert.equal(on.status, 200);
    assert.equal(on.json.state, "on");
    // Each placeholder became (part of) one argument; shell syntax stayed plain text.
    assert.deepEqual(Deno.readTextFileSync(join(scripts, "argv")).trimEnd().split("\n"), [
      "on",
      "--node=bm1",
      `mac ${mac}`,
      "ip=10.0.0.21",
      `; touch ${pwned}`,
      `$(touch ${pwned})`,
      `\`touch`,
      `${pwned}\``,
      "|",
      "touch",
      pwned,
    ]);
    assert.equal(existsSync(pwned), false);
    assert.deepEqual(Deno.readTextFileSync(join(scripts, "env")).trimEnd().split("\n"), [
      "NETROOT_ACTION=on",
      "NETROOT_IP=10.0.0.21",
      `NETROOT_MAC=${mac}`,
      "NETROOT_NAME=bm1",
      "NETROOT_POWER_HOST=",
      "NETROOT_POWER_PASSWORD=s3cret",
      "NETROOT_POWER_USER=",
    ]);
    assert.equal((await call("POST", "/nodes/bm1/power", { action: "status" })).json.state, "on");

    // The CLI: status, off, and a one-line failure with exit 1.
    const cliStatus = await cli("node", "power", "bm1", "status");
    assert.equal(cliStatus.code, 0, cliStatus.err);
    assert.equal(cliStatus.out.trim(), "bm1: on (command)");
    assert.equal(
      (await cli("node", "power", "bm1", "off")).out.trim(),
      "bm1: powered off (command)",
    );
    assert.equal(Deno.readTextFileSync(join(scripts, "state")).trim(), "off");
    const badAction = await cli("node", "power", "bm1", "explode");
    assert.equal(badAction.code, 1);
    assert.match(badAction.err.trim(), /^netroot node: power action must be one of on, off/);

    // node reboot = the driver's cycle; the reboot event names the mechanism.
    const reboot = await call("POST", "/nodes/bm1/reboot", { cause: "test" });
    assert.deepEqual(reboot.json, {
      mac,
      mechanism: "command",
      ok: true,
      message: "rebooted by command",
    });
    assert.equal(Deno.readTextFileSync(join(scripts, "cycles")).trim(), "cycle");
    const kinds = ((await call("GET", "/nodes/bm1/events")).json as unknown as {
      kind: string;
      detail: Record<string, unknown>;
    }[]).filter((e) => e.kind.startsWith("power.") || e.kind.startsWith("reboot"));
    assert.deepEqual(kinds.map((e) => [e.kind, e.detail.mechanism ?? e.detail.driver]), [
      ["power.on", "command"],
      ["power.off", "command"],
      ["power.cycle", "command"],
      ["reboot", "command"],
    ]);
  }));

Deno.test("command driver: deadline ends the program and its children; errors scrubbed", () =>
  withPowerServer(async ({ ctx, dir, call }) => {
    const scripts = powerCommandDir(ctx.data);
    const childPid = join(dir, "child.pid");
    await installScript(
      scripts,
      "slow.sh",
      `#!/bin/sh\nsleep 60 &\necho $! > ${childPid}\nsleep 60\n`,
    );
    await installScript(
      scripts,
      "fail.sh",
      `#!/bin/sh\necho "plug said: HTTP 401 for $NETROOT_POWER_PASSWORD" >&2\necho more >&2\nexit 3\n`,
    );
    await installScript(scripts, "mute.sh", `#!/bin/sh\necho maybe\n`);
    await call("POST", "/nodes", { mac, name: "bm1" });
    await call("PATCH", "/nodes/bm1/config", {
      "power.driver": "command",
      "power.command": "slow.sh",
      "power.timeout": "1",
      "power.password": "pl4ug-pass",
    });

    const t0 = Date.now();
    const slow = await call("POST", "/nodes/bm1/power", { action: "on" });
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
    assert.equal(slow.status, 502);
    assert.match(String(slow.json.error), /did not finish within 1 s/);
    // The background child of the script went with it (the whole process group).
    await sleep(200);
    assert.equal(livePid(childPid), undefined);

    await call("PATCH", "/nodes/bm1/config", { "power.command": "fail.sh" });
    const fail = await call("POST", "/nodes/bm1/power", { action: "off" });
    assert.equal(fail.status, 502);
    assert.equal(fail.json.error, "fail.sh off failed (exit 3): plug said: HTTP 401 for ***");

    await call("PATCH", "/nodes/bm1/config", { "power.command": "mute.sh" });
    const mute = await call("POST", "/nodes/bm1/power", { action: "status" });
    assert.equal(mute.status, 502);
    assert.match(String(mute.json.error), /must print "on" or "off", it printed "maybe"/);

    await call("PATCH", "/nodes/bm1/config", { "power.command": "absent.sh on" });
    const absent = await call("POST", "/nodes/bm1/power", { action: "on" });
    assert.equal(absent.status, 409);
    assert.match(String(absent.json.error), /absent\.sh not found in .*\/power\//);

    const events = JSON.stringify((await call("GET", "/nodes/bm1/events")).json);
    assert.ok(!events.includes("pl4ug-pass"), events);
    assert.match(events, /power\.failed/);

    // No driver: the 409 says how to set one; a virtual-only driver refuses a physical node.
    await call("PATCH", "/nodes/bm1/config", { "power.driver": null });
    const none = await call("POST", "/nodes/bm1/power", { action: "on" });
    assert.equal(none.status, 409);
    assert.match(String(none.json.error), /has no power driver: netroot node config bm1 power/);
    await call("PATCH", "/nodes/bm1/config", { "power.driver": "qemu" });
    const qemu = await call("POST", "/nodes/bm1/power", { action: "on" });
    assert.equal(qemu.status, 409);
    assert.match(String(qemu.json.error), /not a virtual node/);
    await call("PATCH", "/nodes/bm1/config", { "power.driver": "ipmi" });
    const unset = await call("POST", "/nodes/bm1/power", { action: "status" });
    assert.equal(unset.status, 409);
    assert.match(String(unset.json.error), /power\.driver=ipmi needs power\.host/);
  }));

Deno.test("power.host: a new host gets the stored secrets only when the same change gives them again", () =>
  withPowerServer(async ({ ctx, call }) => {
    await call("POST", "/nodes", { mac, name: "bm1" });
    const set = await call("PATCH", "/nodes/bm1/config", {
      "power.driver": "snmp-poe",
      "power.host": "10.255.0.1",
      "power.poe.port": "4",
      "power.community": "sw1tch-rw-secret",
    });
    assert.equal(set.status, 200, JSON.stringify(set.json));
    // A listener standing in for a host of the token holder's: the API shows the community as
    // ***, yet a PATCH of power.host alone sent it there in clear (measured: the SNMP packet).
    const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const port = (sock.addr as Deno.NetAddr).port;
    try {
      const moved = await call("PATCH", "/nodes/bm1/config", { "power.host": `127.0.0.1:${port}` });
      assert.equal(moved.status, 400, JSON.stringify(moved.json));
      assert.match(String(moved.json.error), /power\.host .*power\.community/);
      assert.equal(ctx.nodes.secretSettings(mac)["power.host"], "10.255.0.1");
      // Given again (or removed) in the same change, the move is the admin's.
      const again = await call("PATCH", "/nodes/bm1/config", {
        "power.host": "10.255.0.2",
        "power.community": "sw1tch-rw-secret",
      });
      assert.equal(again.status, 200, JSON.stringify(again.json));
      const dropped = await call("PATCH", "/nodes/bm1/config", {
        "power.host": `127.0.0.1:${port}`,
        "power.community": null,
      });
      assert.equal(dropped.status, 200, JSON.stringify(dropped.json));
      const status = await call("POST", "/nodes/bm1/power", { action: "status" });
      assert.equal(status.status, 409, "no community left to send");
      // Same host again, or no host: nothing moves.
      await call("PATCH", "/nodes/bm1/config", { "power.community": "sw1tch-rw-secret" });
      const same = await call("PATCH", "/nodes/bm1/config", { "power.host": `127.0.0.1:${port}` });
      assert.equal(same.status, 200, JSON.stringify(same.json));
      const none = await call("PATCH", "/nodes/bm1/config", { "power.host": null });
      assert.equal(none.status, 200, JSON.stringify(none.json));
    } finally {
      sock.close();
    }
  }));

Deno.test("ipmi driver: what ipmitool says of a failure is kept to 300 characters", async () => {
  // A stand-in ipmitool first on PATH: its error line, the BMC's to shape, is 64 KiB long.
  const dir = await Deno.makeTempDir({ prefix: "nr-ipmitool-" });
  const path = Deno.env.get("PATH") ?? "";
  try {
    await Deno.writeTextFile(
      join(dir, "ipmitool"),
      `#!/bin/sh\nprintf 'Error: %065536d\\n' 0 >&2\nexit 1\n`,
      { mode: 0o755 },
    );
    Deno.env.set("PATH", `${dir}:${path}`);
    const target = {
      ctx: { power: new PowerDrivers([]) },
      node: { name: "n1" },
      settings: { "power.host": "127.0.0.1", "power.user": "u", "power.password": "pw" },
      timeoutMs: 5000,
    } as unknown as PowerTarget;
    const e = await ipmiDriver.status(target).then(() => undefined, (e) => e as Error);
    assert.ok(e, "failed");
    assert.match(e.message, /failed: Error: 0{290}/);
    assert.ok(e.message.length < 500, `${e.message.length} characters`);
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runTool: a tool run under nice is named in its timeout, not nice", async () => {
  await assert.rejects(
    runTool(["nice", "-n", "19", "sleep", "5"], { timeoutMs: 200, group: false }),
    /^PowerError: sleep did not finish within 0.2 s/,
  );
});

// A deploy to the 200 PCs of a lab, each with its BMC: one ipmitool per node at once took 6.9 MB
// each (Pss, measured with 50), 1.4 GB for 200. Now 32 power commands run at once in all; the
// stand-in ipmitool below counts the others running beside it.
Deno.test("power: at most 32 device commands at once, however many nodes reboot", () =>
  withPowerServer(async ({ ctx, dir }) => {
    const bin = join(dir, "bin");
    await Deno.mkdir(join(bin, "running"), { recursive: true });
    await Deno.writeTextFile(
      join(bin, "ipmitool"),
      `#!/bin/sh
d=${bin}
mkdir "$d/running/$$"
n=$(ls "$d/running" | wc -l)
[ "$n" -gt 32 ] && echo "$n" >> "$d/over"
while [ ! -e "$d/release" ]; do sleep 0.05; done
rmdir "$d/running/$$"
echo "Chassis Power is on"
`,
      { mode: 0o755 },
    );
    const path = Deno.env.get("PATH") ?? "";
    Deno.env.set("PATH", `${bin}:${path}`);
    try {
      const names = Array.from({ length: 40 }, (_, i) => `pc${i + 1}`);
      names.forEach((name, i) => {
        const m = `02:00:00:00:ab:${(i + 1).toString(16).padStart(2, "0")}`;
        ctx.nodes.add(m, { name });
        ctx.nodes.configure(m, {
          "power.driver": "ipmi",
          "power.host": `127.0.0.1:${10_000 + i}`, // a BMC each
          "power.user": "admin",
          "power.password": "bmc-pass",
        });
      });
      const reboots = Promise.all(names.map((n) => ctx.nodes.reboot(n, "deploy", { hard: true })));
      const running = () => Deno.readDirSync(join(bin, "running")).toArray().length;
      try {
        for (let i = 0; i < 200 && running() < 32; i++) await sleep(50);
      } finally {
        await Deno.writeTextFile(join(bin, "release"), "");
      }
      const results = await reboots;
      assert.deepEqual(results.filter((r) => !r.ok), []);
      assert.equal(existsSync(join(bin, "over")), false, "more than 32 ipmitools at once");
    } finally {
      Deno.env.set("PATH", path);
    }
  }));
