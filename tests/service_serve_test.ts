// `netroot serve` as a service manager sees it: sd_notify READY/STOPPING/WATCHDOG datagrams on a
// real unix socket (NOTIFY_SOCKET), the data dir lock, JSON log lines naming the node, and
// journal mode (priority prefix, no timestamp) only when stderr is the $JOURNAL_STREAM.
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { notifyAddress, watchdogIntervalMs } from "../src/linux/sdnotify.ts";
import { formatLine, setLogFormat, setLogSink, setNodeNamer } from "../src/log.ts";
import { defaultConfig } from "../src/config.ts";
import { closeContext, openContext } from "../src/server.ts";
import { Hono } from "hono";
import { bootRoutes } from "../netboot/http.ts";
import { contextBooter } from "../src/boot/booter.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const mainTs = join(root, "main.ts");

Deno.test("log lines: a value with a control character is quoted, its escape sequence escaped", () => {
  setLogFormat("text");
  // an image's kernel path or a DHCP vendor class may hold ESC sequences (retitle, recolour)
  const line = formatLine("warn", "images", "no kernel", {
    path: "/boot/vmlinuz-\x1b]0;owned\x07",
  });
  // deno-lint-ignore no-control-regex -- no control character may be left
  assert.ok(!/[\x00-\x1f]/.test(line), JSON.stringify(line));
  assert.match(line, /path="\/boot\/vmlinuz-\\u001b\]0;owned\\u0007"/);
});

// An image's author names what the server quotes in its log: its /vmlinuz link's target (the
// reason the image is not bootable), refused in a log line at every script fetch of a node set to
// it. A file name may hold C1 controls (U+009B is CSI, U+009D OSC, which terminals obey), and both
// the text format's quoting (JSON.stringify) and the JSON format left them raw, for the terminal
// of an admin who runs the server in the foreground or reads its log.
Deno.test("log lines: C1 control characters from an image or a sender are escaped, text and json (attacker)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-log-c1-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  const lines: string[] = [];
  setLogSink((line) => lines.push(line));
  try {
    const target = "/boot/x\x9b2J\x9d0;owned\x9c";
    const reason = `/vmlinuz points to ${target}, which is not a file in the image`;
    ctx.db.prepare(
      `INSERT INTO images (id, name, created_at, size, files, bootable, reason)
       VALUES (?, 'hostile', ?, 0, 0, 0, ?)`,
    ).run("ad".repeat(32), new Date().toISOString(), reason);
    const mac = "52:54:00:c1:00:01";
    ctx.nodes.add(mac, { name: "pc1" });
    await ctx.nodes.deploy([mac], "hostile", { force: true, reboot: false });
    const app = new Hono().route("/boot", bootRoutes(contextBooter(ctx)));
    for (const format of ["text", "json"] as const) {
      setLogFormat(format);
      lines.length = 0;
      const r = await app.request(`/boot/${mac}.ipxe`, {}, {
        remoteAddr: { transport: "tcp", hostname: "10.66.0.9", port: 1 },
      });
      assert.match(await r.text(), /not bootable/);
      const refused = lines.find((l) => l.includes("boot refused"));
      assert.ok(refused, lines.join("\n"));
      // deno-lint-ignore no-control-regex -- no control character may be left
      assert.ok(!/[\x00-\x1f\x7f-\x9f]/.test(refused), JSON.stringify(refused));
      assert.ok(refused.includes("x\\u009b2J\\u009d0;owned\\u009c"), refused);
      if (format === "json") assert.match(JSON.parse(refused).reason, new RegExp(target));
    }
  } finally {
    setLogFormat("text");
    setLogSink((line) => console.error(line));
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("log lines: node named from its mac, text and json", () => {
  const unset = setNodeNamer((mac) => mac === "52:54:00:00:00:01" ? "rack1-n3" : undefined);
  try {
    const text = formatLine("info", "dhcp", "ack", { mac: "52:54:00:00:00:01", ip: "10.0.0.5" });
    assert.match(text, /^\S+Z INFO dhcp ack node=rack1-n3 mac=52:54:00:00:00:01 ip=10\.0\.0\.5$/);
    assert.match(formatLine("info", "dhcp", "ack", { mac: "52:54:00:00:00:02" }), /ack mac=/);
    setLogFormat("json");
    const obj = JSON.parse(
      formatLine("warn", "http", "boot refused", {
        mac: "52:54:00:00:00:01",
        reason: "no image",
        error: new Error("boom"),
      }),
    );
    assert.deepEqual({ ...obj, ts: typeof obj.ts }, {
      ts: "string",
      level: "warn",
      component: "http",
      msg: "boot refused",
      node: "rack1-n3",
      mac: "52:54:00:00:00:01",
      reason: "no image",
      error: "boom",
    });
  } finally {
    setLogFormat("text");
    unset();
  }
});

Deno.test("sd_notify addresses and the watchdog interval", () => {
  const path = notifyAddress("/run/systemd/notify");
  assert.equal(path.len, 2 + "/run/systemd/notify".length + 1);
  assert.equal(
    new TextDecoder().decode(path.addr.subarray(2, path.len - 1)),
    "/run/systemd/notify",
  );
  const abs = notifyAddress("@netroot/notify");
  assert.equal(abs.addr[2], 0); // abstract: sun_path starts with NUL, no trailing NUL counted
  assert.equal(abs.len, 2 + 1 + "netroot/notify".length);
  assert.throws(() => notifyAddress("relative"), /neither a path nor an abstract name/);
  assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: "30000000" }, 7), 15000);
  assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: "8" }, 7), 0);
  assert.equal(watchdogIntervalMs({}, 7), 0);
});

/** Journal mode decided in a child whose stderr is a file; JOURNAL_STREAM = that file, or not. */
async function childLogLine(matchStream: boolean): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "nr-journal-" });
  try {
    const out = join(dir, "stderr");
    const code = `import { logger } from ${JSON.stringify(join(root, "src/log.ts"))};` +
      `logger("serve").warn("disk low", { free: "1 GB" });`;
    const stream = matchStream ? `$(stat -c %d:%i ${out})` : "1:2";
    const sh = `exec 2>${out}; JOURNAL_STREAM=${stream} exec "$0" eval "$1"`;
    const st = await new Deno.Command("sh", {
      args: ["-c", sh, Deno.execPath(), code],
      env: { NO_COLOR: "1" },
    }).output();
    assert.ok(st.success);
    return (await Deno.readTextFile(out)).trim();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("log lines on the journal stream: <priority>, no timestamp; elsewhere unchanged", async () => {
  assert.equal(await childLogLine(true), '<4>WARN serve disk low free="1 GB"');
  assert.match(await childLogLine(false), /^\d{4}-\S+Z WARN serve disk low free="1 GB"$/);
});

Deno.test("serve under a service manager: READY after start, watchdog pings, lock, STOPPING", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-notify-" });
  const data = join(dir, "data");
  const sockPath = join(dir, "notify");
  const sock = Deno.listenDatagram({ transport: "unixpacket", path: sockPath });
  const messages: string[] = [];
  const received = (async () => {
    try {
      for (;;) {
        const [buf] = await sock.receive();
        messages.push(new TextDecoder().decode(buf));
      }
    } catch { /* closed */ }
  })();
  const waitFor = async (re: RegExp, what: string, ms = 20_000) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const m = messages.find((x) => re.test(x));
      if (m) return m;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`no ${what} datagram; got ${JSON.stringify(messages)}`);
  };
  const serveArgs = ["run", "-A", mainTs, "serve", "--data", data, "--http", "127.0.0.1:0"];
  const child = new Deno.Command(Deno.execPath(), {
    args: [...serveArgs, "--log-format", "json"],
    env: { NOTIFY_SOCKET: sockPath, WATCHDOG_USEC: "400000", NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const logDone = (async () => {
    for await (const c of child.stderr.pipeThrough(new TextDecoderStream())) log += c;
  })();
  try {
    const ready = await waitFor(/^READY=1/, "READY");
    const port = /STATUS=serving on 127\.0\.0\.1:(\d+)/.exec(ready)?.[1];
    assert.ok(port, ready);
    // READY means serving: the API answers at once.
    const base = `http://127.0.0.1:${port}`;
    assert.equal((await fetch(`${base}/api/v1/nodes`).then((r) => r.json())).length, 0);
    // A second server on the same data dir is refused, naming the first.
    const second = await new Deno.Command(Deno.execPath(), {
      args: serveArgs,
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    assert.equal(second.code, 1);
    assert.match(
      new TextDecoder().decode(second.stderr),
      new RegExp(`in use by netroot serve \\(pid ${child.pid}\\): stop it first`),
    );
    // A log line about a node names it.
    const token = (await Deno.readTextFile(join(data, "token"))).trim();
    const add = await fetch(`${base}/api/v1/nodes`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ mac: "52:54:00:12:34:56", name: "rack1-n3" }),
    });
    assert.equal(add.status, 201, await add.text());
    await (await fetch(`${base}/boot/52-54-00-12-34-56.ipxe`)).text();
    const pings = () => messages.filter((m) => m === "WATCHDOG=1").length;
    const end = Date.now() + 5000;
    while (pings() < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    assert.ok(pings() >= 3, `watchdog pings: ${pings()}`);
    child.kill("SIGTERM");
    await waitFor(/^STOPPING=1$/, "STOPPING");
    assert.equal((await child.status).code, 0);
    await logDone;
    const lines = log.trim().split("\n").map((l) => JSON.parse(l));
    const refused = lines.find((l) => l.msg === "boot refused");
    assert.equal(refused?.node, "rack1-n3", log);
    assert.equal(refused?.mac, "52:54:00:12:34:56");
    assert.ok(lines.some((l) => l.msg === "stopped" && l.level === "info"));
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    sock.close();
    await received;
    await Deno.remove(dir, { recursive: true });
  }
});

/** `netroot serve ARGS` with a data dir of its own, run by `wrapper` (words before deno, e.g.
 *  unshare): it must refuse to start, exit 1 and say why, with no stack trace. Returns what it
 *  wrote on stderr. */
async function serveRefused(wrapper: string[], args: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "nr-refused-" });
  try {
    const [cmd, ...pre] = [...wrapper, Deno.execPath()];
    const out = await new Deno.Command(cmd, {
      args: [...pre, "run", "-A", mainTs, "serve", "--data", join(dir, "data"), ...args],
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, err);
    assert.doesNotMatch(err, /^\s+at /m, "no stack trace");
    return err;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// An admin's first `netroot serve --bridge …` without the privileges it needs: the bridge, the
// DHCP port or the data dir refused it, and the admin got a stack trace of whichever came first
// ("ip link add … Operation not permitted\n    at runTool …") that never said to run as root.
Deno.test("serve without the privileges it needs: one line saying so, no stack trace (root)", async () => {
  if (Deno.uid() !== 0) throw new Error("this test needs root (unshare, setpriv)");
  // root in a network namespace of its own (no bridge can leak), every capability dropped: the
  // position of an admin in a container, and of a non-root one for every step that needs root
  const err = await serveRefused(
    ["unshare", "--net", "--", "setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"],
    ["--http", "127.0.0.1:0", "--bridge", "nrperm0", "--address", "10.79.0.1/24", "--nfs", "off"],
  );
  assert.match(err, /netroot serve: .*(Operation not permitted|Permission denied)/);
  assert.match(err, /lacks a capability netroot serve needs \(it creates the bridge/);
});

// The lab machine's own dnsmasq or isc-dhcp-server holding port 67 (tftpd-hpa port 69): serve
// stopped with a stack trace ("cannot open DHCP sockets on eth1: bind 0.0.0.0:67: Address already
// in use\n    at openSockets …") and no word of what holds the port or what to do.
Deno.test("serve with the DHCP port held by another program: one line naming what to do, no stack trace (root)", async () => {
  if (Deno.uid() !== 0) throw new Error("this test needs root (unshare, port 67)");
  // In a network namespace of its own: python binds UDP 0.0.0.0:67 (as dnsmasq does), keeps the
  // socket across its exec of the server, which then finds the port taken.
  const holder = `import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 67))
s.set_inheritable(True)
os.system("ip link set lo up")
os.execv(sys.argv[1], sys.argv[1:])`;
  const err = await serveRefused(["unshare", "--net", "--", "python3", "-c", holder], [
    "--http",
    "127.0.0.1:0",
    "--interface",
    "lo",
    "--dhcp-range",
    "127.0.0.100-127.0.0.110",
    "--nfs",
    "off",
  ]);
  assert.match(err, /netroot serve: .*:67: Address already in use/);
  assert.match(err, /another program holds that port \(`ss -lntup` names it/);
});

// The server machine back up with the data dir's disk full: serve stopped on SQLite's "disk I/O
// error" and a stack trace, which said neither "full" nor where (and systemd restarted it every 2 s).
Deno.test("serve on a full data dir: one line saying which file system to make room on (root: tmpfs)", async () => {
  if (Deno.uid() !== 0) throw new Error("this test needs root (mount)");
  const dir = await Deno.makeTempDir({ prefix: "nr-full-" });
  const mnt = join(dir, "mnt");
  await Deno.mkdir(mnt);
  const mount = (...args: string[]) => new Deno.Command(args[0], { args: args.slice(1) }).output();
  assert.ok((await mount("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt)).success);
  try {
    const data = join(mnt, "data");
    // Once with room: the data dir and its database exist, as on any server.
    const first = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", mainTs, "serve", "--data", data, "--http", "127.0.0.1:0"],
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let log = "";
    const reader = first.stderr.pipeThrough(new TextDecoderStream()).getReader();
    while (!/http listening/.test(log)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`serve exited:\n${log}`);
      log += value;
    }
    first.kill("SIGTERM");
    while (!(await reader.read()).done) { /* to its end */ }
    await first.status;
    // Full: a file takes every byte left.
    const filler = await Deno.open(join(mnt, "filler"), { write: true, create: true });
    const chunk = new Uint8Array(1 << 16);
    try {
      for (;;) await filler.write(chunk);
    } catch (e) {
      assert.ok(e instanceof Error && /os error 28/.test(e.message), String(e));
    } finally {
      filler.close();
    }
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", mainTs, "serve", "--data", data, "--http", "127.0.0.1:0"],
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, err);
    assert.doesNotMatch(err, /^\s+at /m, "no stack trace");
    assert.match(
      err,
      new RegExp(`no space left on the file system of ${data} \\(\\d+ bytes, \\d+ inodes free\\)`),
    );
  } finally {
    await mount("umount", mnt);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve with its HTTP port taken: the error says to stop the other program or choose --http PORT", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const err = await serveRefused([], ["--http", `127.0.0.1:${taken.addr.port}`]);
    assert.match(err, /Address already in use .*choose another port with --http PORT/);
  } finally {
    taken.close();
  }
});
