// An iPXE script as iPXE's own parser reads it (src/image/script.c, src/core/exec.c): lines end at
// \n, a trailing \ joins the next line, a line may start with a :label; a line is split on blanks,
// a word that is ||, && or ; ends one command and starts the next, a word from # on is a comment.
// Only parsing: which commands a script holds, never whether a condition would run them.

/** One script line: its label, if any, and its commands (each an argument list). */
export interface IpxeLine {
  label?: string;
  commands: string[][];
}

const blank = /[ \t\n\v\f\r]+/;

/** The commands of one line (exec.c: split_command, command_terminator). */
function commands(line: string): string[][] {
  const out: string[][] = [];
  let cur: string[] = [];
  for (const word of line.split(blank).filter((w) => w !== "")) {
    if (word.startsWith("#")) break;
    if (word === "||" || word === "&&" || word === ";") {
      out.push(cur);
      cur = [];
    } else cur.push(word);
  }
  if (cur.length) out.push(cur);
  return out;
}

/** The script's lines after its `#!ipxe` (script.c: process_script), blank ones left out. */
export function ipxeLines(script: string): IpxeLine[] {
  const out: IpxeLine[] = [];
  let pending = "";
  for (const raw of script.split("\n").slice(1)) {
    const line = pending + raw.replace(/\r$/, "");
    if (line.endsWith("\\")) {
      pending = line.slice(0, -1);
      continue;
    }
    pending = "";
    const m = /^\s*:(\S*)\s*(.*)$/.exec(line);
    const parsed = m ? { label: m[1], commands: commands(m[2]) } : { commands: commands(line) };
    if (parsed.label !== undefined || parsed.commands.length) out.push(parsed);
  }
  return out;
}
