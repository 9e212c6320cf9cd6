// Runs the benchmarks in bench/ (each prints its own ratios against its named peer).
//   deno task bench [--quick] [--check] [NAME…]
// --quick: fewer rounds, only the benches that have a quick variant (what CI runs).
// --check: exit 1 when a ratio is under its floor (bench/ratio.ts). A bench with a ratio under
// its floor is run once more and the ratio fails only when it misses in both runs: one unlucky
// run on a shared machine is noise, two in a row are a regression.
import { parseArgs } from "node:util";
import { parseRatios, type Ratio } from "./ratio.ts";

/** Benches with a quick variant: the floors CI holds. */
const QUICK = ["deploy", "dhcp", "http", "hybrid", "tftp"];

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { quick: { type: "boolean" }, check: { type: "boolean" } },
});
const here = new URL(".", import.meta.url).pathname;
const names = [...Deno.readDirSync(here)]
  .map((e) => e.name.match(/^(.+)_bench\.ts$/)?.[1])
  .filter((n): n is string => !!n)
  .filter((n) => !values.quick || QUICK.includes(n))
  .filter((n) => positionals.length === 0 || positionals.some((p) => n.includes(p)))
  .sort();

async function runBench(name: string): Promise<{ ok: boolean; ratios: Ratio[] }> {
  const args = ["run", "-A", `${here}${name}_bench.ts`, ...(values.quick ? ["--quick"] : [])];
  const p = new Deno.Command(Deno.execPath(), { args, stdout: "piped" }).spawn();
  let out = "";
  for await (const chunk of p.stdout.pipeThrough(new TextDecoderStream())) {
    out += chunk;
    await Deno.stdout.write(new TextEncoder().encode(chunk));
  }
  const s = await p.status;
  if (!s.success) console.log(`!! ${name}_bench.ts exited ${s.code}`);
  return { ok: s.success, ratios: parseRatios(out) };
}

const misses: string[] = [];
for (const name of names) {
  console.log(`== ${name}_bench.ts`);
  const first = await runBench(name);
  let { ok, ratios } = first;
  const under = (rs: Ratio[]) => rs.filter((q) => q.value < q.floor);
  if (values.check && (!ok || under(ratios).length > 0)) {
    console.log(`== ${name}_bench.ts again: ${ok ? "a ratio under its floor" : "it failed"}`);
    const second = await runBench(name);
    ok = second.ok;
    // A ratio misses only when it missed in both runs: keep each one's better value.
    ratios = second.ratios.map((q) => {
      const before = first.ratios.find((p) => p.name === q.name);
      return before && before.value > q.value ? before : q;
    });
  }
  if (!ok) misses.push(`${name}: the bench failed`);
  for (const q of under(ratios)) misses.push(`${q.name} ${q.value.toFixed(2)} < floor ${q.floor}`);
}
if (values.check) {
  console.log(misses.length ? `bench check FAILED:\n  ${misses.join("\n  ")}` : "bench check ok");
  if (misses.length) Deno.exit(1);
}
