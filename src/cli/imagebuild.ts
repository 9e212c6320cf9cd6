// `netroot image build NAME --from IMAGE -f Buildfile [CONTEXT]`: the server runs the build
// (src/images/build.ts) and streams its log, printed here as it comes.
import { dirname, resolve } from "node:path";
import { UserError } from "../errors.ts";
import type { Commit } from "../images/store.ts";
import type { Published } from "../images/versions.ts";
import type { ApiClient } from "./client.ts";
import { committedText } from "./imagework.ts";
import { print } from "./output.ts";

export async function run(
  client: ApiClient,
  positionals: string[],
  values: Record<string, string | boolean | undefined>,
  rebootNodes: boolean,
  json: boolean,
): Promise<number> {
  const [name, context] = positionals;
  if (typeof values.file !== "string") throw new UserError("image build needs -f Buildfile");
  const buildfile = resolve(values.file);
  let res: Response;
  try {
    res = await fetch(`${client.base}/api/v1/images/-/build`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(client.token ? { authorization: `Bearer ${client.token}` } : {}),
      },
      body: JSON.stringify({
        name,
        buildfile,
        context: resolve(context ?? dirname(buildfile)),
        from: values.from,
        rebootNodes,
        command: ["netroot", "image", "build", ...Deno.args.slice(2)].join(" "),
      }),
    });
  } catch (e) {
    throw new UserError(
      `cannot reach the netroot server at ${client.base} (${(e as Error).message})`,
      503,
    );
  }
  if (!(res.headers.get("content-type") ?? "").includes("ndjson")) {
    const data = await res.json().catch(() => ({}));
    throw new UserError(data.error ?? `HTTP ${res.status}`, res.status as 400);
  }
  let final: { image?: Commit & Published; error?: string } | undefined;
  let rest = "";
  for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    for (const line of lines) {
      if (!line) continue;
      const m = JSON.parse(line);
      if (m.log !== undefined) console.error(m.log);
      else final = m;
    }
  }
  if (!final) throw new UserError("the server closed the connection before the build finished");
  if (final.error) throw new UserError(final.error);
  const image = final.image!;
  print(json, image, () => committedText(image));
  return 0;
}
