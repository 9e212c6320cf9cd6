// Spawned by hybrid_hostile_test.ts: one hybrid copy from a source (the image's NFS export, here a
// local directory) where the manifest's /etc/release is something else, then one JSON line with
// how the copy ended. A child, so that a copy blocked in a synchronous open or read is killed by
// the test instead of holding it. Args: <scratch dir> <zero|fifo|huge>.
import { createHash } from "node:crypto";
import { manifestText } from "../contract/manifest.ts";
import { scanTree } from "../src/images/walk.ts";
import { mknod, S_IFIFO } from "../src/linux/fsops.ts";
import { ensureLocalCopy, HybridError } from "../hybrid/copy.ts";

const [tmp, kind] = Deno.args;
const source = `${tmp}/src`;
Deno.mkdirSync(`${source}/etc`, { recursive: true });
Deno.writeTextFileSync(`${source}/etc/release`, "v1\n");
const text = manifestText((await scanTree(source)).entries);
const imageId = createHash("sha256").update(text).digest("hex");
// What a hostile server at the server's address serves in its place: a link the node follows to
// its own /dev/zero, a FIFO (NFS FIFOs are the client's), a file of 64 GiB (holes).
Deno.removeSync(`${source}/etc/release`);
if (kind === "zero") Deno.symlinkSync("/dev/zero", `${source}/etc/release`);
else if (kind === "fifo") mknod(`${source}/etc/release`, S_IFIFO | 0o644);
else {
  Deno.writeFileSync(`${source}/etc/release`, new Uint8Array());
  Deno.truncateSync(`${source}/etc/release`, 64 * 2 ** 30);
}
const hybridDir = `${tmp}/part/walt-hybrid`;
Deno.mkdirSync(hybridDir, { recursive: true });
const t0 = performance.now();
const ended = await ensureLocalCopy({ source, hybridDir, imageId, manifestText: text }).then(
  () => ({ ok: true }),
  (e) => ({ ok: false, reason: (e as HybridError).reason, message: (e as Error).message }),
);
console.log(JSON.stringify({ ...ended, imageId, ms: Math.round(performance.now() - t0) }));
