// `netroot image build`: not there yet.
import { UserError } from "../errors.ts";
import type { ApiClient } from "./client.ts";

export function run(
  _client: ApiClient,
  _positionals: string[],
  _values: Record<string, string | boolean | undefined>,
  _rebootNodes: boolean,
  _json: boolean,
): Promise<number> {
  throw new UserError("image build is not implemented yet");
}
