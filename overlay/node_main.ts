// Entry of the node program for the initramfs (bundle mode): `netroot init` and nothing else.
// Bundled from here instead of main.ts it stays free of server modules (≈ 37 KB instead of
// ≈ 430 KB; ≈ 10 ms instead of ≈ 130 ms to start on this host, ten times that under TCG) and of
// node:crypto, whose polyfill makes Deno panic at startup while /proc is not mounted yet
// ("no /proc/self/exe available"), which is the case when the launcher starts us as /init.
import { run } from "./init.ts";

Deno.exit(await run(Deno.args[0] === "init" ? Deno.args.slice(1) : Deno.args));
