// Test harness (root): two network namespaces joined by a veth pair — the server side holds the
// address, the client side runs real DHCP clients — and a netroot server started inside the
// server namespace through tests/dhcp_driver.ts. Everything started here is stopped by PID.
import { DatabaseSync } from "node:sqlite";
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
  /** Removed by close() (server data dirs). */
  tempDirs: string[];
  close(): Promise<void>;
}

async function removeDirs(dirs: string[]): Promise<void> {
  for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
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
    tempDirs: [],
    async close() {
      await sh(["ip", "netns", "del", srvNs], { ok: false });
      await sh(["ip", "netns", "del", cliNs], { ok: false });
      await removeDirs(link.tempDirs);
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

/** A partial config: tests/dhcp_driver.ts merges it (and its dhcp part) over the defaults. */
export type DriverConfig = Partial<Omit<ServerConfig, "dhcp">> & {
  dhcp?: Partial<ServerConfig["dhcp"]>;
};

/** Runs `netroot serve` (via serve() in src/server.ts) inside the server namespace; in a fresh
 *  data dir unless `cfg.dataDir` names one. */
export async function startServer(link: Link, cfg: DriverConfig): Promise<Driven> {
  const dataDir = cfg.dataDir ?? await Deno.makeTempDir({ prefix: "nr-dhcp-" });
  if (!cfg.dataDir) link.tempDirs.push(dataDir);
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

/** A boot LAN for VMs: namespace `srvNs` with bridge br0 (`${net}.1/24`, fd<x>::1/64) and tap0 on
 *  it for qemu; with `labDhcp`, a second namespace on the bridge (veth, `${net}.3`) runs dnsmasq
 *  as the lab's own DHCP server (addresses `${net}.100-150`, gateway itself). */
export async function bootLan(
  tag: string,
  net: string,
  opts: { labDhcp?: boolean } = {},
): Promise<Link & { dnsmasqLeases?: string }> {
  const id = `${Deno.pid}-${counter++}`;
  const ns = `nr-${tag}-${id}`, lab = `nr-${tag}-d-${id}`;
  const dir = opts.labDhcp ? await Deno.makeTempDir({ prefix: "nr-labdhcp-" }) : undefined;
  let dnsmasqPid = 0;
  const link: Link & { dnsmasqLeases?: string } = {
    srvNs: ns,
    srvIf: "br0",
    cliNs: ns,
    cliIf: "tap0",
    net,
    inSrv: (c) => ["ip", "netns", "exec", ns, ...c],
    inCli: (c) => ["ip", "netns", "exec", ns, ...c],
    dnsmasqLeases: dir && `${dir}/leases`,
    tempDirs: [],
    async close() {
      await removeDirs(link.tempDirs);
      if (dnsmasqPid) {
        try {
          Deno.kill(dnsmasqPid, "SIGTERM");
        } catch { /* gone */ }
      }
      await sh(["ip", "netns", "del", ns], { ok: false });
      if (dir) {
        await sh(["ip", "netns", "del", lab], { ok: false });
        await Deno.remove(dir, { recursive: true });
      }
    },
  };
  try {
    const n = (...a: string[]) => sh(["ip", "-n", ns, ...a]);
    await sh(["ip", "netns", "add", ns]);
    await n("link", "set", "lo", "up");
    await n("link", "add", "br0", "type", "bridge");
    await n("tuntap", "add", "dev", "tap0", "mode", "tap");
    await n("link", "set", "tap0", "master", "br0");
    await n("addr", "add", `${net}.1/24`, "dev", "br0");
    await n("-6", "addr", "add", `fd${net.split(".")[1]}::1/64`, "dev", "br0", "nodad");
    await n("link", "set", "tap0", "up");
    await n("link", "set", "br0", "up");
    if (dir) {
      await sh(["ip", "netns", "add", lab]);
      await n("link", "add", "vb", "type", "veth", "peer", "name", "vd");
      await n("link", "set", "vd", "netns", lab);
      await n("link", "set", "vb", "master", "br0");
      await n("link", "set", "vb", "up");
      await sh(["ip", "-n", lab, "addr", "add", `${net}.3/24`, "dev", "vd"]);
      await sh(["ip", "-n", lab, "link", "set", "vd", "up"]);
      await Deno.writeTextFile(
        `${dir}/dnsmasq.conf`,
        [
          "port=0",
          "user=root",
          "interface=vd",
          "bind-interfaces",
          `dhcp-range=${net}.100,${net}.150,255.255.255.0,1h`,
          `dhcp-leasefile=${dir}/leases`,
          `pid-file=${dir}/dnsmasq.pid`,
          "no-ping",
        ].join("\n") + "\n",
      );
      await sh(["ip", "netns", "exec", lab, "dnsmasq", "-C", `${dir}/dnsmasq.conf`]);
      dnsmasqPid = Number(await Deno.readTextFile(`${dir}/dnsmasq.pid`));
    }
    return link;
  } catch (e) {
    await link.close();
    throw e;
  }
}

/** Boots qemu on tap0 until the server records the node's fetch of its iPXE script (the
 *  per-node URL it can only have learned from our DHCP); returns the seconds it took. */
export async function bootUntilScript(
  link: Link,
  dataDir: string,
  mac: string,
  extraQemu: string[] = [],
  nic = `virtio-net-pci,netdev=n0,mac=${mac}`,
): Promise<number> {
  const qemu = new Deno.Command("ip", {
    args: link.inSrv([
      "timeout",
      "150",
      "qemu-system-x86_64",
      "-accel",
      "tcg",
      "-m",
      "256",
      "-display",
      "none",
      "-monitor",
      "none",
      "-serial",
      "none",
      "-boot",
      "n",
      "-no-reboot",
      ...extraQemu,
      "-netdev",
      "tap,id=n0,ifname=tap0,script=no,downscript=no",
      "-device",
      nic,
    ]).slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const t0 = performance.now();
  const db = new DatabaseSync(`${dataDir}/netroot.db`, { readOnly: true });
  try {
    const q = db.prepare(
      "SELECT kind FROM events WHERE mac = ? AND kind IN ('http.script', 'http.refused')",
    );
    while (performance.now() - t0 < 140_000) {
      if (q.get(mac)) return (performance.now() - t0) / 1000;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error("the VM never fetched its iPXE script");
  } finally {
    db.close();
    try {
      qemu.kill("SIGKILL");
    } catch { /* exited */ }
    await qemu.status;
  }
}

export function dhcpEvents(
  dataDir: string,
  mac: string,
): { kind: string; detail: Record<string, unknown> }[] {
  const db = new DatabaseSync(`${dataDir}/netroot.db`, { readOnly: true });
  try {
    return (db.prepare(
      "SELECT kind, detail FROM events WHERE mac = ? AND (kind LIKE 'dhcp.%' OR kind LIKE 'tftp.%') ORDER BY id",
    ).all(mac) as { kind: string; detail: string }[]).map((e) => ({
      kind: e.kind,
      detail: JSON.parse(e.detail),
    }));
  } finally {
    db.close();
  }
}
