// The build context's wildcards and its .dockerignore, as Docker has them: Go's filepath.Match
// (`*`, `?`, `[a-z]`, `[^…]`, `\x`) per path component, and `**` for any number of components in
// .dockerignore. Pure: names in, yes or no out. Matching never uses a regular expression (a
// pattern of 60 `*a` took exponential time) and never takes more than the product of the
// pattern's and the name's lengths.
import { UserError } from "../errors.ts";

/** One character, or `*` (any run of them), of a pattern's component. */
export type GlobToken = { star: true } | { star?: false; test: (c: string) => boolean };

/** A component's wildcards: `*`, `?`, `[a-z]`, `[^…]`, `\x`, as Go's filepath.Match has them. */
export function globPattern(part: string, src: string): GlobToken[] {
  const tokens: GlobToken[] = [];
  for (let i = 0; i < part.length; i++) {
    const c = part[i];
    // a run of `*` is one (each would be a backtrack point of its own)
    if (c === "*") {
      if (!tokens.at(-1)?.star) tokens.push({ star: true });
    } else if (c === "?") tokens.push({ test: () => true });
    else if (c === "[") {
      const end = part.indexOf("]", i + 2);
      if (end < 0) throw new UserError(`${src}: bad pattern (a [ without ])`);
      let set = part.slice(i + 1, end);
      const negated = set[0] === "^" || set[0] === "!";
      if (negated) set = set.slice(1);
      const ranges: [string, string][] = [];
      for (let j = 0; j < set.length; j++) {
        const lo = set[j] === "\\" && j + 1 < set.length ? set[++j] : set[j];
        if (set[j + 1] === "-" && j + 2 < set.length) ranges.push([lo, set[j += 2]]);
        else ranges.push([lo, lo]);
      }
      tokens.push({ test: (x) => ranges.some(([l, h]) => l <= x && x <= h) !== negated });
      i = end;
    } else {
      const lit = c === "\\" && i + 1 < part.length ? part[++i] : c;
      tokens.push({ test: (x) => x === lit });
    }
  }
  return tokens;
}

/** Whether `name` matches `tokens`: one backtrack point (the last `*`), so time is at most the
 *  product of their lengths (a regular expression of 100 `*a` took exponential time). */
export function globMatch(tokens: GlobToken[], name: string): boolean {
  let t = 0, n = 0, starT = -1, starN = 0;
  while (n < name.length) {
    const tok = tokens[t];
    if (tok && !tok.star && tok.test(name[n])) t++, n++;
    else if (tok?.star) starT = t++, starN = n;
    else if (starT >= 0) t = starT + 1, n = ++starN;
    else return false;
  }
  while (tokens[t]?.star) t++;
  return t === tokens.length;
}

/** The .dockerignore rules of a context: each a pattern's components, excluding or (`!`) not. */
export interface IgnoreRules {
  rules: { parts: ("**" | GlobToken[])[]; exclude: boolean }[];
}

/** Patterns a .dockerignore may hold: each is tried on every file copied and its parents. */
const MAX_RULES = 200;
/** A pattern's length: a path's at most (PATH_MAX). Each is matched against every component of
 *  every path copied, on the server's thread: 200 patterns of 5,000 characters took 6 s for each
 *  file 200 directories deep. */
const MAX_PATTERN = 4096;

/** .dockerignore's text as rules: `#` comments and blank lines skipped, blanks trimmed, each
 *  pattern cleaned as a path below the context (a leading `/` or `./` means the context). */
export function parseIgnore(text: string): IgnoreRules {
  const rules: IgnoreRules["rules"] = [];
  for (const raw of text.split("\n")) {
    let p = raw.trim();
    if (!p || p.startsWith("#")) continue;
    const exclude = !p.startsWith("!");
    if (!exclude) p = p.slice(1).trim();
    const parts: string[] = [];
    for (const c of p.split("/")) {
      if (!c || c === ".") continue;
      if (c === "..") parts.pop();
      else if (c !== "**" || parts.at(-1) !== "**") parts.push(c); // `**/**` is `**`
    }
    if (!parts.length) continue;
    if (p.length > MAX_PATTERN) {
      throw new UserError(
        `.dockerignore: a pattern of more than ${MAX_PATTERN} characters (${p.slice(0, 60)}…)`,
      );
    }
    if (rules.length >= MAX_RULES) {
      throw new UserError(`.dockerignore: more than ${MAX_RULES} patterns`);
    }
    rules.push({
      parts: parts.map((c) => c === "**" ? "**" : globPattern(c, `.dockerignore: ${p}`)),
      exclude,
    });
  }
  return { rules };
}

/** Whether path `rel` (components below the context) is left out: the last rule matching it or
 *  one of its parent directories decides, as Docker's MatchesOrParentMatches does. */
export function ignored(ignore: IgnoreRules, rel: string[]): boolean {
  let out = false;
  for (const r of ignore.rules) {
    if (matchParts(r.parts, rel).some((m, n) => m && n > 0)) out = r.exclude;
  }
  return out;
}

/** For each n, whether the pattern's components match the first n of `rel` (`**`: any number
 *  of them): the path and its parents at once. */
function matchParts(parts: IgnoreRules["rules"][0]["parts"], rel: string[]): boolean[] {
  const n = rel.length;
  // can[j]: the components matched so far can end just before rel[j]
  let can = new Array<boolean>(n + 1).fill(false);
  can[0] = true;
  for (const part of parts) {
    const next = new Array<boolean>(n + 1).fill(false);
    if (part === "**") {
      // any number of components from the first place reached on (not from each: n² a `**`)
      const first = can.indexOf(true);
      if (first >= 0) next.fill(true, first);
    } else {
      for (let j = 0; j < n; j++) if (can[j] && globMatch(part, rel[j])) next[j + 1] = true;
    }
    can = next;
  }
  return can;
}

/** Whether a copy of the context leaves out the entry at `rel`: an excluded directory is still
 *  walked when a `!` rule may take back something below it (`!keep/.env`: keep/ only). */
export function skipped(ignore: IgnoreRules, rel: string[], isDirectory: boolean): boolean {
  if (!ignored(ignore, rel)) return false;
  return !isDirectory || !ignore.rules.some((r) => !r.exclude && mayMatchBelow(r.parts, rel));
}

/** Whether a path below (or at) directory `rel` may match the pattern's components. */
function mayMatchBelow(parts: IgnoreRules["rules"][0]["parts"], rel: string[]): boolean {
  // the pattern's positions reachable having read rel so far (`**` may match nothing)
  const close = (states: Set<number>) => {
    for (const s of states) if (parts[s] === "**") states.add(s + 1);
    return states;
  };
  let states = close(new Set([0]));
  for (const c of rel) {
    const next = new Set<number>();
    for (const s of states) {
      const part = parts[s];
      if (part === "**") next.add(s);
      else if (part && globMatch(part, c)) next.add(s + 1);
    }
    states = close(next);
  }
  return states.size > 0;
}
