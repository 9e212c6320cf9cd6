// Privileged (root, network namespace): interface configuration through ioctls, checked with `ip`.
import assert from "node:assert/strict";

const root = new URL("../", import.meta.url).href;
const dec = new TextDecoder();

async function run(cmd: string, args: string[]): Promise<string> {
  const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = dec.decode(o.stdout) + dec.decode(o.stderr);
  if (!o.success) throw new Error(`${cmd} ${args.join(" ")} (rc ${o.code}): ${text}`);
  return text;
}

/** Runs `code` (a module body) with Deno inside the namespace; returns its stdout. */
const inNs = (ns: string, code: string) =>
  run("ip", ["netns", "exec", ns, Deno.execPath(), "eval", "--no-config", code]);

Deno.test("netif (root, netns): NIC found by MAC, address + gateway set, carrier followed", async () => {
  const ns = `nr-netif-${Deno.pid}`;
  await run("ip", ["netns", "add", ns]);
  try {
    await run("ip", [
      ...["-n", ns, "link", "add", "nr0", "address", "52:54:00:12:34:56"],
      ...["type", "veth", "peer", "name", "nr1", "address", "52:54:00:65:43:21"],
    ]);
    const out1 = await inNs(
      ns,
      `
      import * as n from "${root}src/linux/netif.ts";
      import { bringUpNetwork } from "${root}overlay/network.ts";
      const lines = [];
      const out = { line: (m) => lines.push(m), loud: () => {} };
      console.log("names", JSON.stringify(n.interfaceNames().sort()));
      console.log("find", n.findByMac("52:54:00:65:43:21"));
      console.log("lo-down", (n.getFlags("lo") & n.IFF_UP) === 0);
      const r = await bringUpNetwork("52:54:00:12:34:56",
        { address: "10.98.0.7", netmask: "255.255.255.0", prefix: 24, server: "10.98.0.1", gateway: "10.98.0.1" },
        out, { appearMs: 500, carrierMs: 300 });
      console.log("up", r.ifname, r.carrier, (n.getFlags("lo") & n.IFF_UP) !== 0);
      console.log("warn", lines.join("|"));
      try {
        await bringUpNetwork("02:00:00:00:00:99", { address: "10.98.0.8", netmask: "255.255.255.0", prefix: 24, server: "" }, out, { appearMs: 100 });
      } catch (e) { console.log("missing", e.message); }
      `,
    );
    const get = (key: string) =>
      out1.split("\n").find((l) => l.startsWith(`${key} `))?.slice(key.length + 1);
    assert.equal(get("names"), JSON.stringify(["lo", "nr0", "nr1"]), out1);
    assert.equal(get("find"), "nr1", out1);
    assert.equal(get("lo-down"), "true", out1);
    assert.equal(get("up"), "nr0 false true", out1); // peer down: no carrier, but configured
    assert.match(get("warn") ?? "", /nr0 has no carrier after 300 ms; going on/);
    assert.match(
      get("missing") ?? "",
      /no network interface with MAC 02:00:00:00:00:99 after 100 ms \(seen: .*nr0 52:54:00:12:34:56/,
    );

    const addr = await run("ip", ["-n", ns, "-4", "-o", "addr", "show", "nr0"]);
    assert.match(addr, /inet 10\.98\.0\.7\/24 brd 10\.98\.0\.255 /);
    assert.match(
      await run("ip", ["-n", ns, "route", "show", "default"]),
      /default via 10\.98\.0\.1 dev nr0/,
    );
    assert.match(await run("ip", ["-n", ns, "link", "show", "nr0"]), /<[^>]*\bUP\b[^>]*>/);

    // Carrier appears once the other end is up.
    await run("ip", ["-n", ns, "link", "set", "nr1", "up"]);
    const out2 = await inNs(
      ns,
      `
      import * as n from "${root}src/linux/netif.ts";
      const t0 = Date.now();
      while (!n.hasCarrier("nr0") && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
      console.log("carrier", n.hasCarrier("nr0"), n.hardwareAddress("nr0"));
      `,
    );
    assert.match(out2, /^carrier true 52:54:00:12:34:56$/m);
  } finally {
    await run("ip", ["netns", "del", ns]);
  }
});
