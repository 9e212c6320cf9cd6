// The Buildfile of `netroot image build`: a Dockerfile subset, parsed into steps. Pure (text in,
// steps out; no file system): the builder (src/images/build.ts) runs them.
//
//   FROM image|scratch            first instruction (ARGs may precede it); one stage only
//   RUN cmd | RUN ["exe", "arg"]  /bin/sh -c cmd inside the container, or the exec form
//   COPY [--chown=U:G] [--chmod=MODE] src… dest     sources inside the build context
//   ADD  (the same)               a local tarball source is extracted at dest; no URLs
//   ENV k=v … | ENV k v           environment of the next steps (and $k in their arguments)
//   WORKDIR dir                   relative to the previous one; created when missing
//   ARG name[=default]            a variable for the next steps (no --build-arg yet)
//   # comments, blank lines, "\" line continuations (comment lines inside one are skipped)
// Metadata-only instructions (CMD, ENTRYPOINT, LABEL, EXPOSE, MAINTAINER, VOLUME, STOPSIGNAL,
// HEALTHCHECK) mean nothing to a netroot image: kept as `ignored` steps the builder reports.
// Anything else (USER, SHELL, ONBUILD, multi-stage FROM…) is refused with its line number.
// Source paths are checked here: one that leaves the context (absolute paths are taken inside
// it, as Docker does; ".." may not climb above it) is refused.

export class BuildfileError extends Error {
  constructor(readonly line: number, message: string) {
    super(`Buildfile line ${line}: ${message}`);
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
    chown?: { uid: number; gid: number };
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

/** Limits: a Buildfile is small; a hostile one must not grow anything without bound. */
const MAX_BYTES = 1 << 20, MAX_STEPS = 1000;

/** Logical lines: continuations joined, comments and blanks dropped, each with its first line. */
function logicalLines(text: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  const lines = text.replace(/\r\n/g, "\n").split("\n");
  let cur: string | null = null, start = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    const trimmed = raw.trim();
    if (trimmed.startsWith("#") || (cur === null && trimmed === "")) continue;
    if (cur === null) start = i + 1;
    const cont = /\\\s*$/.test(raw);
    const piece = cont ? raw.replace(/\\\s*$/, "") : raw;
    cur = cur === null ? piece.trimStart() : cur + piece;
    if (!cont) {
      if (cur.trim()) out.push({ line: start, text: cur.trim() });
      cur = null;
    }
  }
  if (cur !== null && cur.trim()) out.push({ line: start, text: cur.trim() });
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

/** Words split on blanks, with "…" and '…' quoting and \ escapes (ENV, ARG, COPY). */
export function words(s: string, line: number): string[] {
  const out: string[] = [];
  let cur = "", quote = "", has = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === quote) quote = "";
      else if (c === "\\" && quote === '"' && i + 1 < s.length) cur += s[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      has = true;
    } else if (c === "\\" && i + 1 < s.length) {
      cur += s[++i];
      has = true;
    } else if (/\s/.test(c)) {
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

/**
 * What substitutions may still add to one Buildfile. Values are substituted into values
 * (ENV A=$A$A$A$A quadruples A at each line): a few short lines would make gigabytes.
 */
export interface Budget {
  left: number;
}

/** $NAME, ${NAME}, ${NAME:-default}, ${NAME:+alt} from `vars`; \$ stays a literal $. */
export function expand(
  s: string,
  vars: Map<string, string>,
  line: number,
  budget: Budget = { left: MAX_BYTES },
): string {
  // counted as substituted: the refusal comes before the string is built
  const sub = (v: string) => {
    if ((budget.left -= v.length) < 0) {
      throw new BuildfileError(line, "substitutions make more than 1 MiB");
    }
    return v;
  };
  return s.replace(
    /\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\$\{[^}]*\}?/g,
    (m, braced, op, word, bare) => {
      if (m === "\\$") return "$";
      const name = braced ?? bare;
      if (name === undefined) throw new BuildfileError(line, `bad substitution ${m}`);
      const v = vars.get(name);
      if (op === "-") return sub(v ? v : word);
      if (op === "+") return v ? word : "";
      return sub(v ?? "");
    },
  );
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
  let list = jsonArray(args, line);
  const flags: string[] = [];
  if (!list) {
    list = words(args, line);
    while (list.length && list[0].startsWith("--")) flags.push(list.shift()!);
  }
  list = list.map((w) => expand(w, vars, line, budget));
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
    const m = /^--(chown|chmod)=(.*)$/.exec(f);
    if (m?.[1] === "chown") {
      const o = /^(\d+)(?::(\d+))?$/.exec(m[2]);
      if (!o) throw new BuildfileError(line, `--chown takes numeric UID[:GID], not ${m[2]}`);
      step.chown = { uid: Number(o[1]), gid: Number(o[2] ?? o[1]) };
    } else if (m?.[1] === "chmod") {
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
  const w = words(args, line);
  if (!w.length) throw new BuildfileError(line, "ENV needs a name and a value");
  const name = /^[A-Za-z_][A-Za-z0-9_]*$/;
  if (!w[0].includes("=")) {
    // legacy form: ENV NAME the rest of the line
    if (!name.test(w[0])) throw new BuildfileError(line, `bad variable name ${w[0]}`);
    const rest = args.trim().slice(args.trim().indexOf(w[0]) + w[0].length).trim();
    return [[w[0], expand(rest, vars, line, budget)]];
  }
  return w.map((kv) => {
    const i = kv.indexOf("=");
    const k = kv.slice(0, i);
    if (i < 0 || !name.test(k)) throw new BuildfileError(line, `bad ENV item ${kv}`);
    return [k, expand(kv.slice(i + 1), vars, line, budget)];
  });
}

export function parseBuildfile(text: string): Buildfile {
  if (text.length > MAX_BYTES) throw new BuildfileError(1, "Buildfile larger than 1 MiB");
  if (text.includes("\0")) throw new BuildfileError(1, "Buildfile holds a NUL byte");
  const vars = new Map<string, string>();
  const budget: Budget = { left: MAX_BYTES };
  const steps: BuildStep[] = [];
  let from: string | null | undefined, fromLine = 0;
  for (const { line, text: t } of logicalLines(text)) {
    const m = /^(\S+)\s*([\s\S]*)$/.exec(t)!;
    const ins = m[1].toUpperCase(), args = m[2];
    if (steps.length >= MAX_STEPS) throw new BuildfileError(line, "more than 1000 steps");
    if (ins === "FROM") {
      if (from !== undefined) {
        throw new BuildfileError(line, "a second FROM: multi-stage builds are not supported");
      }
      const w = words(expand(args, vars, line, budget), line);
      if (w.length !== 1 && !(w.length === 3 && w[1].toUpperCase() === "AS")) {
        throw new BuildfileError(line, "FROM takes one image (FROM image [AS name])");
      }
      from = w[0].toLowerCase() === "scratch" ? null : w[0];
      fromLine = line;
      continue;
    }
    if (ins === "ARG") {
      const w = words(args, line);
      if (w.length !== 1) throw new BuildfileError(line, "ARG takes one name[=default]");
      const i = w[0].indexOf("=");
      const name = i < 0 ? w[0] : w[0].slice(0, i);
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
        throw new BuildfileError(line, `bad ARG name ${name}`);
      }
      const value = i < 0 ? undefined : expand(w[0].slice(i + 1), vars, line, budget);
      if (value !== undefined) vars.set(name, value);
      steps.push({ kind: "ARG", line, text: t, name, value });
      continue;
    }
    if (from === undefined) {
      throw new BuildfileError(line, `${ins} before FROM (only ARG may come first)`);
    }
    if (ins === "RUN") {
      if (!args.trim()) throw new BuildfileError(line, "RUN needs a command");
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
      for (const [k, v] of kv) vars.set(k, v);
      steps.push({ kind: "ENV", line, text: t, vars: kv });
    } else if (ins === "WORKDIR") {
      const w = words(expand(args, vars, line, budget), line);
      if (w.length !== 1) throw new BuildfileError(line, "WORKDIR takes one directory");
      steps.push({ kind: "WORKDIR", line, text: t, dir: w[0] });
    } else if (IGNORED.has(ins)) {
      steps.push({ kind: "ignored", line, text: t, instruction: ins });
    } else {
      throw new BuildfileError(line, `unsupported instruction ${ins}`);
    }
  }
  if (from === undefined) throw new BuildfileError(1, "no FROM (FROM image, or FROM scratch)");
  return { from, fromLine, steps };
}
