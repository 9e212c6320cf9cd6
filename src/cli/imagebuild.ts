// `netroot image build NAME --from IMAGE [-f Buildfile] [CONTEXT]`: the server runs the build
// (src/images/build.ts) and streams its log, printed here as it comes.
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { UserError } from "../errors.ts";
import type { Commit } from "../images/store.ts";
import type { Published } from "../images/versions.ts";
import type { ApiClient } from "./client.ts";
import { committedText, streamedResult } from "./imagework.ts";
import { print, visible } from "./output.ts";

export async function run(
  client: ApiClient,
  positionals: string[],
  values: Record<string, string | string[] | boolean | undefined>,
  rebootNodes: boolean,
  json: boolean,
): Promise<number> {
  const [name, context] = positionals;
  const buildfile = typeof values.file === "string"
    ? resolve(values.file)
    : defaultBuildfile(resolve(context ?? "."));
  // NAME=VALUE, or NAME alone for this environment's value (unset: not given), as docker build
  const buildArgs: Record<string, string> = {};
  for (const a of (values["build-arg"] ?? []) as string[]) {
    const i = a.indexOf("=");
    const value = i < 0 ? Deno.env.get(a) : a.slice(i + 1);
    if (value !== undefined) buildArgs[i < 0 ? a : a.slice(0, i)] = value;
  }
  const res = await client.fetch("POST", "/images/-/build", {
    name,
    buildfile,
    context: resolve(context ?? dirname(buildfile)),
    from: values.from,
    buildArgs,
    rebootNodes,
    command: ["netroot", "image", "build", ...Deno.args.slice(2)].join(" "),
  });
  // a RUN's output: untrusted
  const image = await streamedResult<Commit & Published>(
    res,
    "build",
    (line) => console.error(visible(line)),
  );
  print(json, image, () => committedText(image));
  return 0;
}

/** Without -f, as `docker build CONTEXT` finds its Dockerfile: CONTEXT's Buildfile, else its
 *  Dockerfile (a Docker user's `image build NAME --from IMAGE .` was refused for want of -f). */
export function defaultBuildfile(context: string): string {
  for (const name of ["Buildfile", "Dockerfile"]) {
    const path = join(context, name);
    if (existsSync(path)) return path;
  }
  throw new UserError(
    `image build: no -f FILE, and ${context} holds no Buildfile or Dockerfile`,
  );
}
