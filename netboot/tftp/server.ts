// PLACEHOLDER — replaced by its owner; signature is the contract.
import type { Context, Service } from "../../src/context.ts";
export function startTftp(_ctx: Context): Promise<Service> {
  return Promise.resolve({ name: "startTftp", close: () => Promise.resolve() });
}
