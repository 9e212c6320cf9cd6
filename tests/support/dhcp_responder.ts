// The DHCP responder with a real Context (SQLite state, node registry), no sockets: full mode on
// a /24 by default, `cfg` over it; the context and its data dir go when `fn` is done. Who answers
// at a declined address: nobody unless `whoAnswers` says.
import { defaultConfig } from "../../src/config.ts";
import { closeContext, openContext } from "../../src/server.ts";
import type { Context } from "../../src/context.ts";
import { DhcpResponder, type ResponderConfig } from "../../netboot/dhcp4/server.ts";
import { contextBooter } from "../../src/boot/booter.ts";

export async function withResponder(
  cfg: Partial<ResponderConfig>,
  fn: (r: DhcpResponder, ctx: Context) => void | Promise<void>,
  clock?: () => number,
  whoAnswers?: (ip: string) => Promise<string[]>,
) {
  const dir = await Deno.makeTempDir({ prefix: "nr-dhcpr-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  try {
    const r = new DhcpResponder(
      {
        mode: "full",
        serverIp: "10.85.0.1",
        netmask: "255.255.255.0",
        range: { start: "10.85.0.10", end: "10.85.0.19" },
        leaseSeconds: 3600,
        proxyStrategy: "option43",
        registerUnknown: true,
        nodeUrl: "http://10.85.0.1:8080",
        ...cfg,
      },
      contextBooter(ctx),
      clock,
      whoAnswers,
    );
    await fn(r, ctx);
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
}
