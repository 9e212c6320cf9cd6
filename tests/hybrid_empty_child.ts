// Spawned by hybrid_hostile_test.ts: one boot's preparation of a hybrid copy already complete
// (prepareHybridRoot, persistent: what the last boot left in diff/tmp/ is emptied), then one line
// with this process's peak memory (VmHWM, KiB) and what it said. A child, so that its peak is
// its own. Args: <hybridDir> <source> <manifest file>.
import { createHash } from "node:crypto";
import { prepareHybridRoot } from "../hybrid/mode.ts";

const [hybridDir, source, manifestFile] = Deno.args;
const manifestText = Deno.readTextFileSync(manifestFile);
const imageId = createHash("sha256").update(manifestText).digest("hex");
const lines: string[] = [];
await prepareHybridRoot({
  hybridDir,
  persistent: true,
  imageId,
  manifestText,
  source,
  log: (m) => lines.push(m),
});
const hwm = Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))![1]);
console.log(JSON.stringify({ hwm, lines }));
