// Where HTTP listens (root, network namespaces): with a boot interface and no --http HOST, on the
// boot address and loopback only — the server's other addresses do not offer the API — and an
// explicit --http 0.0.0.0:PORT widens it.
import assert from "node:assert/strict";
import { defaultConfig } from "../src/config.ts";
import { httpHosts } from "../src/server.ts";
import { makeLink, sh, startServer } from "./dhcp_netns.ts";

const isRoot = Deno.uid() === 0;

Deno.test("httpHosts: the configured host, else boot address + loopback, else everything", () => {
  const c = defaultConfig();
  assert.deepEqual(httpHosts(c), ["0.0.0.0"]);
  assert.deepEqual(httpHosts({ ...c, serverIp: "10.77.0.1" }), ["10.77.0.1", "127.0.0.1"]);
  assert.deepEqual(httpHosts({ ...c, serverIp: "127.0.0.1" }), ["127.0.0.1"]);
  assert.deepEqual(
    httpHosts({ ...c, serverIp: "10.77.0.1", http: { host: "0.0.0.0", port: 8080 } }),
    ["0.0.0.0"],
  );
});

/** HTTP status of GET url from the client namespace, or "refused"/"error". */
async function probe(ns: string[], url: string): Promise<string> {
  const out = await sh(
    [...ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url],
    { ok: false },
  );
  return /^\d{3}$/.test(out.trim()) && out.trim() !== "000" ? out.trim() : "refused";
}

Deno.test({
  name: "serve --interface: HTTP on the boot address and 127.0.0.1 only; --http 0.0.0.0 widens",
  ignore: !isRoot,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const link = await makeLink("bind", "10.86.1");
    try {
      // A second address on the server: not the boot address, so not to be served by default.
      await sh(["ip", "-n", link.srvNs, "addr", "add", "10.86.1.2/24", "dev", link.srvIf]);
      await sh(["ip", "-n", link.cliNs, "addr", "add", "10.86.1.50/24", "dev", link.cliIf]);
      const base = { dhcp: { ...defaultConfig().dhcp, mode: "off" as const }, ra: false };
      const narrow = await startServer(link, {
        ...base,
        serverIp: "10.86.1.1",
        http: { port: 0 },
        tftp: { port: 0 },
      });
      try {
        const port = narrow.http.port;
        assert.equal(await probe(link.inCli([]), `http://10.86.1.1:${port}/api/v1/health`), "200");
        assert.equal(
          await probe(link.inCli([]), `http://10.86.1.2:${port}/api/v1/health`),
          "refused",
        );
        assert.equal(await probe(link.inSrv([]), `http://127.0.0.1:${port}/api/v1/health`), "200");
        const listening = (await sh(link.inSrv(["ss", "-ltnH", `sport = :${port}`])))
          .trim().split("\n").map((l) => l.split(/\s+/)[3]).sort();
        assert.deepEqual(listening, [`10.86.1.1:${port}`, `127.0.0.1:${port}`]);
      } finally {
        await narrow.stop();
      }
      const wide = await startServer(link, {
        ...base,
        serverIp: "10.86.1.1",
        http: { host: "0.0.0.0", port: 0 },
        tftp: { port: 0 },
      });
      try {
        const url = `http://10.86.1.2:${wide.http.port}/api/v1/health`;
        assert.equal(await probe(link.inCli([]), url), "200");
      } finally {
        await wide.stop();
      }
    } finally {
      await link.close();
    }
  },
});
