// The process tests/images_killpoints_test.ts kills: opens the store and the node registry over
// a data dir as `netroot serve` does (reconcile first), prints "go", runs one operation of the
// image store or a deploy, prints "done <ms>". Usage: crashops.ts DATA OP ARG...
import { DataDir } from "../../src/datadir.ts";
import { openDatabase } from "../../src/db.ts";
import { commitUpper } from "../../src/images/session.ts";
import { ImageStore } from "../../src/images/store.ts";
import { setLogSink } from "../../src/log.ts";
import { NodeRegistry } from "../../src/nodes.ts";
import { Rebooter } from "../../src/reboot.ts";

setLogSink(() => {});
const [root, op, ...args] = Deno.args;
const data = new DataDir(root);
await data.ensure();
const db = openDatabase(data.db);
const images = new ImageStore(data, db);
const nodes = new NodeRegistry(data, db, images, new Rebooter(db), new EventTarget());
await images.reconcile();
await nodes.reconcile();
const t0 = performance.now();
console.log("go");
switch (op) {
  case "import":
    await images.import(args[0], "a");
    nodes.follow("a");
    break;
  case "commit": // a session's upper committed on the current version
    await commitUpper(images, args[0], images.get("a").id, "a", { madeBy: "shell", command: "x" });
    nodes.follow("a");
    break;
  case "rollback":
    await images.rollback("a");
    nodes.follow("a");
    break;
  case "rm":
    images.remove(args[0]);
    break;
  case "gc":
    await images.gc(1);
    break;
  case "rebuild":
    await images.ensureTree(args[0]);
    break;
  case "deploy":
    await nodes.deploy(["n1"], args[0], { reboot: false });
    break;
  default:
    throw new Error(`unknown operation ${op}`);
}
await images.idle();
console.log(`done ${Math.round(performance.now() - t0)}`);
db.close();
