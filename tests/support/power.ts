// Shared by the power driver tests: a real server context on a temp data dir with its API on a
// loopback port, the CLI as a child process, and small process helpers.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { defaultConfig } from "../../src/config.ts";
import type { Context } from "../../src/context.ts";
import { buildApp, openContext } from "../../src/server.ts";

const mainTs = fileURLToPath(new URL("../../main.ts", import.meta.url));

export interface Reply {
  status: number;
  json: Record<string, unknown>;
}

export interface PowerServer {
  ctx: Context;
  dir: string;
  /** The server's base URL (http://127.0.0.1:PORT). */
  url: string;
  call(method: string, path: string, body?: unknown): Promise<Reply>;
  /** `netroot ARGS…` against this server: exit code, stdout, stderr. */
  cli(...args: string[]): Promise<{ code: number; out: string; err: string }>;
}

export async function withPowerServer(fn: (s: PowerServer) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nr-power-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    buildApp(ctx).fetch,
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  try {
    await fn({
      ctx,
      dir,
      url,
      async call(method, path, body) {
        const res = await fetch(`${url}/api/v1${path}`, {
          method,
          headers: { authorization: `Bearer ${ctx.token}` },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: res.status, json: await res.json() };
      },
      async cli(...args) {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", mainTs, ...args],
          env: { NETROOT_SERVER: url, NETROOT_DATA: dir, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const dec = new TextDecoder();
        return { code: out.code, out: dec.decode(out.stdout), err: dec.decode(out.stderr) };
      },
    });
  } finally {
    await server.shutdown();
    ctx.db.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A UDP port free on 127.0.0.1 right now. */
export function freeUdpPort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

/** A TCP port free on 127.0.0.1 right now. */
export function freeTcpPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 100 ms until true; fails the test with `what` after `ms`. */
export async function waitFor(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** True while `pid` runs (a zombie has ended). */
export function pidAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^ [ZX] /.test(stat.slice(stat.lastIndexOf(")") + 1));
  } catch {
    return false;
  }
}

/** The live process whose pid `pidFile` holds, or undefined. */
export function livePid(pidFile: string): number | undefined {
  let pid: number;
  try {
    pid = Number(Deno.readTextFileSync(pidFile).trim());
  } catch {
    return undefined;
  }
  return pid > 1 && pidAlive(pid) ? pid : undefined;
}

/** Ends the process `pidFile` names (a test's own child left behind), by PID. */
export async function killPidFile(pidFile: string): Promise<void> {
  const pid = livePid(pidFile);
  if (pid === undefined) return;
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
  await waitFor(`pid ${pid} to end`, () => livePid(pidFile) === undefined, 5000).catch(() => {});
}

/** qemu as a "node": no disk, no display, CPU stopped (-S) — a real VM process that is cheap. */
export const nodeQemu = (pidFile: string) =>
  `qemu-system-x86_64 -nodefaults -display none -S -m 32 -name netroot-power-test -pidfile ${pidFile}`;
