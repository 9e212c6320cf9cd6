// netroot: one program, the lab's network-boot server and the nodes' init. Dispatch only.
import { main } from "./src/cli/main.ts";

Deno.exit(await main(Deno.args));
