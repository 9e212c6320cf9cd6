// `deno task bundle`'s last step: the iPXE builds from Debian's package into dist/ipxe/ (or the
// directory given), beside dist/netroot.js (src/release/ipxe.ts). Never imported by the program.
import { packIpxe } from "./ipxe.ts";

const out = Deno.args[0] ?? "dist/ipxe";
const { version, files } = await packIpxe(out);
console.log(`${out}: ${files.join(", ")}, COPYING, SOURCE.txt (Debian ipxe ${version})`);
