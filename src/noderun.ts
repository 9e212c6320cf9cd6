// `node run` and `node shell` on the server side (mounted under /api/v1/nodes by buildApp):
//   POST /nodes/run  {nodes: [NODE…], command: "…", timeout?: S}  →  [{name, mac, code, stdout,
//                    stderr, error?, ms}], one per node, run in parallel over ssh (src/nodessh.ts)
//   GET  /nodes/:ref/ssh  →  {name, mac, ip, port, knownHosts: [...]}: what `node shell` needs to
//                    run ssh itself with the data dir's key (host keys pinned from the image)
// Running a command is a write: it needs the API token, as deploys and power actions do.
import type { Hono } from "hono";
import { jsonBody } from "./api.ts";
import { apiRouter } from "./apierror.ts";
import type { Context } from "./context.ts";
import { UserError } from "./errors.ts";
import { sshFailure } from "./nodessh.ts";

export interface RunResult {
  name: string;
  mac: string;
  /** The command's exit status; null when it did not run (the error says why). */
  code: number | null;
  stdout: string;
  stderr: string;
  error?: string;
  ms: number;
}

/** Commands at once (each is one ssh process on the server). */
const concurrency = 32;
export const RUN_TIMEOUT_S = 300;

/** Runs `command` (the node's shell reads it) on every node, in parallel, within `timeoutMs`. */
export async function runOnNodes(
  ctx: Context,
  refs: string[],
  command: string,
  timeoutMs: number,
): Promise<RunResult[]> {
  const nodes = refs.map((r) => ctx.nodes.get(r)); // every ref exists, or a 404 before anything runs
  const results: RunResult[] = new Array(nodes.length);
  let next = 0;
  const worker = async () => {
    while (next < nodes.length) {
      const i = next++;
      const node = nodes[i];
      const t0 = performance.now();
      const done = (r: Partial<RunResult>) =>
        results[i] = {
          name: node.name,
          mac: node.mac,
          code: null,
          stdout: "",
          stderr: "",
          ...r,
          ms: Math.round(performance.now() - t0),
        };
      try {
        const t = ctx.ssh.target(node);
        if ("unavailable" in t) {
          done({ error: `cannot reach ${node.name} over ssh: ${t.unavailable}` });
          continue;
        }
        const r = await ctx.ssh.run(t, command, timeoutMs);
        // 255 is ssh's own failure (no sshd, key refused, host key mismatch), not the command's;
        // a node netroot knows is off or down is said so (a connect that timed out says nothing).
        if (r.code === 255 && !r.stdout) {
          const failure = sshFailure(r);
          const now = ctx.nodes.find(node.mac) ?? node;
          const known = now.state === "off" || now.state === "down"
            ? ` (${now.name} is ${now.state}${now.stateReason ? `: ${now.stateReason}` : ""})`
            : "";
          done({
            error: `${failure.startsWith("ssh: ") ? "" : "ssh: "}${failure}${known}`,
            stderr: r.stderr,
          });
        } else done({ code: r.code, stdout: r.stdout, stderr: r.stderr });
      } catch (e) {
        done({ error: (e as Error).message });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, nodes.length) }, worker));
  return results;
}

export function runRoutes(ctx: Context): Hono {
  const app = apiRouter();
  app.post("/run", async (c) => {
    const b = await jsonBody(c.req.raw);
    const refs = b.nodes;
    if (!Array.isArray(refs) || !refs.length || refs.some((r) => typeof r !== "string")) {
      throw new UserError('field "nodes" must be a non-empty array of node names or MACs');
    }
    if (typeof b.command !== "string" || !b.command.trim()) {
      throw new UserError('field "command" must be a non-empty string');
    }
    const timeout = b.timeout ?? RUN_TIMEOUT_S;
    if (
      typeof timeout !== "number" || !Number.isInteger(timeout) || timeout < 1 || timeout > 86400
    ) {
      throw new UserError('field "timeout" must be whole seconds 1–86400');
    }
    return c.json(await runOnNodes(ctx, refs as string[], b.command, timeout * 1000));
  });
  app.get("/:ref/ssh", (c) => {
    const node = ctx.nodes.get(c.req.param("ref"));
    const t = ctx.ssh.target(node);
    if ("unavailable" in t) {
      throw new UserError(`cannot reach ${node.name} over ssh: ${t.unavailable}`, 409);
    }
    return c.json({ ...t, knownHosts: ctx.ssh.pinned(node.name) });
  });
  return app;
}
