import assert from "node:assert/strict";
import { releaseFreeMemory } from "../src/linux/malloc.ts";

Deno.test("releaseFreeMemory: malloc_trim through FFI on glibc, again and again", () => {
  assert.equal(releaseFreeMemory(), true, "glibc's malloc_trim reachable (the server runs -A)");
  assert.equal(releaseFreeMemory(), true, "the library handle is kept");
});
