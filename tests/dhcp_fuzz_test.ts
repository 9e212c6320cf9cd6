// Fuzz: random and mutated packets through the DHCP decoder (and the classifier on what decodes).
// Only DhcpDecodeError may escape; no hang. NETROOT_FUZZ_N raises the count (default 100,000).
import assert from "node:assert/strict";
import { decode, DhcpDecodeError } from "../netboot/dhcp4/packet.ts";
import { classify } from "../netboot/dhcp4/classify.ts";
import { decodeSubOptions } from "../netboot/dhcp4/options.ts";

const dir = new URL("./fixtures/dhcp/", import.meta.url);
const seeds = [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".bin"))
  .map((e) => Deno.readFileSync(new URL(e.name, dir)));

/** xorshift32: reproducible runs (the seed is printed on failure). */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}

function mutate(r: () => number, src: Uint8Array): Uint8Array {
  const int = (n: number) => Math.floor(r() * n);
  let b: Uint8Array = src.slice();
  switch (int(6)) {
    case 0: // random bytes, sometimes with a valid header prefix
      b = new Uint8Array(int(700));
      for (let i = 0; i < b.length; i++) b[i] = int(256);
      if (r() < 0.5 && b.length >= 240) b.set(src.subarray(0, 240));
      return b;
    case 1: // truncate
      return b.subarray(0, int(b.length + 1));
    case 2: // flip bytes, mostly in the options area
      for (let n = 1 + int(8); n > 0; n--) b[240 + int(Math.max(1, b.length - 240))] = int(256);
      return b;
    case 3: // lengths: set an option length byte to something large
      for (let i = 240; i < b.length; i++) if (r() < 0.05) b[i] = 0xff - int(4);
      return b;
    case 4: { // overload the file/sname fields with random option bytes
      const extra = new Uint8Array([52, 1, 1 + int(3)]);
      const out = new Uint8Array(b.length + 3);
      out.set(b.subarray(0, 240));
      out.set(extra, 240);
      out.set(b.subarray(240), 243);
      for (let i = 44; i < 236; i++) if (r() < 0.3) out[i] = int(256);
      return out;
    }
    default: // splice two seeds
      return new Uint8Array([...b.subarray(0, int(b.length)), ...src.subarray(int(src.length))]);
  }
}

Deno.test("DHCP decoder survives random and mutated packets", () => {
  const n = Number(Deno.env.get("NETROOT_FUZZ_N") ?? 100_000);
  const seed = Number(Deno.env.get("NETROOT_FUZZ_SEED") ?? Date.now() % 1e9);
  const r = rng(seed);
  let decoded = 0, rejected = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const pkt = mutate(r, seeds[Math.floor(r() * seeds.length)]);
    try {
      const p = decode(pkt);
      decoded++;
      classify(p, { nodeUrl: "http://10.0.0.1:8080" });
      const v = p.options.get(175);
      if (v) {
        try {
          decodeSubOptions(v);
        } catch (e) {
          if (!(e instanceof DhcpDecodeError)) throw e;
        }
      }
    } catch (e) {
      if (!(e instanceof DhcpDecodeError)) {
        assert.fail(`seed ${seed} packet ${i}: ${(e as Error).stack}`);
      }
      rejected++;
    }
  }
  const ms = performance.now() - t0;
  console.log(
    `fuzz: ${n} packets (seed ${seed}): ${decoded} decoded, ${rejected} rejected, ` +
      `${Math.round(n / ms * 1000)}/s`,
  );
  assert.equal(decoded + rejected, n);
  assert.ok(decoded > n / 10 && rejected > n / 10, "the mutations exercise both paths");
});
