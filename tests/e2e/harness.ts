// End-to-end tests run in the lab of src/lab/lab.ts (product code: `netroot demo` uses it too):
//
//   labTest("…", async ({ kernel, imageDir, start }) => {
//     const lab = await start();
//     await lab.cli("image", "import", dir, "--name", "test");
//     const vm = await lab.createVnode("vm1", { image: "test" });
//     await lab.waitConsole(vm.mac, /IMAGE-BOOT-OK/, 120_000);
//     const kinds = (await lab.events(vm.mac)).map((e) => e.kind);
//   });                           // the lab is closed in any case (kept on failure)
//
// This adds what only tests need: labTest, timeline assertions, the kernel from the checkout's
// .work/ cache. NETROOT_E2E_KEEP=1 keeps every lab directory for debugging.
import { type Lab, type LabOptions, startLab } from "../../src/lab/lab.ts";
import { type DebianKernel, debianKernel } from "../support/kernel.ts";

export {
  type CliResult,
  httpPort,
  Lab,
  type LabOptions,
  serverIp,
  startLab,
} from "../../src/lab/lab.ts";

/** Asserts `want` occurs in `kinds` in this order (other kinds may come between). */
export function assertInOrder(kinds: string[], want: string[]): void {
  let i = 0;
  for (const k of kinds) if (k === want[i]) i++;
  if (i !== want.length) {
    throw new Error(
      `timeline ${kinds.join(" → ")} lacks ${want.slice(i).join(", ")} in this order`,
    );
  }
}

/** Kinds of the node's events after event id `since`, oldest first. */
export async function kindsSince(lab: Lab, mac: string, since = 0): Promise<string[]> {
  return (await lab.events(mac)).filter((e) => e.id > since).map((e) => e.kind);
}

/** The newest event id of a node (0 without events): a mark to wait for what comes after. */
export async function lastEventId(lab: Lab, mac: string): Promise<number> {
  return Math.max(0, ...(await lab.events(mac)).map((e) => e.id));
}

/** `node wait NODES` until they are booted (each call within the lab's 120 s command limit). */
export async function waitBooted(lab: Lab, nodes: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await lab.cli("node", "wait", nodes, "--timeout", "90", { check: false });
    if (r.code === 0) {
      lab.log(`node wait ${nodes}: ${r.stdout.trim()}`);
      return;
    }
    if (Date.now() > deadline) throw new Error(`node wait ${nodes}: ${r.stdout}${r.stderr}`);
  }
}

/**
 * One end-to-end test (root, qemu): the Debian kernel, a scratch dir for test images and a lab
 * started by `start()`. Skipped with NETROOT_SKIP_VM=1. On failure the server log tail is printed
 * and the lab directory (server and console logs) is kept for a look.
 */
export function labTest(
  name: string,
  fn: (
    t: { kernel: DebianKernel; imageDir: string; start(opts?: LabOptions): Promise<Lab> },
  ) => Promise<void>,
): void {
  Deno.test({
    name,
    ignore: Deno.env.get("NETROOT_SKIP_VM") === "1",
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const kernel = await debianKernel();
      const imageDir = await Deno.makeTempDir({ prefix: "nr-e2e-image-" });
      let lab: Lab | undefined;
      let ok = false;
      try {
        await fn({ kernel, imageDir, start: async (opts) => (lab = await startLab(opts)) });
        ok = true;
      } catch (e) {
        if (lab) console.error(`server log tail:\n${await lab.serverLogTail(60)}`);
        throw e;
      } finally {
        await lab?.close({ keep: !ok || undefined });
        await Deno.remove(imageDir, { recursive: true });
      }
    },
  });
}
