// MAC addresses on the server: the contract's parser (contract/mac.ts, shared with the node) with
// the error a user sees (a UserError: HTTP 400 from the API, one line from the CLI).
import { parseMac } from "../contract/mac.ts";
import { UserError } from "./errors.ts";

export { macFromBytes } from "../contract/mac.ts";

export function normalizeMac(input: string): string {
  const mac = parseMac(input);
  if (!mac) throw new UserError(`invalid MAC address: ${input}`);
  return mac;
}
