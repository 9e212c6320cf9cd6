// Runs every benchmark in bench/ (each prints its own ratios against its named peer).
const here = new URL(".", import.meta.url).pathname;
const only = Deno.args[0];
for await (const e of Deno.readDir(here)) {
  if (!e.name.endsWith("_bench.ts") || (only && !e.name.includes(only))) continue;
  console.log(`== ${e.name}`);
  const p = new Deno.Command(Deno.execPath(), { args: ["run", "-A", `${here}${e.name}`] }).spawn();
  const s = await p.status;
  if (!s.success) console.log(`!! ${e.name} exited ${s.code}`);
}
