// PLACEHOLDER — replaced by its owner; signature is the contract.
import type { Context, Service } from "../src/context.ts";
export function startRouterAdvertisements(_ctx: Context): Promise<Service> {
  return Promise.resolve({ name: "startRouterAdvertisements", close: () => Promise.resolve() });
}
