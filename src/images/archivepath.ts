// Paths taken from an imported archive (member names, hard link targets, whiteouts, manifest
// references) and the image tree they land in. The rules (docs/architecture.md, "Image import"):
//   - a member name is normalised ("./a//b/" → "/a/b") and refused when it is absolute or holds a
//     ".." component (GNU tar, our extractor, would strip or skip it: we refuse instead);
//   - nothing is ever done through a symlink or a file in the tree: `TreeView` looks at a path
//     only through real directories (lstat from the root down), so neither a member the image
//     planted nor a lower layer's symlink can lead a delete, chmod, chown or utime outside.
import { UserError } from "../errors.ts";

/** "/a/b/c" → "/", "/a", "/a/b" */
export function ancestorsOf(rel: string): string[] {
  const out: string[] = [];
  let i = rel.indexOf("/", 1);
  if (rel !== "/") out.push("/");
  while (i > 0) {
    out.push(rel.slice(0, i));
    i = rel.indexOf("/", i + 1);
  }
  return out;
}

/** A name as it can be shown on one line (control characters escaped). */
export function shown(name: string): string {
  // deno-lint-ignore no-control-regex
  return /[\x00-\x1f\x7f]/.test(name) ? JSON.stringify(name) : name;
}

/** The one-line refusal of a hostile archive: names the member and says why. */
/** The most members an archive may hold: an import keeps state for every member until it ends
 *  (a 5.8 MB archive of 4 million empty files held 4.9 GB), and no system image comes near (a
 *  debootstrap tree 8,000, a desktop's 400,000). */
export const MAX_MEMBERS = 2_000_000;

export function tooManyMembers(what: string, max: number): UserError {
  return new UserError(
    `${what} has more than ${max} members; refusing (an import keeps state for each of them)`,
  );
}

export function unsafe(what: string, member: string, why: string): UserError {
  return new UserError(`${what}: ${shown(member)} ${why}; refusing (unsafe image)`);
}

/**
 * An archive path as a "/"-rooted path inside the image ("./usr/bin/" → "/usr/bin", "./" → "/"),
 * or why it cannot be one.
 */
export function archivePath(name: string): { rel: string; bad?: undefined } | { bad: string } {
  if (name.startsWith("/")) return { bad: "is an absolute path" };
  const parts = name.split("/").filter((p) => p && p !== ".");
  if (parts.includes("..")) return { bad: "has a '..' component" };
  return { rel: "/" + parts.join("/") };
}

/** One archive member as GNU tar lists it (`tar -tv`), names as stored. */
export interface Member {
  name: string;
  kind: "dir" | "symlink" | "hardlink" | "other";
  /** Symlink or hard link target, as stored. */
  link?: string;
  /** Bytes of content (0 for directories, links and devices). */
  size: number;
  /** Listed more than once with different types (e.g. a directory, then a symlink). */
  retyped?: boolean;
}

/** A member with its place in the image: `rel` ("/"-rooted), and `linkRel` for a hard link. */
export interface Placed extends Member {
  rel: string;
  linkRel?: string;
}

/** Where a member goes in the image; a hostile name or hard link target is refused. */
export function place(m: Member, what: string): Placed {
  const p = archivePath(m.name);
  if (p.bad !== undefined) throw unsafe(what, m.name, p.bad);
  if (p.rel === "/" && m.kind !== "dir") throw unsafe(what, m.name, "names the image root");
  if (m.kind !== "hardlink") return { ...m, rel: p.rel };
  const t = archivePath(m.link ?? "");
  if (t.bad !== undefined) {
    throw unsafe(what, m.name, `is a hard link to ${shown(m.link!)}, which ${t.bad}`);
  }
  if (t.rel === "/") throw unsafe(what, m.name, "is a hard link to the image root");
  return { ...m, rel: p.rel, linkRel: t.rel };
}

type Kind = "dir" | "symlink" | "other" | "absent";

/** Where a path would lead through something that is not a real directory. */
export interface Blocker {
  at: string;
  kind: "symlink" | "other";
}

/**
 * An image tree seen without following any symlink: every path is looked at from the root down
 * with lstat, and a component that is a symlink or a file stops the walk. Results are cached:
 * call `forget` after changing the tree.
 */
export class TreeView {
  #kinds = new Map<string, Kind>();

  constructor(readonly root: string) {}

  host(rel: string): string {
    return rel === "/" ? this.root : this.root + rel;
  }

  /** lstat kind of rel; only called once its ancestors are known to be real directories. */
  #kind(rel: string): Kind {
    let k = this.#kinds.get(rel);
    if (k === undefined) {
      const st = lstatOrNull(this.host(rel));
      k = !st ? "absent" : st.isDirectory ? "dir" : st.isSymlink ? "symlink" : "other";
      this.#kinds.set(rel, k);
    }
    return k;
  }

  /** The first ancestor of rel that exists and is not a real directory (undefined: none). */
  blocker(rel: string): Blocker | undefined {
    for (const a of ancestorsOf(rel)) {
      const k = this.#kind(a);
      if (k === "absent") return undefined;
      if (k !== "dir") return { at: a, kind: k };
    }
    return undefined;
  }

  /** lstat of rel when it exists and is reached through real directories only; else null. */
  lstat(rel: string): Deno.FileInfo | null {
    if (this.blocker(rel)) return null;
    return lstatOrNull(this.host(rel));
  }

  /** rel's host path when rel is a real directory reached through real directories. */
  dir(rel: string): string | undefined {
    return !this.blocker(rel) && this.#kind(rel) === "dir" ? this.host(rel) : undefined;
  }

  forget(): void {
    this.#kinds.clear();
  }
}

export function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw e;
  }
}
