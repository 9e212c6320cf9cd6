// Command dispatch over the command table (commands.ts).
import { UserError } from "../errors.ts";
import { commands } from "./commands.ts";
import { visibleLines } from "./output.ts";

export type { Command } from "./commands.ts";

export function usage(): string {
  const w = Math.max(...Object.keys(commands).map((k) => k.length));
  return [
    "usage: netroot COMMAND [ARGS…]   (netroot COMMAND --help for details)",
    "",
    ...Object.entries(commands).map(([k, c]) => `  ${k.padEnd(w)}  ${c.summary}`),
    "",
    "Management commands talk to the running server: --server URL or NETROOT_SERVER",
    "(default http://127.0.0.1:8080); the write token comes from the data dir or NETROOT_TOKEN.",
  ].join("\n");
}

export async function help(args: string[]): Promise<number> {
  if (args[0] === "show") {
    const topic = args[1];
    if (topic === "boot-modes") {
      console.log((await import("../docs/boot-modes.ts")).default);
      return 0;
    }
    throw new UserError(`unknown help topic ${topic ?? "(none)"}; topics: boot-modes`);
  }
  if (args[0] && commands[args[0]] && args[0] !== "help") {
    return await (await commands[args[0]].load())(["--help"]);
  }
  console.log(usage());
  return 0;
}

export async function main(args: string[]): Promise<number> {
  // As the initramfs /init the kernel starts us as PID 1, possibly without arguments.
  if (Deno.pid === 1 && args[0] !== "init") args = ["init", ...args];
  const [name, ...rest] = args;
  if (!name || name === "--help" || name === "-h") {
    console.log(usage());
    return name ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) {
    console.error(`netroot: unknown command ${name} (try netroot help)`);
    return 2;
  }
  try {
    return await (await cmd.load())(rest);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      // node:util's own text goes on about positionals after `--`; a typo wants the option list
      const option = /'([^']*)'/.exec(err.message)?.[1] ?? "";
      const grouped = ["image", "node", "vnode"].includes(name); // their first word: a command
      const sub = grouped && rest[0] && !rest[0].startsWith("-") ? ` ${rest[0]}` : "";
      console.error(
        `netroot ${name}: unknown option ${visibleLines(option)} ` +
          `(netroot ${name}${sub} --help lists the options)`,
      );
      return 1;
    }
    if (e instanceof UserError || err.code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`netroot ${name}: ${visibleLines(err.message)}`); // may quote a node or image
      return 1;
    }
    console.error(`netroot ${name}: ${err.stack ?? err.message}`);
    return 1;
  }
}
