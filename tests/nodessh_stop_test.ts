// A node's sshd decides when the server's ssh to it ends: one that takes `reboot` (or a `node run`
// command) and never closes the session keeps that ssh until its deadline (the soft timeout, up to
// an hour; the run's, up to a day). The server's stop must not wait for it, nor leave it behind.
import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { setLogSink } from "../src/log.ts";
import type { RunResult } from "../src/noderun.ts";
import { serve } from "../src/server.ts";
import { addImage } from "./support/images.ts";
import { waitFor } from "./support/power.ts";
import { startSshd } from "./support/sshd.ts";

/** The pids of the ssh clients (under `nice`) whose argv names `port`. */
function sshTo(port: number): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const argv = Deno.readTextFileSync(`/proc/${e.name}/cmdline`).split("\0");
      if (argv[0] === "ssh" && argv.includes("HostKeyAlias=hung") && argv.includes(String(port))) {
        pids.push(Number(e.name));
      }
    } catch { /* gone */ }
  }
  return pids;
}

Deno.test("the server's stop ends the ssh that a node holds open (a `reboot` taken and never answered, a `node run`): at once, none left", async () => {
  setLogSink(() => {});
  const dir = await Deno.makeTempDir({ prefix: "nr-sshstop-" });
  const server = await serve({
    ...defaultConfig(),
    dataDir: dir,
    http: { host: "127.0.0.1", port: 0 },
  });
  const { ctx } = server;
  const sshd = await startSshd(ctx.ssh.key.publicKey(), {
    hangOnReboot: true,
    addresses: ["127.0.0.31"],
  });
  let closed = false;
  try {
    const image = addImage(ctx, "img-hung");
    const etc = join(ctx.data.rootfs(image), "etc/ssh");
    Deno.mkdirSync(etc, { recursive: true });
    Deno.writeTextFileSync(join(etc, "ssh_host_ed25519_key.pub"), `${sshd.hostKey} root@image\n`);
    const mac = "02:00:00:00:31:01";
    ctx.nodes.add(mac, { name: "hung" });
    ctx.nodes.configure("hung", {
      "boot.probe-port": String(sshd.port),
      "reboot.soft-timeout": "600",
    });
    ctx.nodes.setIp(mac, "127.0.0.31"); // as a lease would (the ip setting refuses loopback)
    await ctx.nodes.deploy(["hung"], "img-hung", { reboot: false });
    ctx.nodes.setState(mac, "booted", `port ${sshd.port} answered`);
    ctx.rebooter.register({ name: "hard", handles: () => true, reboot: () => Promise.resolve() });

    const url = `http://127.0.0.1:${server.http.port}/api/v1`;
    const post = (path: string, body: unknown) =>
      fetch(`${url}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${ctx.token}` },
        body: JSON.stringify(body),
      }).then((r) => r.json());
    const reboot = await post("/nodes/hung/reboot", { cause: "test" });
    assert.equal(reboot.mechanism, "ssh");
    const run = post("/nodes/run", {
      nodes: ["hung"],
      command: `echo $$ >> ${sshd.hung}; exec sleep 600`,
      timeout: 30,
    });
    const hung = () => Deno.readTextFileSync(sshd.hung).trim().split("\n").length;
    await waitFor("the reboot and the command taken, neither answered", () => {
      try {
        return hung() === 2;
      } catch {
        return false;
      }
    });
    assert.equal(sshTo(sshd.port).length, 2);

    const t0 = performance.now();
    await server.close();
    closed = true;
    const ms = performance.now() - t0;
    assert.ok(ms < 5000, `the stop waited ${Math.round(ms)} ms for the node's ssh`);
    const [r] = await run as RunResult[];
    assert.equal(r.code, null);
    assert.match(r.error!, /the server stops/);
    await waitFor("no ssh left", () => sshTo(sshd.port).length === 0, 2000);
  } finally {
    if (!closed) await server.close();
    for (const pid of sshTo(sshd.port)) Deno.kill(pid, "SIGKILL");
    await sshd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
