// PLACEHOLDER — replaced by its owner; signature is the contract.
import type { Context, Service } from "../../src/context.ts";
export function startDhcp(_ctx: Context): Promise<Service> {
  return Promise.resolve({ name: "startDhcp", close: () => Promise.resolve() });
}
