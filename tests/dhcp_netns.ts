// Test harness (root): two network namespaces joined by a veth pair — the server side holds the
// address, the client side runs real DHCP clients — and a netroot server started inside the
// server namespace through tests/dhcp_driver.ts. Everything started here is stopped by PID.
import type { ServerConfig } from "../src/config.ts";

const here = new URL(".", import.meta.url).pathname;
let counter = 0;

export async function sh(cmd: string[], opts: { ok?: boolean } = {}): Promise<string> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if ((opts.ok ?? true) && !out.success) throw new Error(`${cmd.join(" ")} failed: ${text}`);
  return text;
}

export interface Link {
  /** Server namespace and its interface. */
  srvNs: string;
  srvIf: string;
  /** Client namespace and its interface. */
  cliNs: string;
  cliIf: string;
  /** First three octets, e.g. "10.81.3". */
  net: string;
  inSrv(cmd: string[]): string[];
  inCli(cmd: string[]): string[];
  close(): Promise<void>;
}

/** A fresh pair of namespaces; `net` must be unique per test file (e.g. "10.81.1"); the server
 *  side gets `${net}.1/${prefixLen}`. */
export async function makeLink(tag: string, net: string, prefixLen = 24): Promise<Link> {
  const id = `${Deno.pid}-${counter++}`;
  const srvNs = `nr-${tag}-s-${id}`, cliNs = `nr-${tag}-c-${id}`;
  const srvIf = "veth-srv", cliIf = "veth-cli";
  const link: Link = {
    srvNs,
    srvIf,
    cliNs,
    cliIf,
    net,
    inSrv: (c) => ["ip", "netns", "exec", srvNs, ...c],
    inCli: (c) => ["ip", "netns", "exec", cliNs, ...c],
    async close() {
      await sh(["ip", "netns", "del", srvNs], { ok: false });
      await sh(["ip", "netns", "del", cliNs], { ok: false });
    },
  };
  try {
    await sh(["ip", "netns", "add", srvNs]);
    await sh(["ip", "netns", "add", cliNs]);
    await sh(["ip", "-n", srvNs, "link", "add", srvIf, "type", "veth", "peer", "name", cliIf]);
    await sh(["ip", "-n", srvNs, "link", "set", cliIf, "netns", cliNs]);
    await sh(["ip", "-n", srvNs, "addr", "add", `${net}.1/${prefixLen}`, "dev", srvIf]);
    for (const [ns, ifc] of [[srvNs, srvIf], [cliNs, cliIf]]) {
      await sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
      await sh(["ip", "-n", ns, "link", "set", ifc, "up"]);
    }
    return link;
  } catch (e) {
    await link.close();
    throw e;
  }
}

export interface Driven {
  http: { host: string; port: number };
  dataDir: string;
  /** Stops the server (SIGTERM, then waits) and returns its stderr (the log). */
  stop(): Promise<string>;
}

/** Runs `netroot serve` (via serve() in src/server.ts) inside the server namespace. */
export async function startServer(link: Link, cfg: Partial<ServerConfig>): Promise<Driven> {
  const dataDir = await Deno.makeTempDir({ prefix: "nr-dhcp-" });
  const config = { dataDir, interface: link.srvIf, http: { host: "0.0.0.0", port: 0 }, ...cfg };
  const child = new Deno.Command("ip", {
    args: link.inSrv([
      Deno.execPath(),
      "run",
      "-A",
      `${here}dhcp_driver.ts`,
      JSON.stringify(config),
    ]).slice(1),
    stdout: "piped",
    stderr: "piped",
    env: { NETROOT_LOG: "debug", NO_COLOR: "1" },
  }).spawn();
  const errText = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`server exited before ready:\n${await errText}`);
      buf += value;
      const line = buf.split("\n").find((l) => l.startsWith("READY "));
      if (line) {
        const http = JSON.parse(line.slice(6));
        reader.releaseLock();
        child.stdout.cancel().catch(() => {});
        return {
          http,
          dataDir,
          async stop() {
            try {
              child.kill("SIGTERM");
            } catch { /* already gone */ }
            await child.status;
            return await errText;
          },
        };
      }
    }
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** A udhcpc hook script that saves the environment of each call to `<dir>/<action>.env`. */
export async function udhcpcScript(dir: string): Promise<string> {
  const path = `${dir}/udhcpc-hook.sh`;
  await Deno.writeTextFile(path, `#!/bin/sh\nenv > "${dir}/$1.env"\n`, { mode: 0o755 });
  return path;
}

export function parseEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}
