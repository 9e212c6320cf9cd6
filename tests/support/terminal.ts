// The CLI with its stdout (and stderr) a pseudo-terminal, as an admin runs it: util-linux's
// `script -qec CMD /dev/null` gives the child a pty and copies what it writes there to our pipe
// (the pty's own translation included: each "\n" arrives as "\r\n").
import { fileURLToPath } from "node:url";

const mainTs = fileURLToPath(new URL("../../main.ts", import.meta.url));

const quoted = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;

/** `deno run main.ts ARGS…` on a terminal, spawned; its terminal's output on `stdout`. */
export function cliOnTerminal(args: string[], env: Record<string, string>): Deno.ChildProcess {
  const command = `exec ${[Deno.execPath(), "run", "-A", mainTs, ...args].map(quoted).join(" ")}`;
  return new Deno.Command("script", {
    args: ["-qec", command, "/dev/null"],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** What the CLI wrote to its terminal, and its exit status. */
export async function onTerminal(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; out: string }> {
  const r = await cliOnTerminal(args, env).output();
  return { code: r.code, out: new TextDecoder().decode(r.stdout) };
}
