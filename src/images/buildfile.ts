// The Buildfile of `netroot image build`: a Dockerfile subset, parsed into steps. Pure (text in,
// steps out; no file system): the builder (src/images/build.ts) runs them.
//
//   FROM image|scratch            first instruction (ARGs may precede it); one stage only
//   RUN cmd | RUN ["exe", "arg"]  /bin/sh -c cmd inside the container, or the exec form;
//                                 here-documents as Docker has them (RUN <<EOF alone: the
//                                 document is the shell's script; RUN cat <<EOF >f: sh reads it)
//   COPY [--chown=U[:G]] [--chmod=MODE] [--link] src… dest   sources inside the build context,
//                                 with Go's wildcards (* ? [a-z]); U and G names of the image;
//                                 what the context's .dockerignore names is not in it
//   ADD  (the same)               a local tar archive (plain, gzip, bzip2, xz, zstd: by its
//                                 content, as Docker tells one) is extracted at dest; no URLs
//   ENV k=v … | ENV k v           environment of the next steps (and $k in their arguments)
//   WORKDIR dir                   relative to the previous one; created when missing
//   ARG name[=default] …          a variable for the next steps (--build-arg sets it); one
//                                 before FROM is FROM's, and an ARG name after FROM takes it
//   # comments, blank lines, "\" line continuations (comments and blank lines inside one are
//   skipped), the parser directives `# syntax=` (ignored) and `# escape=\` (no other)
// $NAME, ${NAME}, ${NAME:-word}, ${NAME:+word} are substituted in FROM, ENV, ARG, COPY, ADD and
// WORKDIR (never in RUN: its shell does), outside single quotes, as Docker does.
// Metadata-only instructions (CMD, ENTRYPOINT, LABEL, EXPOSE, MAINTAINER, VOLUME, STOPSIGNAL,
// HEALTHCHECK) mean nothing to a netroot image: kept as `ignored` steps the builder reports.
// Anything else (USER, SHELL, ONBUILD, multi-stage FROM, COPY of a here-document…) is refused
// with its line number.
// Source paths are checked here: one that leaves the context (absolute paths are taken inside
// it, as Docker does; ".." may not climb above it) is refused.

export class BuildfileError extends Error {
  constructor(readonly line: number, message: string) {
    // the Buildfile's own text cut: a word of 1 MiB made a message of 1 MiB
    super(
      `Buildfile line ${line}: ${message.length > 400 ? message.slice(0, 400) + "…" : message}`,
    );
    this.name = "BuildfileError";
  }
}

export type BuildStep =
  | { kind: "RUN"; line: number; text: string; argv?: string[]; shell?: string }
  | {
    kind: "COPY" | "ADD";
    line: number;
    text: string;
    /** Paths inside the context, normalised, "/"-rooted ("/" is the context itself). */
    sources: string[];
    dest: string;
    /** --chown's user and group, names or numbers: names are the image's, looked up when run. */
    chown?: { user: string; group?: string };
    chmod?: number;
  }
  | { kind: "ENV"; line: number; text: string; vars: [string, string][] }
  | { kind: "ARG"; line: number; text: string; name: string; value?: string }
  | { kind: "WORKDIR"; line: number; text: string; dir: string }
  | { kind: "ignored"; line: number; text: string; instruction: string };

export interface Buildfile {
  /** The FROM image name, or null for scratch. */
  from: string | null;
  fromLine: number;
  steps: BuildStep[];
  /** --build-arg names no ARG declares (docker build warns of them too). */
  unused: string[];
}

const IGNORED = new Set([
  "CMD",
  "ENTRYPOINT",
  "LABEL",
  "EXPOSE",
  "MAINTAINER",
  "VOLUME",
  "STOPSIGNAL",
  "HEALTHCHECK",
]);

/** What a Docker user reads instead of an instruction refused. */
const REFUSED: Record<string, string> = {
  USER: "RUN runs as root here (runuser or su in the RUN; a service's user is its unit's User=)",
  SHELL: 'RUN runs /bin/sh -c here (or any shell in the exec form: RUN ["bash", "-c", "…"])',
  ONBUILD: "nothing builds upon a netroot image's Buildfile",
};

/** Limits: a Buildfile is small; a hostile one must not grow anything without bound. */
const MAX_BYTES = 1 << 20, MAX_STEPS = 1000;

/** A logical line: its instruction's text, the Buildfile line it starts on, and the bodies of
 *  the here-documents its words open (`<<EOF`… up to a line `EOF`), in order. */
interface LogicalLine {
  line: number;
  text: string;
  heredocs: { name: string; strip: boolean; body: string[]; raw: string[] }[];
}

/** `<<EOF`, `<<-EOF`, `<<"EOF"` as one word outside quotes, as BuildKit reads them. */
function heredocWords(text: string): { name: string; strip: boolean }[] {
  const out: { name: string; strip: boolean }[] = [];
  let quote = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === quote) quote = "";
      else if (c === "\\" && quote === '"') i++;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === "\\") i++;
    else if (c === "<" && text[i + 1] === "<" && text[i + 2] !== "<" && text[i - 1] !== "<") {
      const m = /^<<(-?)(["']?)([A-Za-z0-9_.-]+)\2(?=\s|$)/.exec(text.slice(i));
      if (m) {
        out.push({ name: m[3], strip: m[1] === "-" });
        i += m[0].length - 1;
      }
    }
  }
  return out;
}

/**
 * Logical lines: continuations joined, comments and blank lines dropped (inside a continuation
 * too, as Docker does), each with its first line; a here-document's lines taken as they are.
 * The parser directives above the first instruction are read: `escape` may only be "\\" (a
 * Windows Dockerfile's "`" made every continuation a new instruction).
 */
function logicalLines(text: string): LogicalLine[] {
  const out: LogicalLine[] = [];
  const lines = text.replace(/\r\n/g, "\n").split("\n");
  let cur: string | null = null, start = 0, directives = true;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    const trimmed = raw.trim();
    if (directives) {
      const d = /^#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$/.exec(trimmed);
      if (d && d[1].toLowerCase() === "escape" && d[2] !== "\\") {
        throw new BuildfileError(i + 1, `# escape=${d[2]}: only \\ is the escape character here`);
      }
      if (!d) directives = false;
    }
    if (trimmed.startsWith("#") || trimmed === "") continue;
    if (cur === null) start = i + 1;
    const cont = /\\\s*$/.test(raw);
    const piece = cont ? raw.replace(/\\\s*$/, "") : raw;
    cur = cur === null ? piece.trimStart() : cur + piece;
    if (cont) continue;
    const logical: LogicalLine = { line: start, text: cur.trim(), heredocs: [] };
    cur = null;
    const ins = logical.text.split(/\s/, 1)[0].toUpperCase();
    const opened = ["RUN", "COPY", "ADD"].includes(ins) ? heredocWords(logical.text) : [];
    for (const h of opened) {
      const body: string[] = [], rawLines: string[] = [];
      for (;;) {
        if (++i >= lines.length) {
          throw new BuildfileError(start, `here-document <<${h.name} has no line ${h.name}`);
        }
        const l = lines[i];
        rawLines.push(l);
        if ((h.strip ? l.replace(/^\t+/, "") : l) === h.name) break;
        body.push(h.strip ? l.replace(/^\t+/, "") : l);
      }
      logical.heredocs.push({ ...h, body, raw: rawLines });
    }
    out.push(logical);
  }
  if (cur !== null && cur.trim()) out.push({ line: start, text: cur.trim(), heredocs: [] });
  return out;
}

/** A JSON array of strings (exec form), or undefined when `s` is not one. */
function jsonArray(s: string, line: number): string[] | undefined {
  if (!s.startsWith("[")) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(s);
  } catch {
    return undefined; // Docker too takes a malformed array as shell form
  }
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) {
    throw new BuildfileError(line, "the exec form must be a JSON array of strings");
  }
  return v;
}

/**
 * What substitutions may still add to one Buildfile. Values are substituted into values
 * (ENV A=$A$A$A$A quadruples A at each line): a few short lines would make gigabytes.
 */
export interface Budget {
  left: number;
}

/**
 * Words of `s` as Docker's shell lexer makes them for ENV, ARG, COPY, WORKDIR and FROM: "…" and
 * '…' quoting, \ escapes, and with `vars` $NAME, ${NAME}, ${NAME:-word} and ${NAME:+word}
 * substituted, outside single quotes only (ENV A='$B' is "$B", as `\$B` is). A value substituted
 * is never split into words. `split` false: one word, blanks kept (WORKDIR /a b, ENV's old form).
 */
export function words(
  s: string,
  line: number,
  vars?: Map<string, string>,
  budget: Budget = { left: MAX_BYTES },
  split = true,
  depth = 0,
): string[] {
  const out: string[] = [];
  let cur = "", quote = "", has = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote === "'") {
      if (c === "'") quote = "";
      else cur += c;
    } else if (c === "$" && vars) {
      const [value, end] = substitution(s, i, vars, line, budget, depth);
      cur += value;
      has = true;
      i = end - 1;
    } else if (quote === '"') {
      if (c === '"') quote = "";
      else if (c === "\\" && i + 1 < s.length && '"\\$'.includes(s[i + 1])) cur += s[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      has = true;
    } else if (c === "\\" && i + 1 < s.length) {
      cur += s[++i];
      has = true;
    } else if (split && /\s/.test(c)) {
      if (has || cur) out.push(cur);
      cur = "";
      has = false;
    } else {
      cur += c;
      has = true;
    }
  }
  if (quote) throw new BuildfileError(line, `unterminated ${quote} quote`);
  if (has || cur) out.push(cur);
  return out;
}

/** The substitution starting at `s[at]` ("$"): its value and the index after it. */
function substitution(
  s: string,
  at: number,
  vars: Map<string, string>,
  line: number,
  budget: Budget,
  depth = 0,
): [string, number] {
  // counted as substituted: the refusal comes before the string is built
  const sub = (v: string) => {
    if ((budget.left -= v.length) < 0) {
      throw new BuildfileError(line, "substitutions make more than 1 MiB");
    }
    return v;
  };
  const bare = /^\$([A-Za-z_][A-Za-z0-9_]*)/.exec(s.slice(at));
  if (bare) return [sub(vars.get(bare[1]) ?? ""), at + bare[0].length];
  if (s[at + 1] !== "{") return ["$", at + 1];
  // ${…}: up to its own "}", past the ${…} its word may hold
  let end = at + 2;
  for (let depth = 1; end < s.length; end++) {
    if (s[end] === "\\") end++;
    else if (s[end] === "$" && s[end + 1] === "{") depth++, end++;
    else if (s[end] === "}" && --depth === 0) break;
  }
  const m = end < s.length
    ? /^([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([\s\S]*))?$/.exec(s.slice(at + 2, end))
    : null;
  if (!m) throw new BuildfileError(line, `bad substitution ${s.slice(at, end + 1)}`);
  const [, name, op, word] = m;
  const v = vars.get(name);
  // the word is substituted (${A:-$B}) when it is used, not before
  if (op && depth >= 8) {
    // each level reads its word again: 100,000 of them took minutes of the server's thread
    throw new BuildfileError(line, "substitutions nested more than 8 deep");
  }
  const alt = () => words(word, line, vars, budget, false, depth + 1)[0] ?? "";
  if (op === "-") return [v ? sub(v) : alt(), end + 1];
  if (op === "+") return [v ? alt() : "", end + 1];
  return [sub(v ?? ""), end + 1];
}

/** $NAME, ${NAME}, ${NAME:-default}, ${NAME:+alt} from `vars` in `s`, its quotes kept. */
export function expand(
  s: string,
  vars: Map<string, string>,
  line: number,
  budget: Budget = { left: MAX_BYTES },
): string {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && s[i + 1] === "$") out += s[++i];
    else if (s[i] !== "$") out += s[i];
    else {
      const [value, end] = substitution(s, i, vars, line, budget);
      out += value;
      i = end - 1;
    }
  }
  return out;
}

/** A source path inside the context: "/"-rooted, normalised; refused when it climbs out. */
export function contextPath(p: string, line: number): string {
  const parts: string[] = [];
  for (const c of p.split("/")) {
    if (!c || c === ".") continue;
    if (c === "..") {
      if (!parts.length) {
        throw new BuildfileError(line, `${p} is outside the build context; refusing`);
      }
      parts.pop();
    } else parts.push(c);
  }
  return "/" + parts.join("/");
}

function copyStep(
  kind: "COPY" | "ADD",
  args: string,
  line: number,
  text: string,
  vars: Map<string, string>,
  budget: Budget,
): BuildStep {
  // flags first, then the sources and dest as words or a JSON array (COPY --chown=1 ["a", "/b/"])
  const flags: string[] = [];
  for (let f; (f = /^(--\S+)\s+/.exec(args));) {
    flags.push(...words(f[1], line, vars, budget));
    args = args.slice(f[0].length);
  }
  const list = jsonArray(args, line)?.map((w) => words(w, line, vars, budget, false)[0] ?? "") ??
    words(args, line, vars, budget);
  if (list.length < 2) throw new BuildfileError(line, `${kind} needs a source and a destination`);
  const step: BuildStep = {
    kind,
    line,
    text,
    sources: list.slice(0, -1).map((s) => {
      if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) {
        throw new BuildfileError(line, `${kind} ${s}: URLs are not supported (air-gapped)`);
      }
      return contextPath(s, line);
    }),
    dest: list.at(-1)!,
  };
  for (const f of flags) {
    const m = /^--(chown|chmod|link)(?:=(.*))?$/.exec(f);
    if (m?.[1] === "link" && /^(|true|false)$/.test(m[2] ?? "")) {
      // the same files, on a layer of their own in Docker: one tree here
    } else if (m?.[1] === "chown" && m[2] !== undefined) {
      const o = /^([A-Za-z0-9_.][A-Za-z0-9_.-]*)(?::([A-Za-z0-9_.][A-Za-z0-9_.-]*))?$/.exec(m[2]);
      // (2^32 - 1 is "no change" to chown: the context owner's uid would stay)
      const bad = (id?: string) =>
        id !== undefined && /^\d+$/.test(id) && Number(id) >= 2 ** 32 - 1;
      if (!o || bad(o[1]) || bad(o[2])) {
        throw new BuildfileError(line, `--chown takes USER[:GROUP] (names or ids), not ${m[2]}`);
      }
      step.chown = { user: o[1], group: o[2] };
    } else if (m?.[1] === "chmod" && m[2] !== undefined) {
      if (!/^[0-7]{3,4}$/.test(m[2])) throw new BuildfileError(line, `bad --chmod ${m[2]}`);
      step.chmod = parseInt(m[2], 8);
    } else throw new BuildfileError(line, `${kind}: unsupported flag ${f}`);
  }
  return step;
}

function envVars(
  args: string,
  line: number,
  vars: Map<string, string>,
  budget: Budget,
): [string, string][] {
  const first = /^\S*/.exec(args.trim())![0];
  if (!first) throw new BuildfileError(line, "ENV needs a name and a value");
  const name = /^[A-Za-z_][A-Za-z0-9_]*$/;
  if (!first.includes("=")) {
    // legacy form: ENV NAME the rest of the line (one word: its blanks kept, its quotes not)
    if (!name.test(first)) throw new BuildfileError(line, `bad variable name ${first}`);
    const rest = args.trim().slice(first.length).trim();
    // as Docker: `ENV A` alone is a mistake, not A set to nothing (that is `ENV A=`)
    if (!rest) throw new BuildfileError(line, `ENV ${first} needs a value (ENV ${first}=…)`);
    return [[first, words(rest, line, vars, budget, false)[0] ?? ""]];
  }
  return words(args, line, vars, budget).map((kv) => {
    const i = kv.indexOf("=");
    const k = kv.slice(0, i);
    if (i < 0 || !name.test(k)) throw new BuildfileError(line, `bad ENV item ${kv}`);
    return [k, kv.slice(i + 1)];
  });
}

/**
 * The shell text of a RUN with here-documents. `RUN <<EOF` alone runs the document as the shell's
 * script, as Docker does; otherwise the shell reads the documents itself (`RUN cat <<EOF >f`), so
 * they are given to it as written.
 */
function heredocRun(args: string, heredocs: LogicalLine["heredocs"], line: number): string {
  if (args.startsWith("[")) {
    throw new BuildfileError(line, "a here-document needs the shell form of RUN");
  }
  if (/^<<-?(["']?)[A-Za-z0-9_.-]+\1$/.test(args)) {
    const script = heredocs[0].body;
    if (script[0]?.startsWith("#!")) {
      // Docker runs it with that interpreter; /bin/sh -c would read another language as shell
      throw new BuildfileError(line, "a here-document script with #!: COPY it and RUN it");
    }
    return script.join("\n");
  }
  return [args, ...heredocs.flatMap((h) => h.raw)].join("\n");
}

export function parseBuildfile(
  text: string,
  buildArgs: Map<string, string> = new Map(),
): Buildfile {
  if (text.length > MAX_BYTES) throw new BuildfileError(1, "Buildfile larger than 1 MiB");
  if (text.includes("\0")) throw new BuildfileError(1, "Buildfile holds a NUL byte");
  // Docker's scopes: an ARG before FROM is for FROM only, its default taken by the same name's
  // ARG without one after FROM; after FROM, an ENV outweighs the ARG of its name
  const global = new Map<string, string>(), envNames = new Set<string>();
  const declared = new Set<string>();
  let vars = global;
  const budget: Budget = { left: MAX_BYTES };
  const steps: BuildStep[] = [];
  let from: string | null | undefined, fromLine = 0;
  for (const { line, text: t, heredocs } of logicalLines(text)) {
    const m = /^(\S+)\s*([\s\S]*)$/.exec(t)!;
    const ins = m[1].toUpperCase(), args = m[2];
    // (again below: one ARG line of 1 MiB names 350,000 variables, a step each)
    if (steps.length >= MAX_STEPS) throw new BuildfileError(line, "more than 1000 steps");
    if (ins === "FROM") {
      if (from !== undefined) {
        throw new BuildfileError(line, "a second FROM: multi-stage builds are not supported");
      }
      const w = words(args, line, vars, budget);
      if (w.length !== 1 && !(w.length === 3 && w[1].toUpperCase() === "AS")) {
        throw new BuildfileError(line, "FROM takes one image (FROM image [AS name])");
      }
      from = w[0].toLowerCase() === "scratch" ? null : w[0];
      fromLine = line;
      vars = new Map();
      continue;
    }
    if (ins === "ARG") {
      const w = words(args, line, vars, budget);
      if (!w.length) throw new BuildfileError(line, "ARG takes name[=default]…");
      for (const arg of w) {
        const i = arg.indexOf("=");
        const name = i < 0 ? arg : arg.slice(0, i);
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
          throw new BuildfileError(line, `bad ARG name ${name}`);
        }
        // --build-arg over the default; after FROM, a name alone takes the ARG before FROM's
        const value = buildArgs.get(name) ??
          (i < 0 ? (from === undefined ? undefined : global.get(name)) : arg.slice(i + 1));
        declared.add(name);
        if (value !== undefined && !envNames.has(name)) vars.set(name, value);
        if (from !== undefined) steps.push({ kind: "ARG", line, text: t, name, value });
        if (steps.length > MAX_STEPS) throw new BuildfileError(line, "more than 1000 steps");
      }
      continue;
    }
    if (from === undefined) {
      throw new BuildfileError(line, `${ins} before FROM (only ARG may come first)`);
    }
    if (heredocs.length && ins !== "RUN") {
      throw new BuildfileError(line, `${ins} of a here-document: put the file in the context`);
    }
    if (ins === "RUN" && heredocs.length && !args.trim().startsWith("--")) {
      steps.push({ kind: "RUN", line, text: t, shell: heredocRun(args.trim(), heredocs, line) });
    } else if (ins === "RUN") {
      if (!args.trim()) throw new BuildfileError(line, "RUN needs a command");
      const flag = /^--([a-z-]+)/.exec(args.trim());
      if (flag) {
        // BuildKit's --mount, --network, --security: before, handed to sh as its own options
        // ("sh: illegal option --", exit code 2)
        throw new BuildfileError(
          line,
          `RUN --${flag[1]} is not supported (no cache or secret mounts; the server's network)`,
        );
      }
      const argv = jsonArray(args.trim(), line);
      steps.push(
        argv ? { kind: "RUN", line, text: t, argv } : {
          kind: "RUN",
          line,
          text: t,
          shell: args.trim(),
        },
      );
    } else if (ins === "COPY" || ins === "ADD") {
      steps.push(copyStep(ins, args.trim(), line, t, vars, budget));
    } else if (ins === "ENV") {
      const kv = envVars(args, line, vars, budget);
      for (const [k, v] of kv) vars.set(k, v), envNames.add(k);
      steps.push({ kind: "ENV", line, text: t, vars: kv });
    } else if (ins === "WORKDIR") {
      const dir = words(args.trim(), line, vars, budget, false)[0];
      if (!dir) throw new BuildfileError(line, "WORKDIR takes one directory");
      steps.push({ kind: "WORKDIR", line, text: t, dir });
    } else if (IGNORED.has(ins)) {
      steps.push({ kind: "ignored", line, text: t, instruction: ins });
    } else {
      const why = REFUSED[ins] ? `: ${REFUSED[ins]}` : "";
      throw new BuildfileError(line, `unsupported instruction ${ins}${why}`);
    }
  }
  if (from === undefined) throw new BuildfileError(1, "no FROM (FROM image, or FROM scratch)");
  const unused = [...buildArgs.keys()].filter((k) => !declared.has(k));
  return { from, fromLine, steps, unused };
}
