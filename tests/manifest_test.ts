import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  compareBytes,
  diffManifests,
  MANIFEST_HEADER,
  type ManifestEntry,
  manifestLines,
  manifestText,
  parseEntry,
  parseManifest,
  serializeEntry,
} from "../contract/manifest.ts";

const base = { mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1_600_000_000 };
const sample: ManifestEntry[] = [
  { path: "/", type: "dir", ...base },
  { path: "/bin", type: "symlink", ...base, mode: 0o777, target: "usr/bin" },
  {
    path: "/usr/bin/ping",
    type: "file",
    ...base,
    size: 35664,
    sha256: "a".repeat(64),
    xattrs: { "security.capability": "AQAAAgAgAAAAAAAAAAAAAAAAAAA=", "user.a,b=c": "eA==" },
  },
  { path: "/usr/bin/ping6", type: "hardlink", ...base, size: 35664, target: "/usr/bin/ping" },
  { path: "/dev/null", type: "char", ...base, mode: 0o666, rdev: { major: 1, minor: 3 } },
  {
    path: "/usr/bin/su",
    type: "file",
    ...base,
    mode: 0o4755,
    uid: 0,
    gid: 4,
    sha256: "b".repeat(64),
  },
  { path: "/tmp", type: "dir", ...base, mode: 0o1777 },
  { path: "/odd/tab\there\nnewline\\back", type: "fifo", ...base, mtime: -5 },
  { path: "/odd/ünï 😀", type: "symlink", ...base, target: "a\tb" },
];

Deno.test("serializeEntry/parseEntry round-trip every type and awkward names", () => {
  for (const e of sample) {
    const line = serializeEntry(e);
    assert.ok(!line.includes("\n"), "one line");
    assert.equal(line.split("\t").length, 11, "no raw tab inside fields");
    assert.deepEqual(parseEntry(line), e);
  }
  assert.equal(
    serializeEntry(sample[4]),
    "/dev/null\tchar\t0666\t0\t0\t0\t1600000000\t\t\t1,3\t",
  );
  assert.match(serializeEntry(sample[5]), /\t4755\t/);
});

Deno.test("manifest text is canonical: sorted by byte order, header, same entries → same id", () => {
  const text = manifestText(sample);
  const shuffled = manifestText([...sample].reverse());
  assert.equal(text, shuffled);
  const id = (s: string) => createHash("sha256").update(s).digest("hex");
  assert.equal(id(text), id(shuffled));
  assert.ok(text.startsWith(MANIFEST_HEADER + "\n") && text.endsWith("\n"));
  const paths = parseManifest(text).map((e) => e.path);
  // "/usr/bin/ping" < "/usr/bin/ping6" < "/usr/bin/su"; "/odd/…" before "/tmp"
  assert.deepEqual(paths, [
    "/",
    "/bin",
    "/dev/null",
    "/odd/tab\there\nnewline\\back",
    "/odd/ünï 😀",
    "/tmp",
    "/usr/bin/ping",
    "/usr/bin/ping6",
    "/usr/bin/su",
  ]);
  // one changed bit changes the id
  const changed = sample.map((e) => e.path === "/tmp" ? { ...e, mode: 0o777 } : e);
  assert.notEqual(id(manifestText(changed)), id(text));
});

Deno.test("compareBytes is UTF-8 byte order (astral characters after U+FFxx)", () => {
  const enc = new TextEncoder();
  const words = ["/a", "/a/b", "/a-b", "/\uff01", "/😀", "/Z", "/é", ""];
  const byBytes = [...words].sort((a, b) => {
    const x = enc.encode(a), y = enc.encode(b);
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  });
  assert.deepEqual([...words].sort(compareBytes), byBytes);
  assert.ok(compareBytes("/😀", "/\uff01") > 0); // plain JS order says the opposite
});

Deno.test("manifestLines streams and rejects bad input with a clear error", () => {
  const text = manifestText(sample);
  const it = manifestLines(text);
  assert.equal(it.next().value!.path, "/");
  assert.equal([...it].length, sample.length - 1);
  assert.throws(() => [...manifestLines("netroot-manifest 9\n")], /unsupported header/);
  assert.throws(() => parseEntry("/x\tfile\t0644\t0\t0"), /expected 11/);
  assert.throws(() => parseEntry("/x\tweird\t0644\t0\t0\t0\t0\t\t\t\t"), /unknown type/);
  assert.throws(() => parseEntry("x\tfile\t0644\t0\t0\t0\t0\t\t\t\t"), /absolute/);
  assert.throws(() => parseEntry("/x\tfile\t0644\t0\t0\t0\t0\tnothex\t\t\t"), /sha256/);
  assert.throws(() => parseEntry("/x\\q\tfile\t0644\t0\t0\t0\t0\t\t\t\t"), /escape/);
  // a hybrid node joins these paths to its copy: none may name something outside it
  for (const p of ["/..", "/a/../../b", "/a/.", "//a", "/a/", "/a\\x2f..\\x2fb"]) {
    assert.throws(() => parseEntry(`${p}\tfile\t0644\t0\t0\t0\t0\t\t\t\t`), /normalised/, p);
  }
  assert.throws(() => parseEntry("/x\thardlink\t0644\t0\t0\t0\t0\t\t/../y\t\t"), /normalised/);
  assert.equal(parseEntry("/..x/...\tsymlink\t0777\t0\t0\t0\t0\t\t../../y\t\t").target, "../../y");
  assert.deepEqual(parseManifest(MANIFEST_HEADER + "\n"), []);
});

Deno.test("diffManifests: added, removed, changed in one merge pass", () => {
  const old = parseManifest(manifestText(sample));
  const next = parseManifest(manifestText([
    ...sample.filter((e) => e.path !== "/tmp" && e.path !== "/usr/bin/su"),
    { path: "/usr/bin/su", type: "file", ...base, mode: 0o755, sha256: "b".repeat(64) },
    { path: "/new", type: "dir", ...base },
  ]));
  const d = [...diffManifests(old, next)].map((c) => [
    c.path,
    c.old ? (c.new ? "changed" : "removed") : "added",
  ]);
  assert.deepEqual(d, [["/new", "added"], ["/tmp", "removed"], ["/usr/bin/su", "changed"]]);
  assert.deepEqual([...diffManifests(old, old)], []);
});
