// The Buildfile codec alone (src/images/buildfile.ts): Dockerfile subset in, steps out, and
// hostile input refused with its line number.
import assert from "node:assert/strict";
import { BuildfileError, expand, parseBuildfile, words } from "../src/images/buildfile.ts";
import { defaultBuildfile } from "../src/cli/imagebuild.ts";
import { UserError } from "../src/errors.ts";

const fails = (text: string, re: RegExp, line?: number) =>
  assert.throws(() => parseBuildfile(text), (e: BuildfileError) => {
    assert.ok(e instanceof BuildfileError, String(e));
    assert.match(e.message, re);
    if (line !== undefined) assert.equal(e.line, line, e.message);
    return true;
  });

Deno.test("buildfile: every supported instruction, comments, continuations, line numbers", () => {
  const b = parseBuildfile(`# syntax comment
ARG BASE=deb12
FROM \${BASE} AS build

ENV A=1 B="two words"
ENV LEGACY the rest of it
WORKDIR /opt/\${A}
RUN apt-get update && \\
    # a comment inside a continuation is dropped
    apt-get install -y \\
      curl
RUN ["/bin/echo", "exec form"]
COPY --chown=1000:1000 --chmod=0640 conf/a.conf ./b /etc/app/
ADD files.tar.gz /srv/
CMD ["/bin/true"]
`);
  assert.equal(b.from, "deb12");
  assert.equal(b.fromLine, 3);
  const brief = b.steps.map((s) => [s.kind, s.line]);
  assert.deepEqual(brief, [
    ["ENV", 5],
    ["ENV", 6],
    ["WORKDIR", 7],
    ["RUN", 8],
    ["RUN", 12],
    ["COPY", 13],
    ["ADD", 14],
    ["ignored", 15],
  ]);
  const s = b.steps;
  assert.deepEqual(s[0].kind === "ENV" && s[0].vars, [["A", "1"], ["B", "two words"]]);
  assert.deepEqual(s[1].kind === "ENV" && s[1].vars, [["LEGACY", "the rest of it"]]);
  assert.equal(s[2].kind === "WORKDIR" && s[2].dir, "/opt/1");
  assert.equal(
    s[3].kind === "RUN" && s[3].shell,
    "apt-get update &&     apt-get install -y       curl",
  );
  assert.deepEqual(s[4].kind === "RUN" && s[4].argv, ["/bin/echo", "exec form"]);
  const copy = s[5];
  assert.ok(copy.kind === "COPY");
  assert.deepEqual(copy.sources, ["/conf/a.conf", "/b"]);
  assert.equal(copy.dest, "/etc/app/");
  assert.deepEqual(copy.chown, { user: "1000", group: "1000" });
  assert.equal(copy.chmod, 0o640);
  assert.equal(parseBuildfile("FROM scratch\n").from, null);
});

Deno.test("buildfile: hostile and broken input is refused with its line", () => {
  fails("FROM x\nCOPY ../../etc/passwd /etc/passwd\n", /outside the build context/, 2);
  fails("FROM x\nCOPY a/../../etc/passwd /x\n", /outside the build context/, 2);
  fails("FROM x\nADD https://example.com/x.tgz /\n", /URLs are not supported/, 2);
  fails("FROM x\nARG P=../..\nCOPY $P/etc/shadow /\n", /outside the build context/, 3);
  fails("RUN true\n", /before FROM/, 1);
  fails("FROM a\nFROM b\n", /multi-stage/, 2);
  fails("FROM a\nUSER nobody\n", /unsupported instruction USER/, 2);
  fails("FROM a\nCOPY onlyone\n", /source and a destination/, 2);
  fails("FROM a\nCOPY --chown=root:a:b a /b\n", /USER\[:GROUP\]/, 2);
  fails("FROM a\nCOPY --chown=4294967295 a /b\n", /USER\[:GROUP\]/, 2); // chown's "no change"
  fails("FROM a\nUSER app\n", /USER: RUN runs as root here/, 2);
  fails("FROM a\nENV A\n", /ENV A needs a value/, 2);
  fails("FROM a\nRUN --mount=type=cache,target=/var/cache/apt apt-get update\n", /RUN --mount/, 2);
  fails("FROM a\nCOPY --from=build a /b\n", /unsupported flag --from/, 2);
  fails('FROM a\nENV X="unterminated\n', /unterminated/, 2);
  fails("FROM a\nCOPY ${X /b\n", /bad substitution/, 2);
  fails("# nothing\n", /no FROM/);
  fails("FROM a\n" + "RUN true\n".repeat(1001), /more than 1000 steps/);
  fails("FROM a\nARG " + "a ".repeat(2000) + "\n", /more than 1000 steps/, 2);
  // a message quotes at most 400 characters of the Buildfile (before: all of a 1 MiB word)
  assert.throws(() => parseBuildfile(`FROM a\n${"X".repeat(1 << 19)} y\n`), (e: Error) => {
    assert.match(e.message, /^Buildfile line 2: unsupported instruction X{370,}…$/);
    return e.message.length < 500;
  });
  fails("FROM a\0", /NUL/);
  fails("FROM a\n" + "#".repeat(1 << 20), /larger than 1 MiB/);
  // substitutions feeding each other: 40 lines of 15 bytes would make 16 × 4^40 bytes (before:
  // V8's "Invalid string length" once some 400 MiB were taken), or one value used many times
  fails("FROM a\nARG A=0123456789abcdef\n" + "ENV A=$A$A$A$A\n".repeat(40), /more than 1 MiB/, 10);
  fails("ARG A=0123456789abcdef\n" + "ARG A=$A$A$A$A\n".repeat(40) + "FROM a\n", /1 MiB/, 9);
  const kib = "x".repeat(1024);
  fails(`FROM a\nARG A=${kib}\nCOPY ${"$A ".repeat(2000)}/d\n`, /more than 1 MiB/, 3);
  // absolute sources are taken inside the context, as Docker does
  const b = parseBuildfile("FROM a\nCOPY /etc/passwd /x\n");
  assert.deepEqual(b.steps[0].kind === "COPY" && b.steps[0].sources, ["/etc/passwd"]);
});

Deno.test("buildfile: words and substitutions", () => {
  assert.deepEqual(words(`a "b c" 'd e' f\\ g ""`, 1), ["a", "b c", "d e", "f g", ""]);
  const v = new Map([["A", "1"], ["E", ""]]);
  assert.equal(
    expand("$A ${A} ${B:-dflt} ${A:+set} ${E:-empty} \\$A $", v, 1),
    "1 1 dflt set empty $A $",
  );
});

/** The steps of `text` as [kind, line, what it holds]. */
const stepsOf = (text: string) =>
  parseBuildfile(text).steps.map((s) => {
    const what = s.kind === "RUN"
      ? s.shell ?? s.argv
      : s.kind === "ENV"
      ? s.vars
      : s.kind === "ARG"
      ? [s.name, s.value]
      : s.kind === "WORKDIR"
      ? s.dir
      : s.kind;
    return [s.kind, s.line, what];
  });

// Forms of Dockerfiles that work with Docker. Before: a here-document's lines were read as
// instructions (line 3: "unsupported instruction ECHO", or worse, an ENV or RUN of the document
// taken as the Buildfile's), a blank line inside a continuation ended the instruction, a Windows
// "# escape=`" was ignored, ENV A='$B' and A=\$B were substituted, an ENV's quotes in the old
// form kept, ${A:-$B} gave "$B", and an ARG outweighed the ENV of its name.
Deno.test("buildfile: Docker's forms — here-documents, continuations, quoting, ARG and ENV scopes", () => {
  assert.deepEqual(
    stepsOf(`FROM a
RUN <<EOF
echo one
ENV NOT=an-instruction
EOF
RUN cat <<-"END" > /etc/motd && echo done
\thello $USER
\t# kept: the document's line
\tEND
RUN echo after
`),
    [
      ["RUN", 2, "echo one\nENV NOT=an-instruction"],
      [
        "RUN",
        6,
        'cat <<-"END" > /etc/motd && echo done\n\thello $USER\n\t# kept: the document\'s line\n\tEND',
      ],
      ["RUN", 10, "echo after"],
    ],
  );
  fails("FROM a\nRUN <<EOF\necho never ends\n", /here-document <<EOF has no line EOF/, 2);
  fails("FROM a\nCOPY <<EOF /x\nhello\nEOF\n", /COPY of a here-document/, 2);
  fails("FROM a\nRUN <<EOF\n#!/usr/bin/python3\nprint(1)\nEOF\n", /#!: COPY it and RUN it/, 2);
  fails("# escape=`\nFROM a\nRUN echo a `\n  b\n", /escape=`: only \\ is/, 1);
  assert.equal(parseBuildfile("# syntax=docker/dockerfile:1\n# escape=\\\nFROM a\n").from, "a");
  // a blank line (or a comment) inside a continuation does not end it, as in Docker
  assert.deepEqual(stepsOf("FROM a\nRUN echo a \\\n\n  # c\n  && echo b\nRUN x\n"), [
    ["RUN", 2, "echo a   && echo b"],
    ["RUN", 6, "x"],
  ]);
  assert.deepEqual(
    stepsOf(`FROM a
ENV B=b
ENV S='$B' E=\\$B D="\\$B \${B}" N=\${X:-$B} M=\${B:+"<$B>"}
ENV OLD "two words" and $B
WORKDIR /srv/my app
`),
    [
      ["ENV", 2, [["B", "b"]]],
      ["ENV", 3, [["S", "$B"], ["E", "$B"], ["D", "$B b"], ["N", "b"], ["M", "<b>"]]],
      ["ENV", 4, [["OLD", "two words and b"]]],
      ["WORKDIR", 5, "/srv/my app"],
    ],
  );
  // an ARG before FROM is FROM's; after it, an ARG without a default takes its value
  const b = parseBuildfile(`ARG V=1 BASE=deb
FROM $BASE
ENV E0=$V
ARG V
ARG V=2 W=w
ENV E1=$V$W
ENV V=env
ARG V=arg
ENV E2=$V
`);
  assert.equal(b.from, "deb");
  assert.deepEqual(b.steps.map((s) => s.kind === "ENV" ? s.vars[0] : s.kind === "ARG" && s.value), [
    ["E0", ""],
    "1",
    "2",
    "w",
    ["E1", "2w"],
    ["V", "env"],
    "arg",
    ["E2", "env"],
  ]);
  // --build-arg: over an ARG's default, before FROM too; one no ARG declares is reported
  const given = parseBuildfile(
    "ARG BASE=deb\nFROM $BASE\nARG V=1\nARG W\nENV X=$V$W\n",
    new Map([["BASE", "alpine"], ["V", "2"], ["W", "w"], ["NOPE", "x"]]),
  );
  assert.equal(given.from, "alpine");
  const last = given.steps.at(-1)!;
  assert.deepEqual(last.kind === "ENV" && last.vars, [["X", "2w"]]);
  assert.deepEqual(given.unused, ["NOPE"]);
  fails("FROM a\nENV A=${B:-${B:-${B:-${B:-${B:-${B:-${B:-${B:-${B:-x}}}}}}}}}\n", /8 deep/, 2);
});

Deno.test("image build without -f: CONTEXT's Buildfile, else its Dockerfile, as docker build finds it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-buildfile-" });
  try {
    assert.throws(
      () => defaultBuildfile(dir),
      (e: Error) =>
        e instanceof UserError && e.message.includes("holds no Buildfile or Dockerfile"),
    );
    await Deno.writeTextFile(`${dir}/Dockerfile`, "FROM scratch\n");
    assert.equal(defaultBuildfile(dir), `${dir}/Dockerfile`);
    await Deno.writeTextFile(`${dir}/Buildfile`, "FROM scratch\n");
    assert.equal(defaultBuildfile(dir), `${dir}/Buildfile`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
