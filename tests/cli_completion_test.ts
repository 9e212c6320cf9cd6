// The command table against the --help texts (the flags completion offers are the ones each
// command documents, with the same fixed values), and the generated completion scripts run in
// real bash and zsh.
import assert from "node:assert/strict";
import { join } from "node:path";
import { commands } from "../src/cli/commands.ts";
import { completionScript } from "../src/cli/completion.ts";
import { main } from "../src/cli/main.ts";

async function helpText(args: string[]): Promise<string> {
  const out: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => out.push(a.join(" "));
  try {
    await main(args);
  } finally {
    console.log = log;
  }
  return out.join("\n");
}

/** Flags a help text names, with the value it shows (`--nfs kernel|ganesha|off`, `--data DIR`).
 *  Spans in backquotes quote other commands (demo's `netroot serve --bridge …`) and are skipped. */
function helpFlags(text: string): Map<string, string> {
  const flags = new Map<string, string>();
  const plain = text.replace(/`[^`]*`/gs, "");
  for (
    const m of plain.matchAll(
      /--([a-z][a-z0-9-]*)(?:[ =]([A-Z][A-Z0-9:._/-]*|[a-z0-9]+(?:\|[a-z0-9][a-z0-9-]*)+))?/g,
    )
  ) {
    const value = m[2] ?? "";
    if (value || !flags.has(m[1])) flags.set(m[1], value);
  }
  return flags;
}

for (const [name, spec] of Object.entries(commands)) {
  if (!spec.flags) continue;
  Deno.test(`command table: ${name}'s flags are the ones its --help names`, async () => {
    let text = await helpText([name, "--help"]);
    for (const sub of spec.subcommands ?? []) {
      if (name !== "completion") text += "\n" + await helpText([name, sub, "--help"]);
    }
    const documented = helpFlags(text);
    const table = spec.flags!;
    for (const [flag, value] of documented) {
      assert.ok(flag in table, `${name} --help names --${flag}, the command table does not`);
      // Fixed choices and path kinds complete: they must be the ones the help shows.
      if (value.includes("|") || value === "DIR" || value === "FILE") {
        assert.equal(table[flag], value, `${name} --${flag}`);
      }
    }
    for (const flag of Object.keys(table)) {
      if (flag !== "help") {
        assert.ok(documented.has(flag), `${name}: --${flag} is in the table, not in --help`);
      }
    }
  });
}

Deno.test("netroot --help lists every command of the table", async () => {
  const text = await helpText(["--help"]);
  for (const name of Object.keys(commands)) assert.match(text, new RegExp(`^  ${name} `, "m"));
});

/** COMPREPLY of the bash completion for a command line (the last word is the one completed). */
async function bashComplete(line: string[], cwd: string): Promise<string[]> {
  const script = join(cwd, "netroot.bash");
  await Deno.writeTextFile(script, completionScript("bash"));
  const words = line.map((w) => `'${w}'`).join(" ");
  const out = await new Deno.Command("bash", {
    args: [
      "--norc",
      "-c",
      `source ${script}; COMP_WORDS=(${words}); COMP_CWORD=${line.length - 1}; _netroot; ` +
      `printf '%s\\n' "\${COMPREPLY[@]}"`,
    ],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).sort();
}

Deno.test("bash completion: commands, sub-commands, flags, fixed values, directories", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-complete-" });
  try {
    await Deno.mkdir(join(dir, "datadir"));
    await Deno.writeTextFile(join(dir, "datafile"), "");
    assert.deepEqual(await bashComplete(["netroot", "ser"], dir), ["serve"]);
    assert.deepEqual(await bashComplete(["netroot", "b"], dir), ["backup", "bench"]);
    assert.deepEqual(await bashComplete(["netroot", "serve", "--nfs", ""], dir), [
      "ganesha",
      "kernel",
      "off",
    ]);
    assert.deepEqual(await bashComplete(["netroot", "serve", "--nf"], dir), [
      "--nfs",
      "--nfs-reserve",
      "--nfs-version",
    ]);
    assert.deepEqual(await bashComplete(["netroot", "serve", "--log-format", "j"], dir), ["json"]);
    assert.deepEqual(await bashComplete(["netroot", "node", "re"], dir), ["reboot", "rename"]);
    assert.deepEqual(await bashComplete(["netroot", "node", "boot", "n1", "--no"], dir), [
      "--no-reboot",
    ]);
    assert.deepEqual(await bashComplete(["netroot", "completion", ""], dir), ["bash", "zsh"]);
    assert.deepEqual(await bashComplete(["netroot", "install-service", "--d"], dir), ["--data"]);
    // --data DIR: directories only (the file next to it is not offered).
    assert.deepEqual(await bashComplete(["netroot", "backup", "x", "--data", "data"], dir), [
      "datadir",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * The zsh function in real zsh, with the completion system's builtins replaced by recorders
 * (driving zle non-interactively would need a pty): what it would offer for a command line.
 */
async function zshComplete(line: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "nr-complete-zsh-" });
  try {
    const script = join(dir, "_netroot");
    await Deno.writeTextFile(script, completionScript("zsh"));
    const words = line.map((w) => `'${w}'`).join(" ");
    const out = await new Deno.Command("zsh", {
      args: [
        "-f",
        "-c",
        `compdef() { print -r -- "compdef $*" }
         compadd() { shift; print -r -- "compadd $*" }
         _describe() { print -r -- "describe \${(P)2}" }
         _files() { print -r -- files }
         _directories() { print -r -- directories }
         _message() { print -r -- "message $*" }
         source ${script}
         words=(${words}); CURRENT=${line.length}; _netroot`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    return new TextDecoder().decode(out.stdout).trim();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("zsh completion: the same answers as bash from the same table", async () => {
  const cmds = await zshComplete(["netroot", ""]);
  assert.match(cmds, /^compdef _netroot netroot\ndescribe /);
  for (const name of Object.keys(commands)) assert.match(cmds, new RegExp(`\\b${name}:`));
  assert.equal(
    await zshComplete(["netroot", "serve", "--nfs", ""]),
    "compdef _netroot netroot\ncompadd kernel ganesha off",
  );
  assert.match(await zshComplete(["netroot", "node", ""]), /compadd add ls show .* console$/);
  assert.match(await zshComplete(["netroot", "serve", "--"]), /compadd --data .*--log-format/);
  assert.match(await zshComplete(["netroot", "serve", "--data", ""]), /directories$/);
  assert.match(await zshComplete(["netroot", "serve", "--http", ""]), /message HOST:PORT$/);
  assert.match(await zshComplete(["netroot", "image", "import", ""]), /files$/);
});
