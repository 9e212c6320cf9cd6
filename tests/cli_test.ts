// `netroot node …` as a user runs it: a child `deno run main.ts` process talking HTTP to a real
// server on a loopback port; exit codes, stdout tables/JSON and one-line stderr errors.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { defaultConfig } from "../src/config.ts";
import type { Context } from "../src/context.ts";
import { recordEvent, recordProgress } from "../src/events.ts";
import { buildApp, closeContext, openContext } from "../src/server.ts";
import type { NodeInfo } from "../src/nodes.ts";
import { ApiClient } from "../src/cli/client.ts";
import { VnodeManager } from "../src/vnode/manager.ts";
import { keyValues, table, visibleLines } from "../src/cli/output.ts";
import { cliOnTerminal, onTerminal } from "./support/terminal.ts";

const mainTs = fileURLToPath(new URL("../main.ts", import.meta.url));
const ports = new WeakMap<Context, number>();
const serverPort = (ctx: Context) => ports.get(ctx)!;

interface Run {
  code: number;
  out: string;
  err: string;
}

async function withServer(
  fn: (
    cli: (...args: (string | Record<string, string>)[]) => Promise<Run>,
    ctx: Context,
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-cli-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    buildApp(ctx).fetch,
  );
  ports.set(ctx, server.addr.port);
  /** Runs the CLI; a trailing object overrides environment variables. */
  const cli = async (...args: (string | Record<string, string>)[]): Promise<Run> => {
    const env = typeof args.at(-1) === "object" ? args.pop() as Record<string, string> : {};
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", mainTs, ...args as string[]],
      env: {
        NETROOT_SERVER: `http://127.0.0.1:${server.addr.port}`,
        NETROOT_DATA: dir, // the token is read from the data dir, as on the server host
        NO_COLOR: "1",
        ...env,
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, out: dec.decode(out.stdout), err: dec.decode(out.stderr) };
  };
  try {
    await fn(cli, ctx);
  } finally {
    await server.shutdown();
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}

function ok(r: Run): string {
  assert.equal(r.code, 0, `exit ${r.code}, stderr: ${r.err}`);
  return r.out;
}

/** A failure: non-zero, exactly one line on stderr, matching `re`. */
function fails(r: Run, re: RegExp): void {
  assert.notEqual(r.code, 0, `expected failure, got stdout ${r.out}`);
  const lines = r.err.trim().split("\n");
  assert.equal(lines.length, 1, `stderr should be one line: ${r.err}`);
  assert.match(lines[0], re);
}

Deno.test("tables and key-value lines show control characters instead of sending them", () => {
  // a node's DHCP vendor class or an image's kernel path reaches `node show` / `image ls`
  const esc = "PXE\x1b]0;owned\x07\x1b[2J";
  for (const out of [keyValues({ vendorClass: esc }), table([{ kernel: esc }], ["kernel"])]) {
    // deno-lint-ignore no-control-regex -- no control character may be left
    assert.ok(!/[\x00-\x09\x0b-\x1f]/.test(out), JSON.stringify(out));
    assert.match(out, /PXE\\x1b\]0;owned\\x07\\x1b\[2J/);
  }
  assert.equal(visibleLines("a\nb\x1b"), "a\nb\\x1b", "a message keeps its lines");
});

Deno.test("node CLI: add, ls, show, rename, config, boot, log, reboot, forget", () =>
  withServer(async (cli, ctx) => {
    const id = "ab".repeat(32);
    ctx.db.prepare(
      `INSERT INTO images (id, name, created_at, size, files, bootable) VALUES (?, 'debian', ?, 0, 0, 1)`,
    ).run(id, new Date().toISOString());
    mkdirSync(ctx.data.rootfs(id), { recursive: true });

    assert.match(
      ok(await cli("node", "add", "52:54:00:AA:00:01", "--name", "alpha")),
      /added alpha/,
    );
    ok(await cli("node", "add", "52-54-00-aa-00-02"));
    fails(await cli("node", "add", "52:54:00:aa:00:01"), /^netroot node: node .* already exists$/);
    fails(await cli("node", "add", "nonsense"), /invalid MAC address: nonsense/);
    fails(await cli("node", "add"), /missing argument/);

    const table = ok(await cli("node", "ls"));
    assert.match(table.split("\n")[0], /^NAME\s+MAC\s+IP\s+IMAGE/);
    assert.match(table, /alpha\s+52:54:00:aa:00:01/);
    assert.match(table, /node-aa0002\s+52:54:00:aa:00:02/);
    const list = JSON.parse(ok(await cli("node", "ls", "--json")));
    assert.deepEqual(list.map((n: { name: string }) => n.name), ["alpha", "node-aa0002"]);

    ok(await cli("node", "rename", "node-aa0002", "beta"));
    fails(await cli("node", "rename", "beta", "alpha"), /already taken/);

    assert.match(
      ok(await cli("node", "config", "alpha", "nfs.timeout=60", "kernel.cmdline=quiet")),
      /nfs\.timeout\s+60/,
    );
    fails(
      await cli("node", "config", "alpha", "boot.mode=fast"),
      /boot\.mode must be one of auto, network/,
    );
    fails(await cli("node", "config", "alpha", "oops"), /expected key=value/);
    assert.deepEqual(
      JSON.parse(ok(await cli("node", "config", "alpha", "kernel.cmdline=", "--json"))),
      {
        "nfs.timeout": "60",
      },
    );

    const boot = ok(await cli("node", "boot", "alpha,beta", "debian"));
    assert.match(boot, /alpha\s+52:54:00:aa:00:01\s+debian\s+no reboot mechanism/);
    assert.equal(ctx.nodes.get("beta").imageId, id);
    const viaAlias = JSON.parse(ok(await cli("deploy", "beta", "debian", "--no-reboot", "--json")));
    assert.deepEqual(viaAlias.reboots, []);
    fails(await cli("deploy", "alpha,ghost", "debian"), /node ghost not found/);
    fails(await cli("deploy", "alpha", "nothing"), /not found/);

    const show = ok(await cli("node", "show", "52:54:00:aa:00:01"));
    assert.match(show, /name\s+alpha/);
    assert.match(show, /imageName\s+debian/);
    assert.match(show, /nfs\.timeout\s+60/);
    assert.equal(JSON.parse(ok(await cli("node", "show", "alpha", "--json"))).imageId, id);

    const log = ok(await cli("node", "log", "alpha"));
    assert.match(log, /node\.added/);
    assert.match(log, /deploy \{"image":"a/);
    assert.match(log, /reboot\.none/);

    // No reboot mechanism exists yet: the command says so and exits non-zero.
    const reboot = await cli("node", "reboot", "alpha");
    assert.equal(reboot.code, 1);
    assert.match(reboot.out, /no reboot mechanism/);

    fails(await cli("node", "show", "ghost"), /^netroot node: node ghost not found$/);
    fails(await cli("node", "frobnicate"), /unknown node command frobnicate/);
    fails(await cli("node", "ls", "--bogus"), /bogus/);
    assert.match(ok(await cli("node", "forget", "beta")), /forgot beta \(52:54:00:aa:00:02\)/);
    assert.equal(ctx.nodes.find("beta"), undefined);
  }));

Deno.test("node CLI: --help everywhere, clear errors without a server or token", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-cli-" });
  try {
    const run = async (env: Record<string, string>, ...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", mainTs, ...args],
        env: { NETROOT_DATA: dir, NO_COLOR: "1", ...env },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: out.code, out: dec.decode(out.stdout), err: dec.decode(out.stderr) };
    };
    for (
      const cmd of [
        "add",
        "ls",
        "show",
        "rename",
        "forget",
        "config",
        "boot",
        "reboot",
        "log",
        "console",
      ]
    ) {
      const r = await run({}, "node", cmd, "--help");
      assert.equal(r.code, 0);
      assert.match(r.out, new RegExp(`^usage: netroot node ${cmd}`));
    }
    assert.match(ok(await run({}, "node", "--help")), /boot NODE\[,NODE…\] IMAGE/);
    assert.match(ok(await run({}, "deploy", "--help")), /netroot deploy NODE/);
    // Port 9 on loopback: nothing listens there.
    fails(
      await run({ NETROOT_SERVER: "http://127.0.0.1:9" }, "node", "ls"),
      /cannot reach the netroot server at http:\/\/127\.0\.0\.1:9/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("node CLI: writes without the token are refused with 401's message", () =>
  withServer(async (cli, ctx) => {
    const token = () => Promise.resolve(ctx.token);
    const empty = await Deno.makeTempDir({ prefix: "nr-cli-" });
    try {
      // No token in this data dir and none in the environment: reads work, writes do not.
      ok(await cli("node", "ls", { NETROOT_DATA: empty }));
      fails(
        await cli("node", "add", "52:54:00:aa:00:09", { NETROOT_DATA: empty }),
        /missing or wrong API token/,
      );
      ok(
        await cli("node", "add", "52:54:00:aa:00:09", {
          NETROOT_DATA: empty,
          NETROOT_TOKEN: await token(),
        }),
      );
    } finally {
      await Deno.remove(empty, { recursive: true });
    }
  }));

/** Runs a `--follow` command; `until(text)` waits for it on stdout and returns all output so far. */
async function following(
  ctx: Context,
  args: string[],
  fn: (until: (text: string) => Promise<string>) => Promise<void>,
): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mainTs, ...args],
    // The token: a virtual node's console needs it even for reading.
    env: { NETROOT_SERVER: `http://127.0.0.1:${serverPort(ctx)}`, NETROOT_TOKEN: ctx.token },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let seen = "";
    await fn(async (text) => {
      const deadline = Date.now() + 15_000;
      while (!seen.includes(text) && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      assert.ok(seen.includes(text), `${args.join(" ")} printed ${JSON.stringify(seen)}`);
      return seen;
    });
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await reader.cancel().catch(() => {});
  }
}

Deno.test("node CLI: log --follow prints new timeline events as they are recorded", () =>
  withServer(async (_cli, ctx) => {
    ctx.nodes.add("52:54:00:aa:00:30", { name: "watched" });
    await following(ctx, ["node", "log", "watched", "--follow"], async (until) => {
      await until("node.added");
      recordEvent(ctx.db, "52:54:00:aa:00:30", "dhcp.ack", { ip: "10.77.0.30" });
      const out = await until("dhcp.ack");
      assert.match(out, /^\S+Z {2}node\.added .*\n\S+Z {2}dhcp\.ack \{"ip":"10\.77\.0\.30"\}\n$/);
    });
  }));

// The console route is the virtual-node code's (src/vnode/api.ts, through the API extension hook).
Deno.test("node CLI: console prints a virtual node's serial log; --follow streams appends", () =>
  withServer(async (cli, ctx) => {
    ctx.nodes.add("52:54:00:aa:00:20", { name: "vm1", virtual: true });
    ctx.nodes.add("52:54:00:aa:00:21", { name: "metal" });
    const log = join(ctx.data.vm("52:54:00:aa:00:20"), "console.log");
    mkdirSync(ctx.data.vm("52:54:00:aa:00:20"), { recursive: true });
    Deno.writeTextFileSync(log, "SeaBIOS\niPXE\n");
    assert.equal(ok(await cli("node", "console", "vm1")), "SeaBIOS\niPXE\n");
    fails(await cli("node", "console", "metal"), /only virtual nodes/);

    await following(ctx, ["node", "console", "vm1", "--follow"], async (until) => {
      assert.equal(await until("iPXE\n"), "SeaBIOS\niPXE\n");
      Deno.writeTextFileSync(log, "Linux version 6.1\n", { append: true });
      assert.equal(await until("Linux version 6.1\n"), "SeaBIOS\niPXE\nLinux version 6.1\n");
    });
  }));

// A node's serial console is what its guest wrote (root on the node, an image's code): escape
// sequences there set the admin's clipboard (OSC 52), retitle or rewrite the terminal. The
// netconsole log has them removed at the receiver; the serial one reached the terminal raw.
Deno.test("node CLI: console shows a guest's control characters instead of sending them", () =>
  withServer(async (cli, ctx) => {
    const mac = "52:54:00:aa:00:22";
    ctx.nodes.add(mac, { name: "vm2", virtual: true });
    mkdirSync(ctx.data.vm(mac), { recursive: true });
    Deno.writeTextFileSync(
      join(ctx.data.vm(mac), "console.log"),
      "login: \x1b]52;c;Y3VybCB4fHNo\x07\x1b]0;owned\x07\r\nLinux\tx\x9b2J\r\n",
    );
    const out = ok(await cli("node", "console", "vm2"));
    // deno-lint-ignore no-control-regex -- no control character but newline and tab may be left
    assert.ok(!/[\x00-\x08\x0b-\x1f\x7f-\x9f]/.test(out), JSON.stringify(out));
    assert.equal(
      out,
      "login: \\x1b]52;c;Y3VybCB4fHNo\\x07\\x1b]0;owned\\x07\nLinux\tx\\x9b2J\n",
    );
    // --json keeps the text as it is (JSON escapes it).
    const json = JSON.parse(ok(await cli("node", "console", "vm2", "--json")));
    assert.ok(json.text.startsWith("login: \x1b]52;"), JSON.stringify(json.text));
  }));

// On the admin's terminal, a guest's colours (systemd's "[  OK  ]" on every boot) were shown as
// "\x1b[0;32m": now SGR sequences pass, each coloured line ends with a reset, and every other
// escape sequence or control character is still shown. To a pipe or a file: plain text.
Deno.test("node CLI: console keeps a guest's colours on a terminal, nothing else; plain text to a pipe", () =>
  withServer(async (cli, ctx) => {
    const mac = "52:54:00:aa:00:23";
    ctx.nodes.add(mac, { name: "vm3", virtual: true });
    mkdirSync(ctx.data.vm(mac), { recursive: true });
    const log = join(ctx.data.vm(mac), "console.log");
    Deno.writeTextFileSync(
      log,
      "[\x1b[0;32m  OK  \x1b[0m] Started \x1b[1;39mJournal\x1b[0m.\r\n" +
        "\x1b[8mconcealed\n" + // left on: the reset at the line's end ends it
        "\x1b]52;c;Y3VybCB4fHNo\x07\x1b]0;owned\x07\x1bP1$qm\x1b\\\x1b[2J\x1b[1A\x1b[31;" +
        "1\u009b2J\u009d0;x\x08\x07a\rb\x1b\tc\x1b[" + "1;".repeat(20) + "m\r\n",
    );
    const env = { NETROOT_SERVER: `http://127.0.0.1:${serverPort(ctx)}`, NETROOT_TOKEN: ctx.token };
    const shown = "\\x1b]52;c;Y3VybCB4fHNo\\x07\\x1b]0;owned\\x07\\x1bP1$qm\\x1b\\\\x1b[2J" +
      "\\x1b[1A\\x1b[31;1\\x9b2J\\x9d0;x\\x08\\x07a\\x0db\\x1b\tc\\x1b[" + "1;".repeat(20) + "m";
    const term = await onTerminal(["node", "console", "vm3"], env);
    assert.equal(term.code, 0, term.out);
    assert.equal(
      term.out,
      "[\x1b[0;32m  OK  \x1b[0m] Started \x1b[1;39mJournal\x1b[0m.\x1b[0m\r\n" +
        "\x1b[8mconcealed\x1b[0m\r\n" + shown + "\r\n",
    );
    assert.equal(
      ok(await cli("node", "console", "vm3", env)),
      "[  OK  ] Started Journal.\nconcealed\n" + shown + "\n",
    );

    // --follow: a read that ends inside a colour or between CR and LF leaves it to the next read.
    Deno.writeTextFileSync(log, "[\x1b[0;3");
    const child = cliOnTerminal(["node", "console", "vm3", "--follow"], env);
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    const until = async (text: string) => {
      const deadline = Date.now() + 15_000;
      while (!seen.includes(text) && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      assert.ok(seen.includes(text), `printed ${JSON.stringify(seen)}`);
    };
    try {
      await until("[");
      Deno.writeTextFileSync(log, "2m  OK  \x1b[0m] up\r", { append: true });
      await until("up");
      Deno.writeTextFileSync(log, "\nnext\n", { append: true });
      await until("next\r\n");
      assert.equal(seen, "[\x1b[0;32m  OK  \x1b[0m] up\x1b[0m\r\nnext\r\n");
    } finally {
      child.kill("SIGTERM");
      await child.status;
      await reader.cancel().catch(() => {});
    }
  }));

// An answer holds 1 MiB of the log: `node console` without --follow showed the first MiB of a log up
// to 16 MiB, whose end is the latest boot; a character cut at the MiB showed as two U+FFFD.
Deno.test("node CLI: console prints the whole log, past its first MiB, no character cut", () =>
  withServer(async (cli, ctx) => {
    const mac = "52:54:00:aa:00:24";
    ctx.nodes.add(mac, { name: "vm4", virtual: true });
    mkdirSync(ctx.data.vm(mac), { recursive: true });
    const before = "boot 1\n".repeat(149796) + "xyz"; // 1 MiB - 1 byte: "é" spans the MiB
    Deno.writeTextFileSync(
      join(ctx.data.vm(mac), "console.log"),
      `${before}é\x1b[32mgreen\x1b[0m\r\nboot 2: login:\r\n`,
    );
    const out = ok(await cli("node", "console", "vm4", { NETROOT_TOKEN: ctx.token }));
    assert.equal(out.length, before.length + "égreen\nboot 2: login:\n".length);
    assert.ok(out.startsWith(before));
    assert.equal(out.slice(before.length), "égreen\nboot 2: login:\n");
  }));

// A node (or netconsole packets sent as it) that writes its console faster than the CLI reads it:
// `node console` without --follow read until a read came back empty, so it went on for as long
// as the writing did. It stops at the log's end as it was at its first read.
Deno.test("node CLI: console without --follow stops at the log's end of its first read, however fast the node writes", () =>
  withServer(async (cli, ctx) => {
    const mac = "52:54:00:aa:00:25";
    ctx.nodes.add(mac, { name: "vm5", virtual: true });
    mkdirSync(ctx.data.vm(mac), { recursive: true });
    const log = join(ctx.data.vm(mac), "console.log");
    const line = "x".repeat(1023) + "\n";
    Deno.writeTextFileSync(log, line.repeat(3 << 10)); // 3 MiB
    let done = false, appended = 0;
    const writer = (async () => {
      // From the CLI's first connection to the server (its deno starts slower than this writes):
      // a server-side socket of the API's port established, in the kernel's table.
      const port = ports.get(ctx)!.toString(16).toUpperCase().padStart(4, "0");
      const connected = () =>
        Deno.readTextFileSync("/proc/net/tcp").split("\n").some((l) => {
          const f = l.trim().split(/\s+/);
          return f[1]?.endsWith(`:${port}`) && f[3] === "01";
        });
      while (!done && !connected()) await new Promise((r) => setTimeout(r, 5));
      const chunk = new TextEncoder().encode(line.repeat(1 << 10)); // 1 MiB
      while (!done && appended < 48 << 20) {
        await Deno.writeFile(log, chunk, { append: true });
        appended += chunk.length;
        await new Promise((r) => setTimeout(r, 1)); // ~1 MiB a ms: faster than 1 MiB a read
      }
    })();
    const out = await cli("node", "console", "vm5", { NETROOT_TOKEN: ctx.token }).finally(() => {
      done = true;
    });
    await writer;
    const printed = ok(out).length;
    assert.ok(printed >= 3 << 20, `the log as it was is printed (${printed} bytes)`);
    // The first read comes a few of the writer's MiB after the connection; reading until a read
    // came back empty, the CLI printed all 51 MiB.
    assert.ok(
      printed < ((3 << 20) + appended) / 2,
      `printing stopped near the first read's end: ${printed} bytes printed, ${appended} appended`,
    );
  }));

// A file's name is the image author's: `image diff` printed it raw, so an imported image's
// file named with escape sequences set the admin's clipboard (OSC 52) or rewrote the terminal,
// and one with a newline added lines of its own to the listing; `image import` printed its
// /vmlinuz link's target raw in why the image is not bootable.
Deno.test("image CLI: diff and import show an image's control characters in file names instead of sending them", () =>
  withServer(async (cli, ctx) => {
    const tree = join(ctx.data.tmp, "tree");
    mkdirSync(join(tree, "etc"), { recursive: true });
    Deno.writeTextFileSync(join(tree, "etc/os-release"), "ID=a\n");
    Deno.utimeSync(join(tree, "etc"), 1e9, 1e9);
    await ctx.images.import(tree, "evil");
    const name = "x\x1b]52;c;Y3VybCB4fHNo\x07\x1b[2J\nM shadow";
    Deno.writeTextFileSync(join(tree, "etc", name), "");
    Deno.utimeSync(join(tree, "etc"), 1e9, 1e9); // /etc itself unchanged
    await ctx.images.import(tree, "evil");
    const [a, b] = ctx.images.history("evil").map((v) => v.id);
    const out = ok(await cli("image", "diff", a, b));
    // deno-lint-ignore no-control-regex -- no control character but the lines' own newlines
    assert.ok(!/[\x00-\x09\x0b-\x1f\x7f-\x9f]/.test(out), JSON.stringify(out));
    assert.equal(out, "+ /etc/x\\x1b]52;c;Y3VybCB4fHNo\\x07\\x1b[2J\\x0aM shadow\n");
    // --json keeps the name as it is (JSON escapes it).
    const json = JSON.parse(ok(await cli("image", "diff", a, b, "--json")));
    assert.deepEqual(json.added, [`/etc/${name}`]);
    // why an image is not bootable names its /vmlinuz link's target, which is the author's too
    Deno.symlinkSync("\x1b]0;owned\x07", join(tree, "vmlinuz"));
    const imported = ok(await cli("image", "import", tree, "--name", "evil"));
    // deno-lint-ignore no-control-regex -- no control character but the lines' own newlines
    assert.ok(!/[\x00-\x09\x0b-\x1f\x7f-\x9f]/.test(imported), JSON.stringify(imported));
    assert.match(imported, /bootable: no: \/vmlinuz points to \\x1b\]0;owned\\x07, which/);
  }));

// A neighbour on the boot network chooses text that the timeline keeps (a Range header, a URL, a
// DHCP vendor class). JSON escapes C0 controls but not C1 ones: U+009B is CSI, U+009D OSC, which
// terminals obey (erase the screen, retitle it, set the clipboard). `node log`, `node show` and
// their --json printed them raw.
Deno.test("node CLI: log and show print a neighbour's control characters in the timeline as text (attacker)", () =>
  withServer(async (cli, ctx) => {
    const id = "ef".repeat(32);
    ctx.db.prepare(
      `INSERT INTO images (id, name, created_at, size, files, kernel, initrd, bootable)
       VALUES (?, 'img', ?, 0, 0, '/vmlinuz', '/initrd.img', 1)`,
    ).run(id, new Date().toISOString());
    mkdirSync(ctx.data.rootfs(id), { recursive: true });
    Deno.writeFileSync(join(ctx.data.rootfs(id), "vmlinuz"), new Uint8Array(64));
    const mac = "52:54:00:aa:00:23";
    ctx.nodes.add(mac, { name: "pc3", image: "img" });
    // The neighbour asks for the node's kernel (open to anyone) with a Range of its own bytes.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: serverPort(ctx) });
    const enc = new TextEncoder();
    await conn.write(
      new Uint8Array([
        ...enc.encode(`GET /boot/${mac}/kernel HTTP/1.1\r\nHost: 10.0.0.1\r\nRange: pages=1`),
        ...[0x9b, 0x32, 0x4a, 0x9d, 0x30, 0x3b, 0x6f, 0x77, 0x6e, 0x65, 0x64, 0x9c], // CSI 2J, OSC 0;owned ST
        ...enc.encode("\r\nConnection: close\r\n\r\n"),
      ]),
    );
    const answer = new TextDecoder().decode(await new Response(conn.readable).arrayBuffer());
    assert.match(answer, /^HTTP\/1\.1 200/); // a unit not ours: ignored, the whole file
    // The download goes on the timeline once the answer is sent.
    const kernelEvent = () =>
      ctx.db.prepare("SELECT detail FROM events WHERE kind = 'http.kernel'").get() as
        | { detail: string }
        | undefined;
    for (let i = 0; i < 100 && !kernelEvent(); i++) await new Promise((r) => setTimeout(r, 20));
    const stored = kernelEvent()!;
    assert.match(stored.detail, /\u009b2J/, "the timeline keeps what the neighbour sent");

    // deno-lint-ignore no-control-regex -- no control character but newlines may be left
    const raw = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;
    for (
      const args of [["log", "pc3"], ["show", "pc3"], ["log", "pc3", "--json"], [
        "show",
        "pc3",
        "--json",
      ]]
    ) {
      const out = ok(await cli("node", ...args));
      assert.ok(!raw.test(out), `node ${args.join(" ")}: ${JSON.stringify(out)}`);
      if (!args.includes("--json")) {
        assert.match(out, /http\.kernel .*pages=1\\x9b2J\\x9d0;owned\\x9c/);
      }
    }
    // --json is still the same JSON value.
    const events = ok(await cli("node", "log", "pc3", "--json")).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.equal(
      events.find((e: { kind: string }) => e.kind === "http.kernel").detail.range,
      "pages=1\x9b2J\x9d0;owned\x9c",
    );
  }));

// Another user of the server machine listens on a loopback port (8080 is free while netroot is
// stopped, restarting or on another port). Root's CLI read the 0600 token from the data dir and
// sent it with its first request, a read included: that user then held the token, and with it,
// as a local client, wrote any file as root (image cp out).
Deno.test({
  name:
    "node CLI (root): the data dir's token goes to no loopback port another user holds (attacker)",
  ignore: Deno.uid() !== 0,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nr-cli-squat-" });
    Deno.writeTextFileSync(join(dir, "token"), `${"5a".repeat(32)}\n`, { mode: 0o600 });
    const squatter = new Deno.Command("setpriv", {
      args: [
        ...pythonAsNobody,
        `import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); print(c.recv(65536).decode(errors="replace"), flush=True)
c.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n[]")`,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const lines = squatter.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      const port = Number((await lines.read()).value!.trim());
      for (const host of ["127.0.0.1", "localhost"]) {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", mainTs, "node", "ls"],
          env: { NETROOT_SERVER: `http://${host}:${port}`, NETROOT_DATA: dir, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        fails(
          { code: out.code, out: "", err: new TextDecoder().decode(out.stderr) },
          /refusing to send the API token to .*runs as uid 65534, not as the owner of the token/,
        );
      }
    } finally {
      try {
        squatter.kill();
      } catch { /* it ended: it got a request */ }
      await squatter.status;
    }
    let heard = "";
    for (let r = await lines.read(); !r.done; r = await lines.read()) heard += r.value;
    assert.doesNotMatch(heard, /authorization|5a5a/i, "what the other user's listener got");
    await Deno.remove(dir, { recursive: true });
  },
});

/** setpriv's arguments for a Python program (the next argument) run as user nobody. */
const pythonAsNobody = [
  "--reuid=nobody",
  "--regid=nogroup",
  "--clear-groups",
  "/usr/bin/python3",
  "-c",
];

/** User nobody listening on every address, IPv4 and IPv6, of a free port (as any user may while
 *  netroot is stopped or on another port): `serve` is the Python loop over the accepted
 *  connections (socket s, what it hears printed); `heard()` ends it and gives what it heard. */
async function listenAsNobody(serve: string) {
  const listener = new Deno.Command("setpriv", {
    args: [
      ...pythonAsNobody,
      `import socket, struct
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0)); s.listen(8); print(s.getsockname()[1], flush=True)
${serve}`,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = listener.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const port = Number((await lines.read()).value!.trim());
  const heard = async () => {
    listener.kill();
    await listener.status;
    let text = "";
    for (let r = await lines.read(); !r.done; r = await lines.read()) text += r.value;
    return text;
  };
  return { port, heard };
}

/** What nobody's listener answers a request (it printed the request). */
const answer =
  `print(repr(c.recv(65536)), flush=True); c.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: close\\r\\n\\r\\n[]"); c.close()`;

/** This machine's first IPv4 address other than loopback's. */
const ownAddress = () =>
  Deno.networkInterfaces().find((i) => i.family === "IPv4" && i.name !== "lo")?.address;

Deno.test({
  name:
    "node CLI (root): the data dir's token goes to no port of this machine another user holds, however the URL names it (attacker)",
  ignore: Deno.uid() !== 0,
  fn: async () => {
    // The CLI's URL names this machine by an address other than loopback's.
    const squatter = await listenAsNobody(`while True:
    c, _ = s.accept(); ${answer}`);
    const own = ownAddress();
    const hosts = ["0.0.0.0", "[::]", "[::ffff:127.0.0.1]", ...own ? [own] : []];
    try {
      for (const host of hosts) {
        const cli = new ApiClient(`http://${host}:${squatter.port}`, "5a".repeat(32), 0);
        await assert.rejects(
          cli.get("/nodes"),
          /refusing to send the API token to .*runs as uid 65534, not as the owner of the token/,
          host,
        );
      }
    } finally {
      const heard = await squatter.heard();
      assert.doesNotMatch(heard, /authorization|5a5a/i, "what the other user's listener got");
    }

    // netroot's own listener (the token file's owner) on every address still gets it.
    const server = Deno.serve(
      { hostname: "::", port: 0, onListen() {} },
      (req) => Response.json({ auth: req.headers.get("authorization") }),
    );
    try {
      for (const host of ["0.0.0.0", "[::1]", ...own ? [own] : []]) {
        const cli = new ApiClient(`http://${host}:${server.addr.port}`, "5a".repeat(32), 0);
        assert.deepEqual(await cli.get("/nodes"), { auth: `Bearer ${"5a".repeat(32)}` }, host);
      }
    } finally {
      await server.shutdown();
    }
  },
});

// The CLI connects once to learn which address of this machine its URL reaches, then sends the
// token in a second connection. nobody's listener ends the first at once, with a reset or a
// plain close, so the tables held nothing of it to look at (or the connection failed): the CLI
// took that for a server elsewhere or not there, and sent the token in the second (20 of 20).
Deno.test({
  name:
    "node CLI (root): a listener of another user that ends the CLI's first connection at once still gets no token (attacker)",
  ignore: Deno.uid() !== 0,
  fn: async () => {
    const squatter = await listenAsNobody(`n = 0
while True:
    c, _ = s.accept(); n += 1
    if n % 2:
        if n % 4 == 1: c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close(); continue
    ${answer}`);
    const own = ownAddress();
    try {
      for (const host of ["0.0.0.0", ...own ? [own] : []]) {
        for (let i = 0; i < 10; i++) {
          const cli = new ApiClient(`http://${host}:${squatter.port}`, "5a".repeat(32), 0);
          await assert.rejects(
            cli.get("/nodes"),
            /refusing to send the API token to .*runs as uid 65534|cannot reach the netroot server/,
            host,
          );
        }
      }
    } finally {
      const heard = await squatter.heard();
      assert.doesNotMatch(heard, /authorization|5a5a/i, "what the other user's listener got");
    }
  },
});

Deno.test("node CLI: log shows a copy's progress as one readable line; --follow on a terminal rewrites it", () =>
  withServer(async (cli, ctx) => {
    const mac = "52:54:00:aa:00:40";
    ctx.nodes.add(mac, { name: "copier" });
    const progress = (pct: number) =>
      recordProgress(ctx.db, mac, "init.hybrid-copy", {
        image: "ab".repeat(32),
        done: pct * 4e6,
        total: 400e6,
        rate: 20e6,
      });
    recordEvent(ctx.db, mac, "init.hybrid-detect", { ms: 12, ok: true });
    progress(10);
    progress(25); // replaces the 10 % row
    const log = ok(await cli("node", "log", "copier"));
    assert.match(log, /Z {2}init\.hybrid-copy 25% \(100\.0\/400\.0 MB, 20\.0 MB\/s, ETA 15 s\)\n/);
    assert.doesNotMatch(log, /10%|"done"/);

    // --follow on a terminal (a pty from script(1)): the next progress rewrites the line.
    const child = new Deno.Command("script", {
      args: [
        "-qfec",
        `'${Deno.execPath()}' run -A '${mainTs}' node log copier --follow`,
        "/dev/null",
      ],
      env: { NETROOT_SERVER: `http://127.0.0.1:${serverPort(ctx)}`, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    const until = async (text: string) => {
      const deadline = Date.now() + 15_000;
      while (!seen.includes(text) && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      assert.ok(seen.includes(text), `printed ${JSON.stringify(seen)}`);
    };
    try {
      await until("25% (");
      progress(50);
      await until("50% (");
      // Cursor up over the old line's rows, erase, then the new line in its place.
      // deno-lint-ignore no-control-regex -- the terminal's escape sequences are the point
      assert.match(seen, /25% \([^\n]*\n\x1b\[\d+A\r\x1b\[0J\S+Z {2}init\.hybrid-copy 50% \(/);
      recordEvent(ctx.db, mac, "init.hybrid-ready", { ok: true });
      await until("init.hybrid-ready");
      // A new event gets a line of its own.
      // deno-lint-ignore no-control-regex -- the terminal's escape sequences are the point
      assert.doesNotMatch(seen, /50% \([^\n]*\n\x1b\[\d+A/);
    } finally {
      child.kill("SIGTERM");
      await child.status;
      await reader.cancel().catch(() => {});
    }
  }));

Deno.test("node ls marks the nodes the DHCP service registered on its own (a look-alike MAC's squat shows)", () =>
  withServer(async (cli, ctx) => {
    ctx.nodes.register("02:00:00:11:22:33", { via: "dhcp" }); // a neighbour, first
    ctx.nodes.register("b8:ac:6f:11:22:33", { via: "dhcp" }); // the real machine
    ctx.nodes.add("52:54:00:aa:00:09", { name: "by-hand" });
    const lines = ok(await cli("node", "ls")).split("\n");
    assert.match(lines[0], /^NAME\s+MAC\s+IP\s+IMAGE\s+STATE\s+MODEL\s+VIRTUAL\s+ADDED BY\s+LAST/);
    const at = lines[0].indexOf("ADDED BY");
    const addedBy = (name: string) =>
      lines.find((l) => l.startsWith(`${name} `))?.slice(at).split(/\s+/)[0];
    assert.equal(addedBy("node-112233"), "dhcp");
    assert.equal(addedBy("node-112233-2"), "dhcp");
    assert.equal(addedBy("by-hand"), "admin");
    const list = JSON.parse(ok(await cli("node", "ls", "--json"))) as NodeInfo[];
    assert.deepEqual(list.map((n) => [n.name, n.autoRegistered]), [
      ["by-hand", false],
      ["node-112233", true],
      ["node-112233-2", true],
    ]);
    assert.match(ok(await cli("node", "ls", "--help")), /ADDED BY is "dhcp" for a node/);
  }));

// A typo in an option: node:util's message ("Unknown option '--jsn'. To specify a positional
// argument starting with a '-', place it at the end of the command after '--', as in '-- "--jsn")
// spoke of positionals and said nothing of where the options are listed.
Deno.test("a mistyped option: one line naming it and the command's --help", async () => {
  for (
    const [args, help] of [
      [["image", "ls", "--jsn"], "netroot image ls --help"],
      [["node", "boot", "n1", "img", "--forse"], "netroot node boot --help"],
      [["serve", "--dhcp-rang", "10.0.0.1-10.0.0.9"], "netroot serve --help"],
      [["deploy", "n1", "img", "--forse"], "netroot deploy --help"],
    ]
  ) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", mainTs, ...args],
      env: { NETROOT_SERVER: "http://127.0.0.1:9", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, err);
    const typo = args.at(-1)!.startsWith("-") ? args.at(-1)! : args.at(-2)!;
    assert.equal(
      err,
      `netroot ${args[0]}: unknown option ${typo} (${help} lists the options)\n`,
    );
  }
});

// `node shell` on a node that never booted: the server has no ssh key yet (it makes one for a
// node's first boot), and the CLI, reading the key before asking about the node, told root on the
// server to "run this as root on the server", never that the node was off.
Deno.test("node shell on a node that is off: it says so, not that the server's ssh key is missing", () =>
  withServer(async (cli) => {
    assert.equal((await cli("node", "add", "52:54:00:00:0a:01", "--name", "p1")).code, 0);
    const r = await cli("node", "shell", "p1");
    assert.equal(r.code, 1, r.err);
    assert.equal(
      r.err,
      "netroot node: cannot reach p1 over ssh: the node's address is unknown (it is off)\n",
    );
  }));

// "virtual node p1 (p1 is not a virtual node) not found": a node that exists, called not found.
Deno.test("vnode rm of a physical node: it says the node is not virtual and how a node is removed", () =>
  withServer(async (cli, ctx) => {
    ctx.vnodes = new VnodeManager(ctx, undefined); // the vnode API up, no bridge: no qemu here
    assert.equal((await cli("node", "add", "52:54:00:00:0a:02", "--name", "p2")).code, 0);
    const r = await cli("vnode", "rm", "p2");
    assert.equal(r.code, 1, r.err);
    assert.equal(
      r.err,
      "netroot vnode: p2 is not a virtual node (netroot node forget p2 removes a node)\n",
    );
  }));
