// Function lengths in TypeScript source, for tests/function_length_test.ts: a small tokenizer
// (strings, template literals, comments, regex literals) and bracket matching, not a parser. A `{`
// opens a function body when it follows `=>`, or a parameter list `(...)` (with an optional return
// type) whose `(` follows a name that is not a statement keyword (if, for, while, switch, catch).

export interface FunctionSpan {
  /** The function's name, or the token before its parameters (`function`, `async`…). */
  name: string;
  start: number;
  end: number;
}

type Tok = { t: string; line: number };

function tokenize(src: string): Tok[] {
  const toks: Tok[] = [];
  let i = 0, line = 1;
  const braceStack: string[] = []; // "{" or "${" for template nesting
  const isIdStart = (c: string) => /[A-Za-z_$#]/.test(c);
  const isId = (c: string) => /[A-Za-z0-9_$]/.test(c);
  const regexOk = () => {
    const p = toks[toks.length - 1];
    if (!p) return true;
    if (/^[A-Za-z_$#][\w$]*$/.test(p.t)) {
      return ["return", "typeof", "case", "in", "of", "void", "throw", "delete", "new"].includes(
        p.t,
      );
    }
    if (/^[0-9]/.test(p.t) || p.t === "STR") return false;
    return !(p.t === ")" || p.t === "]" || p.t === "}");
  };
  const template = () => {
    // after opening backtick or after "}" closing ${
    while (i < src.length) {
      const c = src[i];
      if (c === "\\") {
        i += 2;
        continue;
      }
      if (c === "\n") line++;
      if (c === "`") {
        i++;
        toks.push({ t: "STR", line });
        return;
      }
      if (c === "$" && src[i + 1] === "{") {
        i += 2;
        braceStack.push("${");
        toks.push({ t: "STR", line });
        return;
      }
      i++;
    }
  };
  while (i < src.length) {
    const c = src[i];
    if (c === "\n") {
      line++;
      i++;
      continue;
    }
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === "/" && src[i + 1] === "/") {
      while (i < src.length && src[i] !== "\n") i++;
      continue;
    }
    if (c === "/" && src[i + 1] === "*") {
      i += 2;
      while (i < src.length && !(src[i] === "*" && src[i + 1] === "/")) {
        if (src[i] === "\n") line++;
        i++;
      }
      i += 2;
      continue;
    }
    if (c === '"' || c === "'") {
      i++;
      while (i < src.length && src[i] !== c) {
        if (src[i] === "\\") i++;
        i++;
      }
      i++;
      toks.push({ t: "STR", line });
      continue;
    }
    if (c === "`") {
      i++;
      template();
      continue;
    }
    if (c === "/" && regexOk()) {
      i++;
      let cls = false;
      while (i < src.length && (cls || src[i] !== "/")) {
        if (src[i] === "\\") i++;
        else if (src[i] === "[") cls = true;
        else if (src[i] === "]") cls = false;
        else if (src[i] === "\n") break;
        i++;
      }
      i++;
      while (isId(src[i] ?? "")) i++;
      toks.push({ t: "STR", line });
      continue;
    }
    if (isIdStart(c)) {
      let j = i + 1;
      while (j < src.length && isId(src[j])) j++;
      toks.push({ t: src.slice(i, j), line });
      i = j;
      continue;
    }
    if (/[0-9]/.test(c)) {
      let j = i + 1;
      while (j < src.length && /[\w.]/.test(src[j])) j++;
      toks.push({ t: src.slice(i, j), line });
      i = j;
      continue;
    }
    if (c === "=" && src[i + 1] === ">") {
      toks.push({ t: "=>", line });
      i += 2;
      continue;
    }
    if (c === "{") braceStack.push("{");
    if (c === "}") {
      const top = braceStack.pop();
      if (top === "${") {
        i++;
        template();
        continue;
      }
    }
    toks.push({ t: c, line });
    i++;
  }
  return toks;
}

const notFn = new Set(["if", "for", "while", "switch", "catch", "with"]);
/** Tokens after which a `{` is an object type or literal, not a body. */
const typeContext = new Set([":", "|", "&", "<", ",", "(", "=", "[", "?", "return"]);
/** Tokens a return type is made of, besides names and bracketed groups. */
const typeTokens = new Set([".", "|", "&", "?", ":", "=>", "-"]);
const stopWords = new Set([
  "else",
  "try",
  "finally",
  "do",
  "class",
  "interface",
  "extends",
  "implements",
  "return",
  "enum",
  "namespace",
  "type",
  "case",
  "default",
]);

/** Every function in a TypeScript source (declarations, methods, arrows with a block body), with
 *  the lines it spans, from its name or parameters to its closing brace; nested ones included. */
export function functions(src: string): FunctionSpan[] {
  const toks = tokenize(src);
  // match brackets
  const match = new Map<number, number>();
  const stack: number[] = [];
  toks.forEach((k, idx) => {
    if ("({[".includes(k.t) && k.t.length === 1) stack.push(idx);
    else if (")}]".includes(k.t) && k.t.length === 1) {
      const o = stack.pop();
      if (o !== undefined) {
        match.set(o, idx);
        match.set(idx, o);
      }
    }
  });
  const isName = (t: string | undefined) => t !== undefined && /^[A-Za-z_$#][\w$]*$/.test(t);
  /** The `<` of the generic argument list ending at the `>` at `q`. */
  const genericStart = (q: number) => {
    for (let depth = 0; q >= 0; q--) {
      if (toks[q].t === ">") depth++;
      else if (toks[q].t === "<" && --depth === 0) return q;
    }
    return -1;
  };
  /** The `)` closing the parameters of the function whose body opens at `body`, or -1: walks
   *  back over a return type (names, `.`, `|`, `&`, `?`, generics, `[]`, object types). */
  const paramsEnd = (body: number) => {
    let q = body - 1;
    if (toks[q]?.t === ")") return q;
    for (; q >= 0; q--) {
      const t = toks[q].t;
      if (t === ":" && toks[q - 1]?.t === ")") return q - 1;
      if (t === ">") q = genericStart(q);
      else if ((t === "]" || t === "}") && match.has(q)) {
        const open = match.get(q)!;
        if (t === "}" && !typeContext.has(toks[open - 1]?.t)) return -1;
        q = open;
      } else if (!isName(t) && !typeTokens.has(t) && !/^STR$/.test(t)) return -1;
      else if (stopWords.has(t)) return -1;
      if (q < 0) return -1;
    }
    return -1;
  };
  const out: FunctionSpan[] = [];
  toks.forEach((k, idx) => {
    if (k.t !== "{" || typeContext.has(toks[idx - 1]?.t)) return; // an object type or literal
    const end = match.get(idx);
    if (end === undefined) return;
    let start: number, name: string;
    if (toks[idx - 1]?.t === "=>") {
      const params = toks[idx - 2]?.t === ")" ? match.get(idx - 2) ?? idx - 2 : idx - 2;
      start = params;
      const before = toks[params - 1]?.t === "async" ? params - 2 : params - 1;
      name = toks[before]?.t === "=" && isName(toks[before - 1]?.t) ? toks[before - 1].t : "=>";
    } else {
      const close = paramsEnd(idx);
      const open = close < 0 ? undefined : match.get(close);
      if (open === undefined) return;
      let before = open - 1;
      if (toks[before]?.t === ">") before = genericStart(before) - 1;
      name = toks[before]?.t ?? "";
      if (notFn.has(name) || !isName(name)) return;
      start = before;
    }
    out.push({ name, start: toks[Math.max(0, start)].line, end: toks[end].line });
  });
  return out;
}
