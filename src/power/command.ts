// `power.driver=command`: an admin's program for anything else (smart plugs, Redfish, a relay
// board). `power.command` is a command line, split into words like a shell does for quotes and
// backslashes only — no shell runs it: `;`, `|`, `$(…)`, globs are plain characters. The program
// (first word) is a file name in `<data>/power/`, so the API token alone cannot make the server
// run an arbitrary program; put a script (or a symlink to one) there.
// Placeholders {action} {mac} {name} {ip} are replaced inside words after the split, so a value
// is always (part of) one argument, never syntax. The same values are in the environment
// (NETROOT_ACTION, NETROOT_MAC, NETROOT_NAME, NETROOT_IP, NETROOT_POWER_HOST,
// NETROOT_POWER_USER, NETROOT_POWER_PASSWORD): a script that wants a shell uses "$NETROOT_MAC".
// Exit 0 is success; `status` prints `on` or `off` as the first word of its output.
import { join } from "node:path";
import type { DataDir } from "../datadir.ts";
import { UserError } from "../errors.ts";
import {
  firstLine,
  hasControlChars,
  type PowerAction,
  type PowerDriver,
  PowerError,
  type PowerTarget,
  required,
  runTool,
} from "./driver.ts";

/** Where the programs of power.command live. */
export const powerCommandDir = (data: DataDir) => join(data.root, "power");

/** Splits a command line into words: whitespace separates, '…' is literal, "…" allows \" and
 *  \\, a backslash outside quotes takes the next character as is. Throws on an open quote. */
export function splitCommandLine(line: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === " " || c === "\t") {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new UserError("power.command has an unclosed ' quote");
      word = (word ?? "") + line.slice(i + 1, end);
      i = end;
    } else if (c === '"') {
      word ??= "";
      for (i++;; i++) {
        if (i >= line.length) throw new UserError('power.command has an unclosed " quote');
        if (line[i] === '"') break;
        if (line[i] === "\\" && (line[i + 1] === '"' || line[i + 1] === "\\")) i++;
        word += line[i];
      }
    } else if (c === "\\" && i + 1 < line.length) {
      word = (word ?? "") + line[++i];
    } else word = (word ?? "") + c;
  }
  if (word !== undefined) words.push(word);
  return words;
}

/** Checks a power.command value (the setting validator). */
export function checkCommandLine(line: string): string {
  if (hasControlChars(line)) throw new UserError("power.command must be a single line");
  if (line.length > 1024) throw new UserError("power.command is longer than 1024 characters");
  const words = splitCommandLine(line);
  if (!words.length) throw new UserError("power.command is empty");
  if (words[0].includes("/") || words[0] === "." || words[0] === "..") {
    throw new UserError(
      `power.command's program must be a file name in <data dir>/power/ (got "${words[0]}"): ` +
        "put the script, or a symlink to it, there",
    );
  }
  return line.trim();
}

async function run(t: PowerTarget, action: PowerAction): Promise<string> {
  const words = splitCommandLine(required(t, "power.command", "the program and its arguments"));
  const values: Record<string, string> = {
    action,
    mac: t.node.mac,
    name: t.node.name,
    ip: t.node.ip ?? "",
  };
  const argv = words.map((w) => w.replace(/\{(action|mac|name|ip)\}/g, (_m, k) => values[k]));
  const dir = powerCommandDir(t.ctx.data);
  argv[0] = join(dir, checkCommandLine(words[0]));
  const env: Record<string, string> = {
    NETROOT_ACTION: action,
    NETROOT_MAC: t.node.mac,
    NETROOT_NAME: t.node.name,
    NETROOT_IP: t.node.ip ?? "",
    NETROOT_POWER_HOST: t.settings["power.host"] ?? "",
    NETROOT_POWER_USER: t.settings["power.user"] ?? "",
    NETROOT_POWER_PASSWORD: t.settings["power.password"] ?? "",
  };
  let r;
  try {
    r = await runTool(argv, { env, timeoutMs: t.timeoutMs });
  } catch (e) {
    if ((e as UserError).status === 503) {
      throw new UserError(`power.command: ${words[0]} not found in ${dir}/`, 409);
    }
    throw e;
  }
  if (r.code !== 0) {
    throw new PowerError(
      `${words[0]} ${action} failed (exit ${r.code})` +
        (firstLine(r.stderr) || firstLine(r.stdout)
          ? `: ${firstLine(r.stderr) || firstLine(r.stdout)}`
          : ""),
    );
  }
  return r.stdout;
}

export const commandDriver: PowerDriver = {
  name: "command",
  on: async (t) => void await run(t, "on"),
  off: async (t) => void await run(t, "off"),
  cycle: async (t) => void await run(t, "cycle"),
  async status(t) {
    const out = await run(t, "status");
    const word = out.trim().split(/\s+/)[0]?.toLowerCase();
    if (word !== "on" && word !== "off") {
      throw new PowerError(
        `power.command status must print "on" or "off", it printed "${firstLine(out)}"`,
      );
    }
    return word;
  },
};
