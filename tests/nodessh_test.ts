// Clean reboots and `node run` against real OpenSSH sshds on loopback (tests/support/sshd.ts), each
// standing in for one node's: the server's own key (made with ssh-keygen in its data dir), host
// keys pinned from the node's image tree, `node run` through the API and the CLI with output and
// exit status per node, a soft reboot that runs `reboot` on the node and sees it go down (no
// hard reset), and the clear fall-backs: no sshd → hard at once, a wrong host key → refused, an
// image without host keys → hard, never an unauthenticated ssh.
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Context } from "../src/context.ts";
import { listEvents } from "../src/events.ts";
import { setLogSink } from "../src/log.ts";
import type { RunResult } from "../src/noderun.ts";
import { hostKeyAlias, sshFailure } from "../src/nodessh.ts";
import { freeTcpPort, type PowerServer, waitFor, withPowerServer } from "./support/power.ts";
import { addImage } from "./support/images.ts";
import { type FakeNodeSshd, startSshd } from "./support/sshd.ts";
import { onTerminal } from "./support/terminal.ts";

const mainTs = fileURLToPath(new URL("../main.ts", import.meta.url));

/** A node at 127.0.0.1 whose sshd is `sshd`, booted, deployed an image holding `hostKey`. */
function addNode(
  ctx: Context,
  name: string,
  mac: string,
  ip: string,
  port: number,
  hostKey?: string,
) {
  const image = addImage(ctx, `img-${name}`);
  if (hostKey) {
    const etc = join(ctx.data.rootfs(image), "etc/ssh");
    Deno.mkdirSync(etc, { recursive: true });
    Deno.writeTextFileSync(join(etc, "ssh_host_ed25519_key.pub"), `${hostKey} root@image\n`);
  }
  ctx.nodes.add(mac, { name });
  ctx.nodes.configure(name, { "boot.probe-port": String(port), "reboot.soft-timeout": "20" });
  ctx.nodes.setIp(mac, ip); // as a lease would (the ip setting refuses loopback)
  return ctx.nodes.deploy([name], `img-${name}`, { reboot: false }).then(() =>
    ctx.nodes.setState(mac, "booted", `port ${port} answered`)
  );
}

async function withNodes(
  fn: (s: PowerServer, a: FakeNodeSshd, b: FakeNodeSshd) => Promise<void>,
): Promise<void> {
  setLogSink(() => {});
  await withPowerServer(async (s) => {
    const key = s.ctx.ssh.key.publicKey();
    assert.match(key, /^ssh-ed25519 AAAA\S+ netroot@/);
    const st = Deno.statSync(s.ctx.ssh.key.privateKey);
    assert.equal(st.mode! & 0o777, 0o600, "private key 0600");
    assert.equal(Deno.statSync(join(s.dir, "ssh")).mode! & 0o777, 0o700);
    const a = await startSshd(key, {
      nodeId: "A",
      dieOnReboot: true,
      addresses: ["127.0.0.11", "127.0.0.13", "127.0.0.14"],
    });
    const b = await startSshd(key, { nodeId: "B", addresses: ["127.0.0.12"] });
    try {
      await addNode(s.ctx, "na", "02:00:00:00:77:01", "127.0.0.11", a.port, a.hostKey);
      await addNode(s.ctx, "nb", "02:00:00:00:77:02", "127.0.0.12", b.port, b.hostKey);
      await fn(s, a, b);
      await s.ctx.rebooter.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });
}

Deno.test("sshFailure: the last line ssh said, at most 300 characters (the node writes it)", () => {
  assert.equal(
    sshFailure({
      code: 255,
      stdout: "",
      stderr: "Warning: x\nssh: connect: Connection refused\n\n",
    }),
    "ssh: connect: Connection refused",
  );
  assert.equal(sshFailure({ code: 255, stdout: "", stderr: "" }), "ssh exited 255");
  const long = sshFailure({ code: 255, stdout: "", stderr: `${"x".repeat(65536)}\n` });
  assert.equal(long, "x".repeat(300) + "…");
});

Deno.test("node run: each node's output and exit status, in parallel, over real sshds", () =>
  withNodes(async ({ call, cli }) => {
    const r = await call("POST", "/nodes/run", {
      nodes: ["na", "nb"],
      command: 'echo "hello from $NODE_ID"; echo oops >&2; [ "$NODE_ID" = A ] || exit 3',
    });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    const [ra, rb] = r.json as unknown as RunResult[];
    assert.deepEqual([ra.name, ra.code, ra.stdout, ra.stderr], [
      "na",
      0,
      "hello from A\n",
      "oops\n",
    ]);
    assert.deepEqual([rb.name, rb.code, rb.stdout], ["nb", 3, "hello from B\n"]);

    const out = await cli("node", "run", "na,nb", "--", "echo", "up:", "$NODE_ID;", "exit", "0");
    assert.equal(out.code, 0, out.err);
    assert.deepEqual(out.out.trim().split("\n").sort(), ["na | up: A", "nb | up: B"]);
    const bad = await cli("node", "run", "na,nb", "--", "test $NODE_ID = A");
    assert.equal(bad.code, 1, "one node failed: exit 1");
    assert.match(bad.err, /^nb: exit status 1$/m);
    const json = await cli("node", "run", "nb", "--json", "--", "echo hi");
    assert.equal(JSON.parse(json.out)[0].stdout, "hi\n");
  }));

// What a node prints is the node's (a hostile image, a compromised node): `node run` wrote it raw
// to the admin's terminal, where OSC 52 sets the clipboard, OSC 0 the title, a CSI clears the
// screen or moves the cursor over lines already printed. On a terminal now: colours pass (each
// coloured line reset at its end, so SGR 8 hides no line after it), the rest is shown as \xNN, in
// stdout and stderr. To a pipe or a file: the command's bytes as they are.
Deno.test("node run: on a terminal a node's colours pass and its other escapes are shown; piped, its bytes", () =>
  withNodes(async ({ cli, dir, url }) => {
    const command = [
      String.raw`printf '\033[1;31mred\033[0m \033]52;c;Y3VybCB4fHNo\007\033[2J\033[8mhid\n'`,
      String.raw`printf '\033]0;owned\007err\r\n' >&2`,
    ].join("; ");
    const term = await onTerminal(["node", "run", "na", "--", command], {
      NETROOT_SERVER: url,
      NETROOT_DATA: dir,
    });
    assert.equal(term.code, 0, term.out);
    assert.equal(
      term.out,
      "na | \x1b[1;31mred\x1b[0m \\x1b]52;c;Y3VybCB4fHNo\\x07\\x1b[2J\x1b[8mhid\x1b[0m\r\n" +
        "na | \\x1b]0;owned\\x07err\r\n",
    );
    const piped = await cli("node", "run", "na", "--", command);
    assert.equal(piped.code, 0, piped.err);
    assert.equal(
      piped.out,
      "na | \x1b[1;31mred\x1b[0m \x1b]52;c;Y3VybCB4fHNo\x07\x1b[2J\x1b[8mhid\n",
    );
    assert.equal(piped.err, "na | \x1b]0;owned\x07err\r\n");
  }));

Deno.test("node shell: ssh run by the CLI with the data dir's key; a clear error without it", () =>
  withNodes(async ({ dir, url }) => {
    const shell = async (data: string) => {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", mainTs, "node", "shell", "na"],
        env: { NETROOT_SERVER: url, NETROOT_DATA: data, NO_COLOR: "1" },
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode('echo "shell on $NODE_ID"; exit 7\n'));
      await w.close();
      const out = await child.output();
      const dec = new TextDecoder();
      return { code: out.code, out: dec.decode(out.stdout), err: dec.decode(out.stderr) };
    };
    const ok = await shell(dir);
    assert.equal(ok.code, 7, ok.err);
    assert.match(ok.out, /^shell on A$/m);
    const none = await shell(join(dir, "elsewhere"));
    assert.equal(none.code, 1);
    assert.match(none.err, /cannot read the server's ssh key .*elsewhere\/ssh\/id_ed25519/);
  }));

Deno.test("node run: a host key other than the image's is refused; no host keys: no ssh at all", () =>
  withNodes(async ({ ctx, call }, a, b) => {
    // nc points at A's sshd but its image holds B's host key: an impostor at the node's address.
    await addNode(ctx, "nc", "02:00:00:00:77:03", "127.0.0.13", a.port, b.hostKey);
    await addNode(ctx, "nd", "02:00:00:00:77:04", "127.0.0.14", a.port); // an image without /etc/ssh keys
    const r = await call("POST", "/nodes/run", { nodes: ["nc", "nd"], command: "echo ran" });
    const [rc, rd] = r.json as unknown as RunResult[];
    assert.equal(rc.code, null);
    assert.match(rc.error!, /Host key verification failed/);
    assert.equal(rc.stdout, "");
    assert.equal(rd.code, null);
    assert.match(rd.error!, /no ssh host keys .*cannot be authenticated/);
    const known = Deno.readTextFileSync(ctx.ssh.key.knownHosts);
    assert.equal(known, `nc ${b.hostKey}\n`, "pinned under the node's name: its image's key only");
  }));

Deno.test("node run: the pins of a node named NA are not taken for na (ssh matches names without case)", () =>
  withNodes(async ({ ctx, call }, a, b) => {
    // NA's image holds B's host key, and NA answers at A's sshd: an impostor at NA's address
    // that holds na's image (A's key). With na's pins under `na`, ssh took them for `NA`.
    await addNode(ctx, "NA", "02:00:00:00:77:05", "127.0.0.13", a.port, b.hostKey);
    const first = await call("POST", "/nodes/run", { nodes: ["na"], command: "echo $NODE_ID" });
    assert.equal((first.json as unknown as RunResult[])[0].stdout, "A\n", "na's pins written");
    const r = await call("POST", "/nodes/run", { nodes: ["NA"], command: "echo $NODE_ID" });
    const [ra] = r.json as unknown as RunResult[];
    assert.equal(ra.code, null, "NA's command did not run on the impostor");
    assert.match(ra.error!, /Host key verification failed/);
    assert.equal(hostKeyAlias("NA"), "_n_a");
    assert.notEqual(hostKeyAlias("Lab-1"), hostKeyAlias("lab-1"));
  }));

Deno.test("soft reboot: `reboot` runs on the node over ssh; it goes down; no hard reset", () =>
  withNodes(async ({ ctx, call }, a) => {
    const hard: string[] = [];
    ctx.rebooter.register({
      name: "fake-power",
      handles: () => true,
      reboot: (n) => (hard.push(n.name), Promise.resolve()),
    });
    const t0 = performance.now();
    const r = await call("POST", "/nodes/na/reboot", { cause: "test" });
    assert.ok(performance.now() - t0 < 5000);
    assert.equal(r.json.mechanism, "ssh");
    assert.match(
      String(r.json.message),
      /clean reboot requested \(ssh\); hard reboot if not down within 20 s/,
    );
    await waitFor("reboot on the node", () => a.reboots() === 1);
    await waitFor("sshd stopped by the reboot", () => !a.running());
    await ctx.rebooter.settled();
    const events = listEvents(ctx.db, { mac: "02:00:00:00:77:01" });
    const done = events.find((e) => e.kind === "reboot");
    assert.equal(done?.detail.mechanism, "ssh", JSON.stringify(events.map((e) => e.detail)));
    assert.equal(done?.detail.cause, "test");
    assert.ok(events.some((e) => e.kind === "reboot.requested" && e.detail.mechanism === "ssh"));
    assert.deepEqual(hard, [], "not escalated");
    // Down, its next boot is watched as a hard reboot's.
    assert.match(ctx.nodes.get("na").stateReason ?? "", /^clean reboot \(ssh\): down/);
    assert.equal(ctx.nodes.get("na").state, "booting");

    // Taken for booted again with its port closed (an image without sshd): straight to hard, and
    // the event says why.
    ctx.nodes.setState("02:00:00:00:77:01", "booted", "port 22 answered");
    await call("POST", "/nodes/na/reboot", { cause: "again" });
    await ctx.rebooter.settled();
    assert.deepEqual(hard, ["na"]);
    const esc = listEvents(ctx.db, { mac: "02:00:00:00:77:01" }).filter((e) => e.kind === "reboot")
      .pop()!;
    assert.equal(esc.detail.mechanism, "fake-power");
    assert.match(String(esc.detail.soft), /^ssh failed: .*Connection refused/);

    // --hard: no soft step at all.
    const h = await call("POST", "/nodes/nb/reboot", { hard: true });
    assert.equal(h.json.mechanism, "fake-power");
    assert.deepEqual(hard, ["na", "nb"]);
  }));

// `node run` on a node powered off: ssh's "connect to host … Connection timed out" (after 10 s on
// a real network), prefixed "ssh: ssh:", and nothing said of what netroot knew: the node is off.
Deno.test("node run on a node netroot knows is off: the error says so, ssh's own line once", () =>
  withNodes(async ({ ctx, cli }) => {
    const closed = freeTcpPort(); // nothing listens there: the node's sshd is gone
    ctx.nodes.configure("nb", { "boot.probe-port": String(closed) });
    ctx.nodes.setState("02:00:00:00:77:02", "off", "vnode stopped: power off");
    const r = await cli("node", "run", "nb", "--", "true");
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /^nb: ssh: connect to host 127\.0\.0\.12 port \d+: Connection refused \(nb is off: vnode stopped: power off\)$/m,
    );
  }));
